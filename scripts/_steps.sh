# Sourced by scripts/setup.sh and scripts/docker-images.sh: steps that say what they do and
# how long they took, and apt that waits for another package manager instead of failing.
#
#   step WHAT COMMAND...    run COMMAND (its output kept in a log), saying WHAT first, a line
#                           every $AGENTFENSE_SETUP_HEARTBEAT s (15) while it runs, and how long
#                           it took; on failure the end of its output, and its exit code
#   wait_for_package_lock [LOCK...]
#                           wait (up to 600 s) while a process holds
#                           a lock on one of the files (dpkg's and apt's lists' by default),
#                           saying so
#   apt_get ARGS...         apt-get ARGS once the package lock is free; apt itself waits for
#                           dpkg's lock, and an update that loses the race for the lists' lock
#                           waits and tries again

: "${say_as:=setup}"
heartbeat=${AGENTFENSE_SETUP_HEARTBEAT:-15}
lock_wait=600
package_locks=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock)

say() {
  echo "$say_as: $*"
}

step() {
  local what=$1 start=$SECONDS log beat rc=0 parent=$BASHPID
  shift
  log=$(mktemp "${TMPDIR:-/tmp}/agentfense-step.XXXXXX")
  say "$what ..."
  (
    me=$BASHPID
    # sleep without our stdout (a reader of it sees its end when we end), and stop once the
    # script is gone (killed, or stopped by Ctrl-C, which a background job does not get):
    # then this subshell has another parent (a dead one not yet reaped still answers kill -0)
    while sleep "$heartbeat" </dev/null >/dev/null 2>&1 &&
      [ "$(cut -d' ' -f4 "/proc/$me/stat")" = "$parent" ]; do
      say "$what: still going, $((SECONDS - start)) s so far"
    done
  ) &
  beat=$!
  "$@" </dev/null >"$log" 2>&1 || rc=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  if ((rc != 0)); then
    say "$what: FAILED after $((SECONDS - start)) s (exit $rc); its last lines:" >&2
    tail -n 30 "$log" >&2
  else
    say "$what: done in $((SECONDS - start)) s"
  fi
  rm -f "$log"
  return "$rc"
}

# "PID (COMMAND)" of a process holding a lock on one of the files, or nothing
lock_holder() {
  local file dev inode id pid
  for file; do
    [ -e "$file" ] || continue
    dev=$(stat -c %d "$file")
    inode=$(stat -c %i "$file")
    # /proc/locks names a file MAJOR:MINOR:INODE, the device numbers in hex
    id=$(printf '%02x:%02x:%d' $(((dev >> 8) & 0xfff)) $(((dev & 0xff) | ((dev >> 12) & 0xfff00))) "$inode")
    pid=$(awk -v id="$id" '$2 != "->" && $6 == id { print $5; exit }' /proc/locks)
    if [ -n "$pid" ]; then
      if [ "$pid" -gt 0 ] 2>/dev/null; then
        echo "$pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo gone))"
      else
        echo "another process"
      fi
      return 0
    fi
  done
}

wait_for_package_lock() {
  local holder start=$SECONDS said=-1 waited
  (($#)) || set -- "${package_locks[@]}"
  while holder=$(lock_holder "$@") && [ -n "$holder" ]; do
    waited=$((SECONDS - start))
    if ((waited >= lock_wait)); then
      say "the package lock is still held by $holder after $waited s: giving up" >&2
      return 1
    fi
    if ((said < 0 || waited - said >= heartbeat)); then
      say "waiting for the package lock (held by $holder), $waited s so far"
      said=$waited
    fi
    sleep 1
  done
  if ((said >= 0)); then
    say "the package lock is free after $((SECONDS - start)) s"
  fi
}

apt_get() {
  local try
  for try in 1 2 3; do
    wait_for_package_lock || return 1
    if apt-get -o DPkg::Lock::Timeout="$lock_wait" "$@"; then
      return 0
    fi
    [ -n "$(lock_holder "${package_locks[@]}")" ] || return 1 # failed, not for a lock
    echo "(another package manager took the lock first: waiting again, try $((try + 1)))"
  done
  return 1
}
