"""Which TLS a client uses: ``tls=``, else the ``AGENTFENSE_TLS_*`` variables for a
``host:port`` endpoint, else the system's store with ``secure=True``, else none (pure)."""

from __future__ import annotations

import pytest

from agentfense import AsyncSandboxClient, InvalidConfigurationError, SandboxClient, TLSConfig


@pytest.fixture(autouse=True)
def _no_tls_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AGENTFENSE_TLS_CA", "AGENTFENSE_TLS_CLIENT_CERT", "AGENTFENSE_TLS_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_nothing_asked_is_no_tls() -> None:
    client = AsyncSandboxClient("localhost:9000")
    assert (client.secure, client.tls) == (False, None)


def test_secure_is_the_system_store() -> None:
    assert AsyncSandboxClient("localhost:9000", secure=True).tls == TLSConfig()


def test_the_variables_turn_tls_on_for_a_tcp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFENSE_TLS_CA", "/ca.pem")
    monkeypatch.setenv("AGENTFENSE_TLS_CLIENT_CERT", "/me.pem")
    client = SandboxClient("localhost:9000")
    assert client.secure
    assert client.tls == TLSConfig(ca="/ca.pem", cert="/me.pem")
    # an explicit tls= wins whole
    assert AsyncSandboxClient("localhost:9000", tls=TLSConfig()).tls == TLSConfig()
    # a unix socket takes no TLS from them
    assert AsyncSandboxClient("unix:/run/agentfense.sock").tls is None


def test_a_key_variable_without_a_certificate_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFENSE_TLS_CLIENT_KEY", "/me.key")
    with pytest.raises(InvalidConfigurationError, match="AGENTFENSE_TLS_CLIENT_KEY needs"):
        AsyncSandboxClient("localhost:9000")


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"key": "/me.key"}, "tls.key needs tls.cert"),
        ({"ca": 3}, "tls.ca must be a path or PEM bytes"),
        ({"cert": b"pem"}, "tls.cert must be a path"),
    ],
)
def test_a_wrong_tls_config_is_refused_when_made(kwargs: dict[str, object], said: str) -> None:
    with pytest.raises(InvalidConfigurationError, match=said):
        TLSConfig(**kwargs)  # type: ignore[arg-type]


def test_tls_must_be_a_tls_config() -> None:
    with pytest.raises(InvalidConfigurationError, match="tls must be a TLSConfig"):
        AsyncSandboxClient("localhost:9000", tls="ca.pem")  # type: ignore[arg-type]
