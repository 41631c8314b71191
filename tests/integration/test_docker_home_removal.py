"""On Docker, each command's gate removed the command's ``$HOME`` after it with ``rm -rf``,
unconfined (outside the command's Landlock domain). busybox's ``rm -rf`` (the image
agentfense/busybox) walks by path names, so a process the command left running in its own home
could swap a directory it was emptying for a symbolic link to another home: the gate then
removed, with rights the command's domain does not have, what lay beneath a session's
``$HOME`` (or a later command's), which that command may not touch itself (EACCES). Found by
the attack on issue 11; python:3.11-slim (coreutils ``rm``, which walks by descriptors) held.
The home's contents are now removed inside the command's own domain (``confine``), and the
gate only ``rmdir``s what is left."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import pytest

from agentfense import AsyncSandbox, RuntimeType

pytestmark = pytest.mark.anyio

BUSYBOX = "agentfense/busybox:latest"

# A plain command: its own home gets d/work (made first, so busybox, listing a tmpfs newest
# first, reaches it last) and 20,000 files; a process left running waits until the gate's rm
# has begun to empty d, then puts a link to the session's home in d's place.
SWAP = r"""
H=$HOME
V=$(ls -d /home/home-* | grep -v "^$H$" | head -1)
touch "$V/planted" 2>/dev/null && echo "the command could write in $V itself"
mkdir "$H/d" "$H/d/work" && cd "$H/d" && i=0
while [ $i -lt 20000 ]; do : > f$i; i=$((i+1)); done
cd /
( while [ -e "$H/d/f19999" ]; do :; done; mv "$H/d" "$H/gone"; ln -s "$V" "$H/d"; sleep 5 ) \
  >/dev/null 2>&1 &
echo ready
"""


@pytest.fixture(scope="module")
def busybox_image() -> Iterator[None]:
    host = os.environ.get("DOCKER_HOST", "")
    api = docker.APIClient(base_url=host or "unix:///var/run/docker.sock", version="auto")
    try:
        api.inspect_image(BUSYBOX)  # type: ignore[no-untyped-call]
    except docker.errors.DockerException as exc:
        pytest.fail(f"this test needs dockerd with {BUSYBOX} (scripts/docker-images.sh): {exc}")
    yield
    api.close()


async def test_a_command_cannot_make_its_gate_remove_a_sessions_home(
    busybox_image: None, endpoint: str, project: Path
) -> None:
    async with (
        await AsyncSandbox.from_local(
            project, endpoint=endpoint, runtime=RuntimeType.DOCKER, image=BUSYBOX
        ) as sandbox,
        await sandbox.session() as session,
    ):
        made = await session.exec("mkdir -p ~/work && echo kept > ~/work/notes && cat ~/work/notes")
        assert made.stdout == "kept\n"
        attack = await sandbox.run(SWAP)
        assert attack.stdout == "ready\n"  # (it could not write in the session's home)
        await anyio.sleep(3)  # the gate's rm -rf has run by now
        after = await session.exec("cat ~/work/notes")
        assert (after.stdout, after.exit_code) == ("kept\n", 0), after.stderr
