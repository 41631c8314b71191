"""Which addresses the proxy refuses whatever name led there."""

from __future__ import annotations

import pytest

from agentfense.server.network.addresses import refusal


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "loopback"),
        ("169.254.169.254", "metadata"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("151.101.0.5", "this host"),
    ],
)
def test_what_is_not_a_global_address_is_refused(address: str, why: str) -> None:
    found = refusal(address, 80, mapped=False, server_ports=(), local={"151.101.0.5"})
    assert found is not None
    assert why in found.replace("is this host's", "this host")


def test_a_global_address_is_not_refused() -> None:
    assert refusal("151.101.0.223", 443, mapped=False, server_ports=(9000,), local=()) is None


def test_a_mapped_name_reaches_a_private_address_but_never_the_servers_ports() -> None:
    assert refusal("127.0.0.1", 8080, mapped=True, server_ports=(9000,), local=()) is None
    assert refusal("10.0.0.5", 8080, mapped=True, server_ports=(8080,), local=()) is None
    said = refusal("127.0.0.1", 9000, mapped=True, server_ports=(9000,), local=())
    assert said is not None
    assert "server's own" in said


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::a00:5",
        "::127.0.0.1",
        "::a9fe:a9fe",
        "::ffff:0:a00:5",
        "fec0::1",
        "2002:7f00:1::",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    ],
)
def test_ipv6_forms_carrying_an_ipv4_address_are_refused(address: str) -> None:
    assert refusal(address, 80, mapped=False, server_ports=(), local=()) is not None


def test_a_global_ipv6_address_is_not_refused() -> None:
    assert refusal("2a04:4e42::223", 443, mapped=False, server_ports=(), local=()) is None
