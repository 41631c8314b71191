"""Which listen addresses need TLS and authentication: loopback ones do not; any other is
refused without TLS or with auth "none" unless forced (pure: no server)."""

from __future__ import annotations

import logging

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


def test_auth_none_is_refused_too_even_over_tls() -> None:
    check_exposure(ServerConfig(tls_cert="/server.pem"), "0.0.0.0")  # (auth "token" by default)
    with pytest.raises(InvalidConfigurationError) as refused:
        check_exposure(ServerConfig(tls_cert="/server.pem", auth="none"), "0.0.0.0")
    assert 'without authentication (auth = "none")' in refused.value.message
    assert 'set auth = "token", or force it with --insecure-listen' in refused.value.message
    check_exposure(ServerConfig(auth="none"), "127.0.0.1")


def test_without_tls_and_with_auth_none_both_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(InvalidConfigurationError) as refused:
        check_exposure(ServerConfig(auth="none"), "10.1.2.3")
    assert 'without TLS and authentication (auth = "none")' in refused.value.message
    with caplog.at_level(logging.WARNING, logger="agentfense.server"):
        check_exposure(ServerConfig(auth="none", allow_insecure_listen=True), "10.1.2.3")
    [record] = caplog.records
    assert 'without TLS and authentication (auth = "none")' in record.getMessage()
