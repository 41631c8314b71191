"""The network policy (pure): patterns, what they allow, the operator's cap, the host map."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfense.errors import InvalidConfigurationError
from agentfense.server.network.policy import (
    NO_NETWORK,
    OperatorNetwork,
    parse_cap,
    parse_host_map,
    parse_pattern,
    parse_patterns,
)


def allows(patterns: list[str], host: str, port: int) -> bool:
    return OperatorNetwork().policy(patterns).allows(host, port) is not None


def test_a_name_allows_itself_on_the_web_ports_only() -> None:
    assert allows(["pypi.org"], "pypi.org", 443)
    assert allows(["pypi.org"], "pypi.org", 80)
    assert not allows(["pypi.org"], "pypi.org", 22)
    assert not allows(["pypi.org"], "files.pypi.org", 443)
    assert not allows(["pypi.org"], "evilpypi.org", 443)


def test_a_wildcard_allows_the_names_below_it_not_itself() -> None:
    assert allows(["*.pythonhosted.org"], "files.pythonhosted.org", 443)
    assert allows(["*.pythonhosted.org"], "a.b.pythonhosted.org", 443)
    assert not allows(["*.pythonhosted.org"], "pythonhosted.org", 443)
    assert not allows(["*.pythonhosted.org"], "xpythonhosted.org", 443)


def test_a_port_narrows_and_a_star_port_widens() -> None:
    assert allows(["github.com:443"], "github.com", 443)
    assert not allows(["github.com:443"], "github.com", 80)
    assert allows(["github.com:*"], "github.com", 22)
    assert allows(["*:*"], "anything.example", 9)


def test_patterns_are_compared_lowercase_without_the_trailing_dot() -> None:
    assert parse_pattern("PyPI.org.").text == "pypi.org"
    assert [p.text for p in parse_patterns(["a.test", "A.test", "a.test."])] == ["a.test"]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a b",
        "*",
        "*.",
        "**.a",
        "a.*.b",
        "a:0",
        "a:65536",
        "a:x",
        "-a.b",
        "a..b",
        "*.1.2.3.4",
        "x" * 300,
        "a:1:2",
        "[::1",
        "[::1]x",
    ],
)
def test_what_is_no_pattern_is_refused_with_a_sentence(bad: str) -> None:
    if bad == "*":
        assert parse_pattern(bad).text == "*"  # (any host: open egress)
        return
    with pytest.raises(InvalidConfigurationError, match="network"):
        parse_pattern(bad)


def test_addresses_are_hosts_like_any_other() -> None:
    assert parse_pattern("10.0.0.1:8080").text == "10.0.0.1:8080"
    assert parse_pattern("[::1]:8080").host == "::1"
    assert allows(["10.0.0.1:8080"], "10.0.0.1", 8080)


def test_none_or_nothing_is_no_network_and_none_mixes_with_nothing() -> None:
    assert OperatorNetwork().policy([]) is NO_NETWORK
    assert OperatorNetwork().policy(["none"]) is NO_NETWORK
    with pytest.raises(InvalidConfigurationError, match="none"):
        OperatorNetwork().policy(["none", "pypi.org"])


def test_the_operator_caps_what_a_sandbox_may_ask_for() -> None:
    operator = OperatorNetwork(parse_cap(["*.pypi.org", "pypi.org", "github.com:*"]))
    operator.policy(["pypi.org", "files.pypi.org:443", "*.a.pypi.org", "github.com:22"])
    for beyond in ["example.com", "pypi.org:8080", "*.org", "*", "github.com:*:*"[:12] + "x"]:
        with pytest.raises(InvalidConfigurationError):
            operator.policy([beyond])
    with pytest.raises(InvalidConfigurationError, match="beyond what this server allows"):
        operator.policy(["example.com"])


def test_an_operator_may_forbid_open_egress_or_all_network() -> None:
    closed = OperatorNetwork(parse_cap(["*:*"]), open_egress=False)
    closed.policy(["pypi.org"])
    with pytest.raises(InvalidConfigurationError, match="open egress"):
        closed.policy(["*"])
    nothing = OperatorNetwork(parse_cap("none"))
    with pytest.raises(InvalidConfigurationError, match="beyond"):
        nothing.policy(["pypi.org"])


def test_too_many_patterns_are_refused() -> None:
    with pytest.raises(InvalidConfigurationError, match="at most 256"):
        OperatorNetwork().policy([f"h{i}.test" for i in range(257)])


def test_the_host_map_takes_a_table_or_pairs_and_wants_addresses() -> None:
    assert parse_host_map({"Mirror.test": "127.0.0.1"}) == {"mirror.test": "127.0.0.1"}
    assert parse_host_map("a.test=10.0.0.1, b.test=::1") == {"a.test": "10.0.0.1", "b.test": "::1"}
    for bad in ("a.test", "a.test=nowhere", {"a b": "1.2.3.4"}, 5):
        with pytest.raises(InvalidConfigurationError, match="network_hosts"):
            parse_host_map(bad)


_labels = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_names = st.lists(_labels, min_size=1, max_size=4).map(".".join)
_texts = st.one_of(
    _names,
    _names.map(lambda name: "*." + name),
    st.tuples(_names, st.integers(1, 65535)).map(lambda pair: f"{pair[0]}:{pair[1]}"),
    _names.map(lambda name: name + ":*"),
    st.just("*"),
)


@given(_texts, _texts, _names, st.sampled_from([22, 80, 443, 8080]))
def test_a_pattern_covered_by_another_allows_nothing_more(
    wide: str, narrow: str, host: str, port: int
) -> None:
    outer, inner = parse_pattern(wide), parse_pattern(narrow)
    if outer.covers(inner) and inner.matches(host, port):
        assert outer.matches(host, port)


@given(_texts)
def test_a_pattern_covers_itself_and_reads_back_as_itself(text: str) -> None:
    pattern = parse_pattern(text)
    assert pattern.covers(pattern)
    assert parse_pattern(pattern.text) == pattern


def test_none_in_any_case_is_no_network_and_never_a_host() -> None:
    assert OperatorNetwork().policy(["NONE"]) is NO_NETWORK
    assert OperatorNetwork().policy([" None "]) is NO_NETWORK
    with pytest.raises(InvalidConfigurationError, match="none"):
        OperatorNetwork().policy(["pypi.org", "None"])


def test_an_ipv6_pattern_reads_back_with_its_brackets() -> None:
    for text in ("[::1]:80", "[::1]", "[2001:db8::1]:*"):
        pattern = parse_pattern(text)
        assert pattern.text == text
        assert parse_pattern(pattern.text) == pattern


def test_a_list_too_long_is_refused_before_its_patterns_are_read() -> None:
    """The count was checked once every pattern had been parsed: a request's million
    entries each cost the server a parse first."""
    with pytest.raises(InvalidConfigurationError, match="at most 256"):
        OperatorNetwork().policy(["not a pattern"] * 257)
