"""Registrar liveness and binding probe: two OPTIONS every couple of seconds, outside the stack.

A registrar that keeps its bindings in memory (Kamailio with ``usrloc db_mode 0``, many SBCs)
forgets them when it restarts, while the stack still believes it is registered until the next
refresh (up to 90 % of ``register_expires_s`` later): every inbound call is lost meanwhile.
baresip-python exposes no OPTIONS or keep-alive of its own, so sip4ai probes from its own socket:

* ``OPTIONS sip:<registrar>`` tells whether the registrar answers at all (any response counts;
  a connection refusal or silence does not);
* ``OPTIONS sip:<user>@<domain>`` is routed by the registrar to the registered contact, i.e.
  back to us: a 2xx proves the binding exists, a 404/410/480 says it is gone.

The supervisor acts only on evidence: silence counts as "down" only after the registrar has
answered a probe before, and "binding missing" only after a 2xx proved the AOR probe reaches us
(a registrar that answers 404 to every OPTIONS must not cause a re-REGISTER loop).

The probe always uses UDP, whatever the account's transport: most registrars listen on UDP
and TCP alike (Kamailio, Asterisk, FreeSWITCH), and one that ignores UDP simply never answers,
which leaves the probe inert (see above) instead of opening a TCP or TLS connection every two
seconds. Wire building and parsing are pure functions; ``RegistrarProbe`` does the I/O.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from dataclasses import dataclass
from typing import Protocol

from sip4ai.sip.uri import split_hostport, uri_host


__all__ = [
    "Probe",
    "ProbeOutcome",
    "ProbeTarget",
    "RegistrarProbe",
    "options_request",
    "response_status",
]

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0
#: Final responses to the AOR probe that mean "no such binding here".
BINDING_MISSING_STATUSES = frozenset({404, 410, 480, 604})
_PROBE_USER = "sip4ai-keepalive"


class ProbeOutcome(enum.Enum):
    NO_ANSWER = "no_answer"
    """Nothing answered the registrar probe (silence, refusal, unreachable)."""
    ANSWERED = "answered"
    """The registrar answers; nothing is known about our binding."""
    BOUND = "bound"
    """The registrar answers and routed the AOR probe to a contact that answered 2xx."""
    BINDING_MISSING = "binding_missing"
    """The registrar answers but has no binding for our AOR (404/410/480/604)."""


class Probe(Protocol):
    async def check(self) -> ProbeOutcome: ...


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    host: str
    port: int
    transport: str
    """The account's transport (udp, tcp or tls): it only picks the default port."""
    user: str
    domain: str
    """``host[:port]`` of the AOR (the account's domain)."""

    @classmethod
    def for_registrar(
        cls, registrar: str, *, transport: str, user: str, domain: str
    ) -> ProbeTarget:
        """``registrar`` is ``host[:port]`` or a SIP URI (the outbound proxy)."""
        host, port = split_hostport(uri_host(registrar))
        if port is None:
            port = 5061 if transport == "tls" else 5060
        return cls(host.strip("[]"), port, transport, user, domain)


def options_request(
    request_uri: str,
    *,
    to_uri: str,
    from_host: str,
    local: tuple[str, int],
    call_id: str,
    tag: str,
    branch: str,
) -> bytes:
    """One out-of-dialog OPTIONS over UDP (``local`` goes into Via, with rport)."""
    host, port = local
    via_host = f"[{host}]" if ":" in host else host
    return (
        f"OPTIONS {request_uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host}:{port};branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{_PROBE_USER}@{from_host}>;tag={tag}\r\n"
        f"To: <{to_uri}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "User-Agent: sip4ai\r\n"
        "Accept: application/sdp\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def response_status(datagram: bytes) -> tuple[int, str] | None:
    """``(status, call_id)`` of a SIP response, None for anything else (requests, garbage)."""
    head, _, _ = datagram.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    first = lines[0].split(b" ", 2)
    if len(first) < 2 or first[0] != b"SIP/2.0" or not first[1].isdigit():
        return None
    call_id = ""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"call-id", b"i"):
            call_id = value.strip().decode("utf-8", "replace")
            break
    return int(first[1]), call_id


class _Collector(asyncio.DatagramProtocol):
    """Final responses by Call-ID; an ICMP error ends the wait at once."""

    def __init__(self, wanted: set[str]) -> None:
        self.finals: dict[str, int] = {}
        self._wanted = wanted
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        parsed = response_status(data)
        if parsed is None:
            return
        status, call_id = parsed
        if call_id in self._wanted and status >= 200:
            self.finals.setdefault(call_id, status)
            if set(self.finals) == self._wanted and not self.done.done():
                self.done.set_result(None)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_result(None)


class RegistrarProbe:
    def __init__(self, target: ProbeTarget, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._target = target
        self._timeout_s = timeout_s

    async def check(self) -> ProbeOutcome:
        try:
            return await self._check_udp()
        except OSError as exc:
            logger.debug("registrar probe: %s", exc)
            return ProbeOutcome.NO_ANSWER

    async def _check_udp(self) -> ProbeOutcome:
        t = self._target
        loop = asyncio.get_running_loop()
        server_id, aor_id = secrets.token_hex(12), secrets.token_hex(12)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Collector({server_id, aor_id}), remote_addr=(t.host, t.port)
        )
        try:
            local = transport.get_extra_info("sockname")[:2]
            for call_id, ruri in (
                (server_id, f"sip:{_bracket(t.host)}:{t.port}"),
                (aor_id, f"sip:{t.user}@{t.domain}"),
            ):
                transport.sendto(
                    options_request(
                        ruri,
                        to_uri=ruri,
                        from_host=t.domain,
                        local=(str(local[0]), int(local[1])),
                        call_id=call_id,
                        tag=secrets.token_hex(4),
                        branch=secrets.token_hex(8),
                    )
                )
            try:
                await asyncio.wait_for(asyncio.shield(protocol.done), self._timeout_s)
            except TimeoutError:
                pass
        finally:
            transport.close()
        return judge(protocol.finals.get(server_id), protocol.finals.get(aor_id))


def judge(server_status: int | None, aor_status: int | None) -> ProbeOutcome:
    """The outcome from the two final statuses (None: no final response)."""
    if aor_status is not None and 200 <= aor_status < 300:
        return ProbeOutcome.BOUND
    if server_status is None and aor_status is None:
        return ProbeOutcome.NO_ANSWER
    if aor_status in BINDING_MISSING_STATUSES:
        return ProbeOutcome.BINDING_MISSING
    return ProbeOutcome.ANSWERED


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
