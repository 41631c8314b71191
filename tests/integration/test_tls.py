"""TLS and mutual TLS between the SDK and a real server over TCP loopback, with certificates
the tests make (trustme); each way a TLS connection fails says which, in a sentence."""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from agentfense import (
    AsyncSandbox,
    AsyncSandboxClient,
    ConnectionError,
    InvalidConfigurationError,
    Sandbox,
    TLSConfig,
)
from agentfense.testing import ServerProcess, start_server_process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Certificates:
    """A test CA, the server's certificate for 127.0.0.1 and localhost, a client's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_pem = self._write("ca.pem", self.ca.cert_pem.bytes())
        # for localhost only: 127.0.0.1 is a name it does not list (a hostname mismatch)
        server = self.ca.issue_cert("localhost")
        self.server_pem = self._write("server.pem", server.private_key_and_cert_chain_pem.bytes())
        client = self.ca.issue_cert("client@example.test")
        self.client_pem = self._write("client.pem", client.cert_chain_pems[0].bytes())
        self.client_key = self._write("client.key", client.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("certs"))


def _start(directory: Path, settings: dict[str, str]) -> ServerProcess:
    return start_server_process(directory, listen=f"127.0.0.1:{_free_port()}", settings=settings)


def _by_name(server: ServerProcess) -> str:
    """The server's endpoint by the name its certificate lists (it listens on 127.0.0.1)."""
    return server.endpoint.replace("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def tls_server(
    certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory.mktemp("tls"), {"tls_cert": str(certs.server_pem)})
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def mtls_server(
    certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    settings = {"tls_cert": str(certs.server_pem), "tls_client_ca": str(certs.ca_pem)}
    server = _start(tmp_path_factory.mktemp("mtls"), settings)
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def expired_server(
    certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    now = datetime.datetime.now(datetime.UTC)
    expired = certs.ca.issue_cert(
        "localhost",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    directory = tmp_path_factory.mktemp("expired")
    pem = directory / "expired.pem"
    pem.write_bytes(expired.private_key_and_cert_chain_pem.bytes())
    server = _start(directory, {"tls_cert": str(pem)})
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory.mktemp("plain"), {})
    yield server
    assert server.stop() == 0, server.log()


@pytest.mark.anyio
async def test_from_local_and_run_over_tls(
    tls_server: ServerProcess, certs: Certificates, project: Path
) -> None:
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=_by_name(tls_server), tls=TLSConfig(ca=certs.ca_pem)
    ) as sandbox:
        result = await sandbox.run("cat README.md")
    assert (result.exit_code, result.stdout) == (0, "# demo\n")
    assert "over TLS" in tls_server.log()


def test_the_sync_api_over_tls_with_the_ca_in_the_environment(
    tls_server: ServerProcess,
    certs: Certificates,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTFENSE_TLS_CA", str(certs.ca_pem))
    with Sandbox.from_local(project, preset="read-only", endpoint=_by_name(tls_server)) as sandbox:
        assert sandbox.client.tls == TLSConfig(ca=str(certs.ca_pem))
        assert sandbox.run("cat README.md").stdout == "# demo\n"


@pytest.mark.anyio
async def test_a_ca_given_as_pem_bytes(tls_server: ServerProcess, certs: Certificates) -> None:
    tls = TLSConfig(ca=certs.ca.cert_pem.bytes())
    async with AsyncSandboxClient(_by_name(tls_server), tls=tls) as client:
        assert isinstance(await client.list_codebases(), list)


@pytest.mark.anyio
async def test_mutual_tls_round_trip(
    mtls_server: ServerProcess, certs: Certificates, project: Path
) -> None:
    tls = TLSConfig(ca=certs.ca_pem, cert=certs.client_pem, key=certs.client_key)
    async with await AsyncSandbox.from_local(
        project, preset="read-only", endpoint=_by_name(mtls_server), tls=tls
    ) as sandbox:
        assert (await sandbox.run("cat README.md")).stdout == "# demo\n"
    assert "over mutual TLS" in mtls_server.log()


async def _refusal(endpoint: str, tls: TLSConfig) -> str:
    async with AsyncSandboxClient(endpoint, tls=tls) as client:
        with pytest.raises(ConnectionError) as raised:
            await client.list_codebases()
    return raised.value.message


@pytest.mark.anyio
async def test_a_missing_client_certificate_under_mutual_tls(
    mtls_server: ServerProcess, certs: Certificates
) -> None:
    message = await _refusal(_by_name(mtls_server), TLSConfig(ca=certs.ca_pem))
    assert "requires a client certificate" in message


@pytest.mark.anyio
async def test_a_client_certificate_of_another_ca_under_mutual_tls(
    mtls_server: ServerProcess, certs: Certificates, tmp_path: Path
) -> None:
    stranger = trustme.CA().issue_cert("client@example.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(stranger.cert_chain_pems[0].bytes())
    key.write_bytes(stranger.private_key_pem.bytes())
    message = await _refusal(_by_name(mtls_server), TLSConfig(ca=certs.ca_pem, cert=cert, key=key))
    assert "refused the client certificate" in message


@pytest.mark.anyio
async def test_a_wrong_ca(tls_server: ServerProcess, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(trustme.CA().cert_pem.bytes())
    message = await _refusal(_by_name(tls_server), TLSConfig(ca=other))
    assert "not signed by a CA this client trusts" in message


@pytest.mark.anyio
async def test_the_system_trust_store_does_not_trust_a_private_ca(
    tls_server: ServerProcess,
) -> None:
    async with AsyncSandboxClient(_by_name(tls_server), secure=True) as client:
        with pytest.raises(ConnectionError, match="not signed by a CA this client trusts"):
            await client.list_codebases()


@pytest.mark.anyio
async def test_a_hostname_mismatch(tls_server: ServerProcess, certs: Certificates) -> None:
    message = await _refusal(tls_server.endpoint, TLSConfig(ca=certs.ca_pem))
    assert "hostname mismatch" in message


@pytest.mark.anyio
async def test_an_expired_server_certificate(
    expired_server: ServerProcess, certs: Certificates
) -> None:
    message = await _refusal(_by_name(expired_server), TLSConfig(ca=certs.ca_pem))
    assert "has expired" in message


@pytest.mark.anyio
async def test_tls_against_a_plain_server(plain_server: ServerProcess) -> None:
    message = await _refusal(plain_server.endpoint, TLSConfig())
    assert "does not speak TLS" in message


@pytest.mark.anyio
async def test_no_tls_against_a_tls_server(tls_server: ServerProcess) -> None:
    async with AsyncSandboxClient(tls_server.endpoint) as client:
        with pytest.raises(ConnectionError, match="if it serves TLS, connect with secure=True"):
            await client.list_codebases()


@pytest.mark.anyio
async def test_an_unreadable_ca_bundle_is_named(tls_server: ServerProcess, tmp_path: Path) -> None:
    client = AsyncSandboxClient(_by_name(tls_server), tls=TLSConfig(ca=tmp_path / "no"))
    with pytest.raises(InvalidConfigurationError, match=r"tls.ca .*/no cannot be read"):
        await client.list_codebases()


@pytest.mark.anyio
async def test_an_encrypted_client_key_is_refused_not_prompted_for(
    mtls_server: ServerProcess, certs: Certificates, tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(certs.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    tls = TLSConfig(ca=certs.ca_pem, cert=certs.client_pem, key=encrypted)
    client = AsyncSandboxClient(_by_name(mtls_server), tls=tls)
    with pytest.raises(InvalidConfigurationError, match=r"tls\.key is encrypted"):
        await client.list_codebases()
