"""Pure helpers for SIP addresses: request URIs from dial targets, name-addr and Via parsing,
trusted-source matching. No I/O, no SIP library.

References: RFC 3261 section 19.1 (SIP URI), 20.10 (name-addr), 18.2.1 (Via received/rport),
RFC 3966 (tel URI), ITU-T E.164.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass


__all__ = [
    "NameAddr",
    "TrustedSources",
    "is_ip_literal",
    "parse_name_addr",
    "request_uri",
    "split_hostport",
    "uri_host",
    "via_source",
]

# RFC 3261 user part: unreserved / escaped / user-unreserved characters.
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# Visual separators people paste into phone numbers (RFC 3966 section 5.1.1).
_VISUAL_SEPARATORS = re.compile(r"[\s\-.()]")
_FORBIDDEN_IN_URI = re.compile(r"[\s<>\"]")


def split_hostport(value: str) -> tuple[str, int | None]:
    """``host[:port]`` or ``[v6]:port`` -> (host, port). Raises ValueError on a bad port."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError(f"unterminated IPv6 literal in {value!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected text after IPv6 literal in {value!r}")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not host:
        raise ValueError(f"no host in {value!r}")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port_text)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def request_uri(target: str, domain: str) -> str:
    """The Request-URI to dial for a target.

    ``target`` is a full ``sip:``/``sips:`` URI (used as is), a ``tel:`` URI or an E.164 number
    (``+15551234567``, visual separators allowed), or a plain user part (``1001``, ``uas``);
    the last two are dialled at ``domain`` (``host[:port]``).
    """
    text = target.strip()
    if not text:
        raise ValueError("empty dial target")
    if "\r" in text or "\n" in text:
        raise ValueError("dial target must be a single line")
    lowered = text.lower()
    if lowered.startswith(("sip:", "sips:")):
        if _FORBIDDEN_IN_URI.search(text) or len(text.split(":", 1)[1]) == 0:
            raise ValueError(f"not a usable SIP URI: {text!r}")
        return text
    if lowered.startswith("tel:"):
        text = text[4:].split(";", 1)[0]
    compact = _VISUAL_SEPARATORS.sub("", text)
    if compact.startswith("+"):
        if not _E164.fullmatch(compact):
            raise ValueError("not an E.164 number (+ then 2 to 15 digits)")
        user = compact
    elif compact.isdigit():
        user = compact
    elif _USER.fullmatch(text):
        user = text
    else:
        raise ValueError(f"not a dialable user part: {text!r}")
    if not domain:
        raise ValueError("a number or user part needs sip.domain (or sip.server) to dial")
    return f"sip:{user}@{domain}"


def uri_host(uri: str) -> str:
    """Host (and port) of a ``sip:`` URI or ``host[:port]``, without user and parameters."""
    rest = uri.split(":", 1)[1] if uri.lower().startswith(("sip:", "sips:")) else uri
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    return rest.rsplit("@", 1)[-1]


@dataclass(frozen=True, slots=True)
class NameAddr:
    display: str
    user: str
    host: str


def parse_name_addr(value: str) -> NameAddr:
    """Display name, user and host of a From/To value (name-addr or addr-spec).

    Lenient: anything unparsable gives empty fields rather than an error, since the value comes
    off the network and only feeds informational event fields.
    """
    text = value.strip()
    display = ""
    if "<" in text:
        before, _, after = text.partition("<")
        display = _unquote(before.strip())
        uri = after.partition(">")[0]
    else:
        # addr-spec: parameters after the URI belong to the header (RFC 3261 20.10)
        uri = text.split(";", 1)[0]
    if ":" not in uri:
        return NameAddr(display, "", "")
    scheme, _, rest = uri.partition(":")
    if scheme.lower() not in ("sip", "sips", "tel"):
        return NameAddr(display, "", "")
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    if scheme.lower() == "tel":
        return NameAddr(display, rest, "")
    user, at, host = rest.rpartition("@")
    if not at:
        return NameAddr(display, "", rest)
    return NameAddr(display, user.split(":", 1)[0], host)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def via_source(via: str) -> str:
    """``host:port`` the top Via says the request came from (``received``/``rport`` first).

    This is what the sender claims, not the packet source; used only when the packet source is
    unknown.
    """
    top = via.split(",", 1)[0].strip()
    parts = top.split(";")
    sent_by = parts[0].split()[-1] if parts[0].split() else ""
    params: dict[str, str] = {}
    for param in parts[1:]:
        key, _, val = param.strip().partition("=")
        params[key.lower()] = val
    try:
        host, port = split_hostport(sent_by)
    except ValueError:
        return ""
    host = params.get("received") or host
    rport = params.get("rport", "")
    if rport.isdigit():
        port = int(rport)
    port = port or 5060
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TrustedSources:
    """Trunk-mode allow list: IP addresses and CIDR networks (``10.0.0.0/24``)."""

    def __init__(self, entries: Iterable[str]) -> None:
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            networks.append(ipaddress.ip_network(entry.strip().strip("[]"), strict=False))
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def allows(self, source: str) -> bool:
        """``source`` is ``host``, ``host:port`` or ``[v6]:port``; hostnames never match."""
        if not source:
            return False
        try:
            host, _ = split_hostport(source)
            address = ipaddress.ip_address(host)
        except ValueError:
            try:
                address = ipaddress.ip_address(source)
            except ValueError:
                return False
        return any(address in network for network in self._networks)
