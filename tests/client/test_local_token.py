"""Where the SDK finds the local owner's token: one file per endpoint, however it is spelt,
trusted only when this user alone owns it; and an api_key that cannot be sent is refused in
a sentence that does not repeat it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentfense import AsyncSandboxClient, InvalidConfigurationError
from agentfense._local_token import endpoint_key, read_local_token, write_local_token


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AGENTFENSE_API_KEY", raising=False)
    return tmp_path


def test_the_spellings_of_one_endpoint_are_one_key() -> None:
    same = {"localhost:9000", "127.0.0.1:9000", "[::1]:9000", "LOCALHOST:9000"}
    assert {endpoint_key(e) for e in same} == {"localhost:9000"}
    assert endpoint_key("unix:/run/a.sock") == endpoint_key("unix:///run/a.sock") == "/run/a.sock"
    assert endpoint_key("example.org:9000") != endpoint_key("localhost:9000")
    assert endpoint_key("localhost:9001") != endpoint_key("localhost:9000")


def test_a_written_token_is_read_back_for_any_spelling_and_only_if_private(home: Path) -> None:
    path = write_local_token("[::1]:9000", "af_0123abcd_" + "x" * 43)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert read_local_token("localhost:9000") == "af_0123abcd_" + "x" * 43
    assert read_local_token("localhost:9001") is None
    path.chmod(0o644)  # readable (or writable) by others: not trusted
    assert read_local_token("localhost:9000") is None
    path.chmod(0o600)
    os.chown(path, 65534, 65534)  # another user's file
    assert read_local_token("localhost:9000") is None
    path.unlink()
    path.symlink_to(home / "elsewhere")
    (home / "elsewhere").write_text("af_0123abcd_" + "y" * 43)
    (home / "elsewhere").chmod(0o600)
    assert read_local_token("localhost:9000") is None


def test_the_argument_then_the_variable_then_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    write_local_token("localhost:9000", "from-the-file")
    monkeypatch.setenv("AGENTFENSE_API_KEY", "from-the-variable")
    assert AsyncSandboxClient("localhost:9000", api_key="given")._api_key == "given"
    assert AsyncSandboxClient("localhost:9000")._api_key == "from-the-variable"
    monkeypatch.setenv("AGENTFENSE_API_KEY", "")  # (empty: unset, so the file at connect)
    assert AsyncSandboxClient("localhost:9000")._api_key is None


@pytest.mark.parametrize("key", ["two words", "line\nbreak", "tëst"])
def test_a_key_that_cannot_be_a_header_is_refused_without_repeating_it(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidConfigurationError) as refused:
        AsyncSandboxClient("localhost:9000", api_key=key)
    assert key not in str(refused.value)
    assert "api_key must be" in str(refused.value)
    monkeypatch.setenv("AGENTFENSE_API_KEY", key)
    with pytest.raises(InvalidConfigurationError, match="the variable AGENTFENSE_API_KEY must"):
        AsyncSandboxClient("localhost:9000")
