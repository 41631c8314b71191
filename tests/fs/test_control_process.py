"""A real fs process on its control channel: a request it cannot decode is answered with
``Failed`` and a sentence, and it goes on serving (it used to exit, which cost every view a
restart, and the same request then failed the next process too)."""

from __future__ import annotations

import json

from agentfense.fs import control

from .conftest import FsProcess


def test_a_request_that_does_not_decode_is_failed_and_serving_goes_on(fs: FsProcess) -> None:
    fields = {"op": "commit", "seq": 9001, "id": "sb_none", "from_a_newer_server": True}
    reply = fs.exchange(json.dumps(fields).encode())
    assert isinstance(reply, control.Failed)
    assert reply.seq == 9001
    assert "unknown fields ['from_a_newer_server']" in reply.message
    assert isinstance(fs.request(control.Ping(seq=9002)), control.Done)
    fs.check_alive()
