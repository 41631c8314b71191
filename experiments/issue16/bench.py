"""Figures for design A (nsbox.py + launcher.c), B (a static C pid 1) and the raw bwrap baseline.

    python bench.py exec [N]      run("true") three ways, alternated in one run
    python bench.py create [N]    create + destroy of a held sandbox, p50/p95
    python bench.py idle N        N idle held sandboxes: processes, kernel memory deltas
    python bench.py bwrapidle N   N idle sandboxes of today's shape with a C pid 1 (design B)
    python bench.py burst N       N creates + first echo at once
    python bench.py stagger N     the same, started 10 ms apart
    python bench.py jobs          a background job across commands: what stays, and its cost

Run as root, one at a time (the machine is shared: each step is sequential, one core).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nsbox

WS = Path("/tmp/issue16-ws")
CGROUP_PARENT = nsbox.CGROUP2 / "issue16"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def show(name: str, ms: list[float]) -> None:
    print(
        f"{name:<44} p50 {statistics.median(ms):6.2f} ms  p95 {pct(ms, 0.95):6.2f}  "
        f"p99 {pct(ms, 0.99):6.2f}  (n={len(ms)})"
    )


def meminfo() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":")
        fields[key] = int(value.split()[0])
    return fields


def kernel_kib(info: dict[str, int]) -> dict[str, int]:
    keys = ("SUnreclaim", "SReclaimable", "KernelStack", "PageTables", "Percpu", "Shmem")
    out = {key: info[key] for key in keys}
    out["MemFree"] = info["MemFree"]
    return out


def setup() -> None:
    nsbox.build()
    nsbox.subreaper()
    WS.mkdir(exist_ok=True)
    (WS / "README.md").write_text("hello\n")
    CGROUP_PARENT.mkdir(exist_ok=True)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed: {done.stderr[-300:]!r}")
    return elapsed


def bench_exec(n: int) -> None:
    name = "bench-exec"
    nsbox.create(name, WS)
    launcher = [str(nsbox.LAUNCHER), str(nsbox.NSDIR / name)]
    ids = [str(nsbox.HOST_UID), str(nsbox.HOST_UID), "4096", "--", "/bin/true"]
    raw_today = nsbox.bwrap_argv(WS, ["--", "/bin/true"])  # the bench's raw bwrap (userns)
    raw_a1 = nsbox.bwrap_argv(WS, ["--", "/bin/true"], userns=False)
    results: dict[str, list[float]] = {k: [] for k in ("a", "a_cg", "raw", "raw_a1")}
    try:
        for i in range(n):
            results["a"].append(timed([*launcher, "-", *ids]))
            leaf = CGROUP_PARENT / f"c{i}"
            start = time.perf_counter()
            leaf.mkdir()
            done = subprocess.run(
                [*launcher, str(leaf), *ids], stdin=subprocess.DEVNULL, capture_output=True
            )
            (leaf / "cgroup.kill").write_text("1")
            while True:  # the init may still be leaving
                try:
                    leaf.rmdir()
                    break
                except OSError:
                    time.sleep(0.0002)
            results["a_cg"].append((time.perf_counter() - start) * 1000)
            assert done.returncode == 0, done.stderr
            results["raw"].append(timed(raw_today))
            results["raw_a1"].append(timed(raw_a1))
            nsbox.reap()
    finally:
        nsbox.destroy(name)
    show("A: launcher true", results["a"])
    show("A: launcher true + own cgroup (mkdir..rmdir)", results["a_cg"])
    show("raw bwrap true (today's isolation, userns)", results["raw"])
    show("raw bwrap true (A1's isolation, no userns)", results["raw_a1"])
    for key in ("a", "a_cg"):
        ratio = statistics.median(results[key]) / statistics.median(results["raw"])
        print(f"ratio {key} / raw (p50): {ratio:.2f}")


def bench_create(n: int) -> None:
    made, gone, raw = [], [], []
    raw_today = nsbox.bwrap_argv(WS, ["--", "/bin/true"])
    for i in range(n):
        start = time.perf_counter()
        nsbox.create(f"bench-create-{i}", WS)
        made.append((time.perf_counter() - start) * 1000)
        nsbox.reap()
        raw.append(timed(raw_today))
        start = time.perf_counter()
        nsbox.destroy(f"bench-create-{i}")
        gone.append((time.perf_counter() - start) * 1000)
    show("A: create (bwrap as builder, binds)", made)
    show("raw bwrap true (today's isolation), alternated", raw)
    print(f"ratio create / raw bwrap (p50): {statistics.median(made) / statistics.median(raw):.2f}")
    show("A: destroy (umount the binds)", gone)
    first = []
    for i in range(n):
        start = time.perf_counter()
        nsbox.create(f"bench-first-{i}", WS)
        done = nsbox.run(f"bench-first-{i}", ["echo", "ok"])
        first.append((time.perf_counter() - start) * 1000)
        assert done.stdout == b"ok\n", done
        nsbox.destroy(f"bench-first-{i}")
        nsbox.reap()
    show("A: create + first echo ok", first)


def bench_stagger(n: int) -> None:
    bench_burst(n, apart=0.010)


def bench_burst(n: int, apart: float = 0.0) -> None:
    """``n`` creates + a first ``echo ok`` at once (threads), as the issue's burst run; or
    started ``apart`` seconds apart (its staggered run)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> float:
        start = time.perf_counter()
        nsbox.create(f"burst-{i}", WS)
        done = nsbox.run(f"burst-{i}", ["echo", "ok"])
        if done.stdout != b"ok\n":
            raise RuntimeError(f"burst-{i}: {done}")
        return (time.perf_counter() - start) * 1000

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        futures = []
        for i in range(n):
            futures.append(pool.submit(one, i))
            time.sleep(apart)
    errors = [f.exception() for f in futures if f.exception() is not None]
    took = time.perf_counter() - start
    each = [f.result() for f in futures if not f.exception()]
    show(f"A: {n} create + echo ok, {apart * 1000:.0f} ms apart, each", each)
    print(f"  all {n} in {took:.2f} s; errors: {len(errors)} {errors[:3]}")
    nsbox.reap()
    for i in range(n):
        if (nsbox.NSDIR / f"burst-{i}").exists():
            nsbox.destroy(f"burst-{i}")


def processes() -> int:
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())


def slabinfo() -> dict[str, int]:
    sizes = {}
    for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
        fields = line.split()
        sizes[fields[0]] = int(fields[2]) * int(fields[3])  # num_objs * objsize
    return sizes


def bench_idle(n: int) -> None:
    before_procs = processes()
    time.sleep(1)
    slabs = slabinfo()
    before = kernel_kib(meminfo())
    start = time.perf_counter()
    for i in range(n):
        nsbox.create(f"idle-{i}", WS)
    took = time.perf_counter() - start
    time.sleep(2)  # let RCU-freed objects go
    after = kernel_kib(meminfo())
    print(f"created {n} idle sandboxes in {took:.1f} s; processes {before_procs} -> {processes()}")
    for key, value in after.items():
        delta = value - before[key]
        print(f"  {key:<13} {delta:+9d} KiB total  {delta / n:+8.1f} KiB per sandbox")
    slabs_after = slabinfo()
    top = sorted(slabs_after, key=lambda k: slabs.get(k, 0) - slabs_after[k])[:12]
    print("  biggest slab growth per sandbox: " + ", ".join(
        f"{k} {(slabs_after[k] - slabs.get(k, 0)) / n / 1024:.1f}" for k in top) + " KiB")
    mounts = len(Path("/proc/self/mountinfo").read_text().splitlines())
    print(f"  host mount table: {mounts} entries")
    runs = []
    for _ in range(20):
        start = time.perf_counter()
        done = nsbox.run(f"idle-{n - 1}", ["echo", "ok"])
        runs.append((time.perf_counter() - start) * 1000)
        assert done.stdout == b"ok\n"
    show(f"  echo ok in the last of {n} held", runs)
    start = time.perf_counter()
    for i in range(n):
        nsbox.destroy(f"idle-{i}")
    print(f"  destroyed in {time.perf_counter() - start:.1f} s")
    nsbox.reap()
    time.sleep(2)
    end = kernel_kib(meminfo())
    print("  after destroy, left vs before: " + ", ".join(
        f"{k} {end[k] - before[k]:+d}" for k in ("SUnreclaim", "Percpu", "MemFree")))


def pss_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def bench_bwrap_idle(n: int) -> None:
    """Design B: today's bwrap (userns, as the sandbox's host uid) with a static C pid 1 that
    blocks (the launcher's hold mode stands in for a C agent's idle loop)."""
    binary = os.open(nsbox.LAUNCHER, os.O_PATH)
    procs, blocks = [], []
    before = kernel_kib(meminfo())
    starts = []
    for _ in range(n):
        ready_r, ready_w = os.pipe()
        block_r, block_w = os.pipe()
        argv = nsbox.bwrap_argv(
            WS, ["--", f"/proc/self/fd/{binary}", "hold", str(ready_w), str(block_r)]
        )
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, pass_fds=(ready_w, block_r, binary), env={},
            user=nsbox.HOST_UID, group=nsbox.HOST_UID, extra_groups=[],
        )
        os.close(ready_w)
        os.close(block_r)
        assert os.read(ready_r, 1) == b"r"
        starts.append((time.perf_counter() - start) * 1000)
        os.close(ready_r)
        procs.append(proc)
        blocks.append(block_w)
    time.sleep(2)
    after = kernel_kib(meminfo())
    show("B: bwrap + C pid 1 ready", starts)
    rss_b = pss_b = rss_c = pss_c = 0
    for proc in procs:
        r, p = pss_kib(proc.pid)
        rss_b, pss_b = rss_b + r, pss_b + p
        child = nsbox._holder_pid(proc.pid)
        r, p = pss_kib(child)
        rss_c, pss_c = rss_c + r, pss_c + p
    print(f"B at {n}: bwrap RSS {rss_b / n:.0f} KiB PSS {pss_b / n:.0f} KiB; "
          f"C pid 1 RSS {rss_c / n:.0f} KiB PSS {pss_c / n:.0f} KiB (per sandbox)")
    for key, value in after.items():
        delta = value - before[key]
        print(f"  {key:<13} {delta:+9d} KiB total  {delta / n:+8.1f} KiB per sandbox")
    for block in blocks:
        os.close(block)
    for proc in procs:
        proc.wait()


def ours(comm: str) -> list[str]:
    """The pids of the sandbox uid's processes named ``comm``."""
    return subprocess.run(["pgrep", "-u", str(nsbox.HOST_UID), "-x", comm],
                          capture_output=True, text=True).stdout.split()


def bench_jobs() -> None:
    name = "jobs"
    nsbox.create(name, WS)
    try:
        log = Path("/tmp/issue16-jobs.out")
        with log.open("wb") as out:  # (a pipe would stay open while the job runs)
            start = time.perf_counter()
            code = subprocess.run(
                [str(nsbox.LAUNCHER), str(nsbox.NSDIR / name), "-", str(nsbox.HOST_UID),
                 str(nsbox.HOST_UID), "0", "--", "sh", "-c", "sleep 100 & echo $!"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            ).returncode
            print(f"command with a background job returned {code} in "
                  f"{(time.perf_counter() - start) * 1000:.1f} ms: {log.read_text().strip()}")
        for init in ours("launcher"):
            rss, pss = pss_kib(int(init))
            print(f"  left: pid {init} (the command's pid 1) RSS {rss} KiB PSS {pss} KiB")
        sleepers = ours("sleep")
        print(f"  the sleep still runs: {sleepers}")
        done = nsbox.run(name, ["ps", "-e", "-o", "pid,comm"])
        print(f"  a later command in a new pid ns sees: {done.stdout.decode().split()}")
        init = ours("launcher")[0]
        join = [str(nsbox.LAUNCHER), "join", init, str(nsbox.HOST_UID), str(nsbox.HOST_UID), "0", "--"]
        done = subprocess.run([*join, "ps", "-e", "-o", "pid,comm"], capture_output=True)
        print(f"  a later command joining the live init's pid ns sees: {done.stdout.decode().split()}"
              f" {done.stderr.decode()}")
        out = subprocess.run(
            ["/tmp/issue16-bin/spawnbench", "200",
             " ".join([str(nsbox.LAUNCHER), str(nsbox.NSDIR / name), "-", str(nsbox.HOST_UID),
                       str(nsbox.HOST_UID), "0", "--", "/bin/true"]),
             " ".join([*join, "/bin/true"])], capture_output=True, text=True).stdout
        print("  exec true, new pid ns vs joining the live one:\n" + out)
        for pid in sleepers:
            os.kill(int(pid), 9)
        time.sleep(0.2)
        nsbox.reap()
        print(f"  once the job is gone, inits left: {ours('launcher')}")
    finally:
        nsbox.destroy(name)


if __name__ == "__main__":
    setup()
    what = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    {"exec": bench_exec, "create": bench_create, "idle": bench_idle, "burst": bench_burst,
     "stagger": bench_stagger,
     "bwrapidle": bench_bwrap_idle}.get(what, lambda n: bench_jobs())(count)
