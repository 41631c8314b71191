#!/usr/bin/env bash
# A private dockerd for AgentFense's Docker runtime and its tests (run as root).
#
#   bash scripts/dockerd.sh start    # start it (or find it running); prints its socket
#   bash scripts/dockerd.sh status   # exit 0 when it answers, 1 when not
#   bash scripts/dockerd.sh env      # prints `export DOCKER_HOST=unix://...` for eval
#   bash scripts/dockerd.sh stop     # stop it, its containerd and containers; remove its data
#
# Everything lives under one state dir, $AGENTFENSE_DOCKER_DIR (default /tmp/agentfense-docker):
# its own socket (docker.sock), pidfile, log, config, data root and exec root, so it never
# meets a system dockerd (it starts its own containerd, in its own namespace, with its own
# cgroup parent). As the design says: no bridge, no iptables, no ip forwarding, and its images
# are imported by scripts/docker-images.sh, never pulled. Each start begins from an empty data
# root; stop removes it.
set -euo pipefail

state=${AGENTFENSE_DOCKER_DIR:-/tmp/agentfense-docker}
state=${state%/}
sock=$state/docker.sock
pidfile=$state/dockerd.pid
log=$state/dockerd.log
config=$state/daemon.json
data_root=$state/data
exec_root=$state/exec
# the containers' cgroup parent, one per state dir, so that leftovers can be found and killed
cgroup_parent=agentfense-docker-$(cksum <<<"$state" | cut -d' ' -f1)
host=unix://$sock

die() {
  echo "dockerd.sh: $*" >&2
  exit 1
}

pinged() {
  [ -S "$sock" ] && [ "$(curl -fsS --max-time 2 --unix-socket "$sock" http://localhost/_ping 2>/dev/null)" = OK ]
}

daemon_pid() {
  local pid cmdline
  [ -r "$pidfile" ] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # a recycled pid is not ours: ours was started with our pidfile
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $cmdline == *"--pidfile $pidfile "* ]] || return 1
  echo "$pid"
}

# Processes a dead daemon may have left: its containerd and shims (their command lines name our
# exec root) and the processes of its containers (in our cgroup parent).
leftover_pids() {
  local dir cmdline cgroup
  for dir in /proc/[0-9]*; do
    cmdline=$(tr '\0' ' ' 2>/dev/null <"$dir/cmdline") || continue
    cgroup=$(cat "$dir/cgroup" 2>/dev/null) || continue
    if [[ $cmdline == *" $exec_root/containerd/"* || $cgroup == *"/$cgroup_parent/"* ]]; then
      echo "${dir#/proc/}"
    fi
  done
}

clean_up() {
  local pids mounts mnt
  pids=$(leftover_pids)
  if [ -n "$pids" ]; then
    echo "dockerd.sh: killing leftover processes: $(echo "$pids" | tr '\n' ' ')" >&2
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $pids 2>/dev/null || true
    sleep 1
  fi
  # mount points are the 5th field of mountinfo; the deepest first
  mounts=$(awk -v p="$state/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  for mnt in $mounts; do
    umount -l "$mnt" 2>/dev/null || true
  done
  rm -rf "$data_root" "$exec_root" "$sock" "$pidfile"
  # the containers' cgroups, now empty (rmdir refuses one that is not)
  find /sys/fs/cgroup -maxdepth 6 -depth -type d -path "*/$cgroup_parent*" \
    -exec rmdir {} \; 2>/dev/null || true
}

start() {
  local pid waited driver
  if pid=$(daemon_pid) && pinged; then
    echo "dockerd.sh: already running (pid $pid) at $host"
    return 0
  fi
  if pid=$(daemon_pid); then
    die "pid $pid holds $pidfile but does not answer on $sock: run \`$0 stop\` first"
  fi
  [ "$(id -u)" = 0 ] || die "run as root"
  command -v dockerd >/dev/null || die "dockerd is missing: run scripts/setup.sh (docker.io)"
  # unix socket paths are limited to 108 bytes; containerd's lives deepest
  ((${#exec_root} <= 60)) || die "AGENTFENSE_DOCKER_DIR is too long for unix sockets: $state"

  mkdir -p "$state"
  clean_up
  mkdir -p "$data_root" "$exec_root"
  echo '{}' >"$config" # never read /etc/docker/daemon.json
  : >"$log"
  setsid dockerd \
    --config-file "$config" \
    --host "$host" \
    --pidfile "$pidfile" \
    --data-root "$data_root" \
    --exec-root "$exec_root" \
    --containerd-namespace agentfense \
    --containerd-plugins-namespace agentfense-plugins \
    --cgroup-parent "$cgroup_parent" \
    --bridge=none \
    --iptables=false \
    --ip6tables=false \
    --ip-forward=false \
    --ip-masq=false \
    --shutdown-timeout 2 \
    </dev/null >>"$log" 2>&1 &
  waited=0
  until pinged; do
    if ! kill -0 $! 2>/dev/null; then
      tail -n 30 "$log" >&2
      die "dockerd exited while starting (log: $log)"
    fi
    if ((waited >= 600)); then
      tail -n 30 "$log" >&2
      die "dockerd did not answer on $sock within 60 s (log: $log)"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  driver=$(curl -fsS --unix-socket "$sock" http://localhost/info |
    python3 -c 'import json, sys; i = json.load(sys.stdin); print(i["Driver"], "storage, cgroup v" + i["CgroupVersion"], i["CgroupDriver"])')
  echo "dockerd.sh: ready (pid $(<"$pidfile"), $driver) at $host"
  echo "dockerd.sh: export DOCKER_HOST=$host    # log: $log"
}

stop() {
  local pid waited
  if pid=$(daemon_pid); then
    kill -TERM "$pid"
    # containers get --shutdown-timeout (2 s) to stop, then the daemon shuts containerd down
    waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < 300)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "dockerd.sh: dockerd (pid $pid) ignored SIGTERM for 30 s: killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "dockerd.sh: stopped (pid $pid)"
  else
    echo "dockerd.sh: not running"
  fi
  if [ -d "$state" ]; then
    clean_up
  fi
}

status() {
  local pid
  if pid=$(daemon_pid) && pinged; then
    echo "dockerd.sh: running (pid $pid) at $host"
  else
    echo "dockerd.sh: not running ($host)"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export DOCKER_HOST=$host" ;;
  *) die "usage: $0 start|stop|status|env" ;;
esac
