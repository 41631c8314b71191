"""AgentFense demo: an "agent" works on a real project inside sandboxes of a real server.

Run by ``scripts/demo.sh`` (which starts the server); by hand:
``python examples/demo.py --endpoint unix:/path/to/server.sock``.
It runs the same agent under asyncio and under trio, to show that the SDK behaves the same.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

import anyio

from agentfense import (
    AsyncSandbox,
    CommandTimeoutError,
    OutputStream,
    ResourceLimits,
    SandboxError,
)

PROJECT = {
    "calc/__init__.py": "",
    "tests/__init__.py": "",
    "calc/ops.py": "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
    "tests/test_ops.py": textwrap.dedent(
        """
        import unittest
        from calc.ops import add, mul

        class OpsTest(unittest.TestCase):
            def test_add(self):
                self.assertEqual(add(2, 3), 5)

            def test_mul(self):
                self.assertEqual(mul(4, 5), 20)
        """
    ),
    "README.md": "# calc\nA tiny project for the AgentFense demo.\n",
    ".env": "API_TOKEN=do-not-leak-me\n",
    "secrets/deploy.key": "-----BEGIN PRIVATE KEY-----\n",
}


def make_project(root: Path) -> Path:
    for rel, text in PROJECT.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def agent(project: Path, endpoint: str) -> None:
    step("agent-safe sandbox: secrets hidden, code read-only, output/ writable")
    async with await AsyncSandbox.from_local(
        project, preset="agent-safe", endpoint=endpoint
    ) as sandbox:
        print(f"sandbox {sandbox.id} on codebase {sandbox.codebase_id}: {sandbox.status.value}")
        result = await sandbox.run("id; pwd; ls -A; find . -name '*.py' | sort")
        print(result.stdout, end="")
        leak = await sandbox.run("cat .env secrets/deploy.key; grep -r API_TOKEN . || echo none")
        print(f"secrets -> {leak.stderr.strip().splitlines()} grep: {leak.stdout.strip()}")
        result = await sandbox.run("python3 -m unittest -v 2>&1 | tail -4")
        print(result.stdout, end="")
        attempt = await sandbox.run("echo hacked > calc/ops.py")
        print(f"write attempt -> exit {attempt.exit_code}: {attempt.stderr.strip()}")
        await sandbox.run("mkdir -p output && python3 -m unittest 2> output/tests.txt")
        print(f"output/tests.txt -> {(await sandbox.read_file('output/tests.txt')).split()[-1]}")
        probe = await sandbox.run("cat /etc/shadow; ls /root; env | sort")
        print(f"host secrets -> {probe.stderr.strip().splitlines()}")
        print(f"environment inside -> {probe.stdout.split()}")
        net = await sandbox.run(
            "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), 2)\" "
            "2>&1 | tail -1"
        )
        print(f"network -> {net.stdout.strip()}")

    step("full-access sandbox: the agent edits code, streams a long job, hits a timeout")
    async with await AsyncSandbox.from_local(
        project, preset="full-access", endpoint=endpoint
    ) as sandbox:
        await sandbox.write_file(
            "calc/ops.py", PROJECT["calc/ops.py"] + "\n\ndef sub(a, b):\n    return a - b\n"
        )
        await sandbox.write_file("/workspace/output/notes.txt", "added sub()\n")
        result = await sandbox.run("python3 -c 'from calc.ops import sub; print(sub(9, 4))'")
        print(f"new function -> {result.stdout.strip()}")
        print("streaming:", flush=True)
        async with sandbox.exec_stream(
            "for i in 1 2 3; do echo step $i; sleep 0.2; done; echo warn >&2"
        ) as stream:
            async for chunk in stream:
                tag = "out" if chunk.stream is OutputStream.STDOUT else "err"
                print(f"  [{tag}] {chunk.data.decode().strip()}", flush=True)
        print(f"  exit code {stream.exit_code}")
        try:
            await sandbox.run("sleep 30", timeout=1)
        except CommandTimeoutError as exc:
            print(f"timeout -> {type(exc).__name__} (code {exc.code}): {exc}")
        files = await sandbox.list_files("/workspace", recursive=True)
        print("workspace now:", ", ".join(sorted(f.path for f in files if not f.is_dir)))

    step("a session (state kept between commands) in a sandbox with resource limits")
    limits = ResourceLimits(memory_bytes=128 * 2**20, pids_limit=64, cpu_quota=50_000)
    async with (
        await AsyncSandbox.from_local(
            project, preset="agent-safe", endpoint=endpoint, resources=limits
        ) as sandbox,
        sandbox.session() as session,
    ):
        await session.exec("cd calc && export ROUND=1")
        result = await session.exec("pwd; echo round $ROUND; ls")
        print(f"session -> {result.stdout.split()}")
        hog = await session.exec("python3 -c 'x = bytearray(512 * 2**20)'")
        print(f"512 MiB under a 128 MiB limit -> exit {hog.exit_code}, {hog.limit_exceeded}")
        after = await session.exec("echo still in $(pwd)")
        print(f"the session survives -> {after.stdout.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", default="localhost:9000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentfense-demo-") as tmp:
        project = make_project(Path(tmp))
        for backend in ("asyncio", "trio"):
            print(f"\n######## the agent under {backend}")
            try:
                anyio.run(agent, project, args.endpoint, backend=backend)
            except SandboxError as exc:
                print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
    print("\ndemo finished: every sandbox was destroyed and its codebase deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
