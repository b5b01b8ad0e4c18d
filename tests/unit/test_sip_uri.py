from __future__ import annotations

import pytest

from sip4ai.sip.uri import (
    NameAddr,
    TrustedSources,
    parse_name_addr,
    request_uri,
    split_hostport,
    uri_host,
    via_source,
)


pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("+15551234567", "sip:+15551234567@pbx.example.com:5062"),
        ("+1 (555) 123-4567", "sip:+15551234567@pbx.example.com:5062"),
        ("tel:+15551234567;phone-context=x", "sip:+15551234567@pbx.example.com:5062"),
        ("1001", "sip:1001@pbx.example.com:5062"),
        ("uas", "sip:uas@pbx.example.com:5062"),
        ("sip:alice@other.example.com;transport=tcp", "sip:alice@other.example.com;transport=tcp"),
        ("SIPS:bob@example.com", "SIPS:bob@example.com"),
        ("sip:example.com", "sip:example.com"),
    ],
)
def test_request_uri(target: str, expected: str) -> None:
    assert request_uri(target, "pbx.example.com:5062") == expected


@pytest.mark.parametrize(
    "target",
    [
        "",
        "  ",
        "+0123",
        "+1234567890123456",
        "sip:a b@example.com",
        "sip:",
        "a\r\nb",
        "al ice",
        "<x>",
    ],
)
def test_request_uri_rejects(target: str) -> None:
    with pytest.raises(ValueError):
        request_uri(target, "example.com")


def test_request_uri_needs_a_domain_for_numbers() -> None:
    with pytest.raises(ValueError, match="domain"):
        request_uri("+15551234567", "")
    assert request_uri("sip:a@b", "") == "sip:a@b"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("pbx.example.com", ("pbx.example.com", None)),
        ("10.0.0.1:5080", ("10.0.0.1", 5080)),
        ("[2001:db8::1]:5061", ("2001:db8::1", 5061)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("2001:db8::1", ("2001:db8::1", None)),
    ],
)
def test_split_hostport(value: str, expected: tuple[str, int | None]) -> None:
    assert split_hostport(value) == expected


@pytest.mark.parametrize("value", ["host:0", "host:70000", "host:x", ":5060", "[::1"])
def test_split_hostport_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        split_hostport(value)


def test_uri_host() -> None:
    assert uri_host("sip:proxy.example.com:5070;transport=tcp;lr") == "proxy.example.com:5070"
    assert uri_host("sip:alice@example.com") == "example.com"
    assert uri_host("proxy.example.com:5070") == "proxy.example.com:5070"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            '"SIPp caller" <sip:caller1@127.0.0.1:15090>;tag=1',
            NameAddr("SIPp caller", "caller1", "127.0.0.1:15090"),
        ),
        ("<sip:+15551234@pbx;user=phone>", NameAddr("", "+15551234", "pbx")),
        ("Bob <sips:bob:secret@example.com>", NameAddr("Bob", "bob", "example.com")),
        ("sip:carol@example.com;tag=9", NameAddr("", "carol", "example.com")),
        ('"A \\"quoted\\" name" <sip:q@h>', NameAddr('A "quoted" name', "q", "h")),
        ("<tel:+4930123>", NameAddr("", "+4930123", "")),
        ("garbage", NameAddr("", "", "")),
        ('"Anonymous" <sip:anonymous.invalid>', NameAddr("Anonymous", "", "anonymous.invalid")),
    ],
)
def test_parse_name_addr(value: str, expected: NameAddr) -> None:
    assert parse_name_addr(value) == expected


@pytest.mark.parametrize(
    ("via", "expected"),
    [
        ("SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK1", "127.0.0.1:15060"),
        ("SIP/2.0/UDP 10.0.0.5;branch=z;received=198.51.100.7;rport=40000", "198.51.100.7:40000"),
        ("SIP/2.0/TCP [2001:db8::5]:5070;branch=z", "[2001:db8::5]:5070"),
        ("SIP/2.0/UDP a.example.com;branch=1, SIP/2.0/UDP b;branch=2", "a.example.com:5060"),
        ("", ""),
    ],
)
def test_via_source(via: str, expected: str) -> None:
    assert via_source(via) == expected


def test_trusted_sources() -> None:
    trusted = TrustedSources(["192.0.2.10", "198.51.100.0/24", "2001:db8::/32"])
    assert trusted
    assert trusted.allows("192.0.2.10:5060")
    assert trusted.allows("198.51.100.77:5080")
    assert trusted.allows("[2001:db8::9]:5060")
    assert trusted.allows("192.0.2.10")
    assert not trusted.allows("192.0.2.11:5060")
    assert not trusted.allows("")
    assert not trusted.allows("trunk.example.com:5060")
    assert not TrustedSources([]).allows("192.0.2.10:5060")
    with pytest.raises(ValueError):
        TrustedSources(["trunk.example.com"])
