"""``agentfense serve`` with TLS settings: each wrong one is one sentence and exit 125 at start;
a non-loopback address without TLS is refused unless forced, and forcing it warns loudly."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from agentfense import SandboxClient, TLSConfig
from agentfense.testing import start_server_process

from .conftest import cli, cli_env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a certificate for localhost and its key, another certificate's key, garbage."""
    root = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    leaf, other = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    files = {
        "ca": ca.cert_pem.bytes(),
        "cert": leaf.cert_chain_pems[0].bytes(),
        "key": leaf.private_key_pem.bytes(),
        "other_key": other.private_key_pem.bytes(),
        "encrypted_key": encrypted,
        "garbage": b"not a certificate\n",
    }
    for name, data in files.items():
        (root / f"{name}.pem").write_bytes(data)
    return {name: root / f"{name}.pem" for name in files}


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--tls-cert", "{missing}"], "tls_cert {missing} cannot be read: No such file"),
        (["--tls-cert", "{dir}"], "tls_cert {dir} cannot be read: Is a directory"),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{other_key}"],
            "tls_key {other_key} does not match the certificate in tls_cert {cert}",
        ),
        (["--tls-cert", "{garbage}", "--tls-key", "{key}"], "must be a PEM certificate"),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{encrypted_key}"],
            "tls_key {encrypted_key} is encrypted: give the server an unencrypted key",
        ),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{garbage}"],
            "tls_client_ca {garbage} must hold PEM CA certificates",
        ),
        (["--tls-key", "{key}"], "tls_key and tls_client_ca need tls_cert"),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{key}", "--listen", "unix:{dir}/s.sock"],
            "TLS needs a host:port listen address",
        ),
        (
            ["--listen", "0.0.0.0:{port}"],
            "refusing to listen on 0.0.0.0, which is not loopback, without TLS",
        ),
    ],
)
def test_a_wrong_tls_setting_is_one_sentence_at_start(
    pems: dict[str, Path], tmp_path: Path, flags: list[str], said: str
) -> None:
    names = {k: str(v) for k, v in pems.items()}
    names |= {"missing": str(tmp_path / "missing.pem"), "dir": str(tmp_path)}
    names["port"] = str(_free_port())
    args = [flag.format(**names) for flag in flags]
    if "--listen" not in args:
        args += ["--listen", f"127.0.0.1:{names['port']}"]
    done = cli("serve", *args, "--state-dir", str(tmp_path / "state"), timeout=60)
    assert done.returncode == 125, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("agentfense serve: ")
    assert said.format(**names) in line
    assert not (tmp_path / "state").exists()  # refused before anything was made


def test_the_refusal_names_the_flag_that_forces_it(tmp_path: Path) -> None:
    done = cli("serve", "--listen", f"0.0.0.0:{_free_port()}", "--state-dir", str(tmp_path))
    assert done.returncode == 125
    assert "--insecure-listen" in done.stderr
    assert "allow_insecure_listen = true" in done.stderr


def test_forcing_an_insecure_listen_warns_and_serves(tmp_path: Path) -> None:
    port = _free_port()
    with start_server_process(
        tmp_path, listen=f"0.0.0.0:{port}", settings={"allow_insecure_listen": "true"}
    ) as server:
        with SandboxClient(f"127.0.0.1:{port}") as client:
            assert isinstance(client.list_codebases(), list)
        log = server.log()
    assert "WARNING agentfense.server: INSECURE: listening on 0.0.0.0" in log


def test_a_non_loopback_address_with_tls_starts_without_a_warning_and_the_cli_reaches_it(
    pems: dict[str, Path], tmp_path: Path
) -> None:
    port = _free_port()
    settings = {"tls_cert": str(pems["cert"]), "tls_key": str(pems["key"])}
    with start_server_process(tmp_path, listen=f"0.0.0.0:{port}", settings=settings) as server:
        with SandboxClient(f"localhost:{port}", tls=TLSConfig(ca=pems["ca"])) as client:
            assert isinstance(client.list_codebases(), list)
        where = ("--endpoint", f"localhost:{port}")
        assert cli("ls", *where, "--tls-ca", str(pems["ca"])).returncode == 0
        assert cli("ls", *where, env=cli_env(AGENTFENSE_TLS_CA=str(pems["ca"]))).returncode == 0
        untrusted = cli("ls", *where, "--tls")
        assert untrusted.returncode == 125
        [line] = untrusted.stderr.splitlines()
        assert "not signed by a CA this client trusts" in line
        log = server.log()
    assert "over TLS" in log
    assert "INSECURE" not in log
