"""Replies encoded in a worker thread, one item of a repeated field at a time: the same bytes
as the message encoded whole."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agentfense._proto.sandbox import v1 as pb
from agentfense.server._grpc.encoded import repeated_field


@given(st.lists(st.builds(pb.FileInfo, path=st.text(max_size=300), size=st.integers(0, 2**62))))
def test_a_repeated_field_encoded_one_item_at_a_time_is_the_message(
    files: list[pb.FileInfo],
) -> None:
    data = repeated_field(1, files)
    assert pb.ListFilesResponse().parse(data) == pb.ListFilesResponse(files=files)
    assert data == bytes(pb.ListFilesResponse(files=files))
