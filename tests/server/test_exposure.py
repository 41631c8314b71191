"""Which listen addresses need TLS: loopback ones do not; any other is refused without it
unless forced (pure: no server)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from agentfense.errors import InvalidConfigurationError
from agentfense.server.config import ServerConfig
from agentfense.server.exposure import check_exposure


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_needs_no_tls(host: str) -> None:
    check_exposure(ServerConfig(), host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "fe80::1", "agentfense.example"])
def test_anything_else_is_refused_without_tls(host: str) -> None:
    with pytest.raises(InvalidConfigurationError, match="--insecure-listen"):
        check_exposure(ServerConfig(), host)


def test_tls_or_the_force_flag_lets_it_listen(caplog: pytest.LogCaptureFixture) -> None:
    check_exposure(ServerConfig(tls_cert="/etc/agentfense/server.pem"), "0.0.0.0")
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="agentfense.server"):
        check_exposure(ServerConfig(allow_insecure_listen=True), "0.0.0.0")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("INSECURE: listening on 0.0.0.0")


@dataclass(frozen=True, slots=True)
class _WithAuth(ServerConfig):
    """ServerConfig as it is with the ``auth`` setting (issue 12's tokens)."""

    auth: str = "token"


def test_with_the_auth_setting_auth_none_is_refused_too() -> None:
    check_exposure(_WithAuth(tls_cert="/server.pem"), "0.0.0.0")
    with pytest.raises(InvalidConfigurationError) as refused:
        check_exposure(_WithAuth(tls_cert="/server.pem", auth="none"), "0.0.0.0")
    assert 'without authentication (auth = "none")' in refused.value.message
    assert 'set auth = "token", or force it with --insecure-listen' in refused.value.message
    check_exposure(_WithAuth(auth="none"), "127.0.0.1")
