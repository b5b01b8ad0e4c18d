"""The registrar probe (wire and verdicts) and what the registration supervisor does with it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import cast

import pytest

from sip4ai.sip.baresip_registration import Backoff, RegistrationSupervisor
from sip4ai.sip.interface import RegistrationChanged, RegistrationState
from sip4ai.sip.registrar_probe import (
    ProbeOutcome,
    ProbeTarget,
    RegistrarProbe,
    judge,
    options_request,
    response_status,
)


pytestmark = pytest.mark.unit

Outcome = ProbeOutcome


def test_options_request_is_a_complete_sip_request() -> None:
    raw = options_request(
        "sip:aibot@pbx.example.com",
        to_uri="sip:aibot@pbx.example.com",
        from_host="pbx.example.com",
        local=("10.0.0.5", 40000),
        call_id="cid1",
        tag="t1",
        branch="b1",
    ).decode()
    head, sep, body = raw.partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert sep and body == ""
    assert lines[0] == "OPTIONS sip:aibot@pbx.example.com SIP/2.0"
    assert "Via: SIP/2.0/UDP 10.0.0.5:40000;branch=z9hG4bKb1;rport" in lines
    assert "Call-ID: cid1" in lines and "CSeq: 1 OPTIONS" in lines
    assert "From: <sip:sip4ai-keepalive@pbx.example.com>;tag=t1" in lines
    assert "Content-Length: 0" in lines


def test_response_status_reads_responses_only() -> None:
    ok = b"SIP/2.0 404 Not Found\r\nVia: x\r\ni: abc\r\nCSeq: 1 OPTIONS\r\n\r\n"
    assert response_status(ok) == (404, "abc")
    assert response_status(b"SIP/2.0 200 OK\r\nCall-ID:  z \r\n\r\n") == (200, "z")
    assert response_status(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: a\r\n\r\n") is None
    assert response_status(b"\x00\xff garbage") is None
    assert response_status(b"SIP/2.0 abc\r\n\r\n") is None


@pytest.mark.parametrize(
    ("server", "aor", "expected"),
    [
        (None, None, Outcome.NO_ANSWER),
        (200, None, Outcome.ANSWERED),
        (200, 200, Outcome.BOUND),
        (None, 200, Outcome.BOUND),
        (200, 404, Outcome.BINDING_MISSING),
        (200, 480, Outcome.BINDING_MISSING),
        (200, 407, Outcome.ANSWERED),
        (401, 403, Outcome.ANSWERED),
    ],
)
def test_judge(server: int | None, aor: int | None, expected: ProbeOutcome) -> None:
    assert judge(server, aor) is expected


def test_target_ports_default_by_transport() -> None:
    udp = ProbeTarget.for_registrar("pbx.example.com", transport="udp", user="u", domain="d")
    tls = ProbeTarget.for_registrar("sip:10.0.0.1;lr", transport="tls", user="u", domain="d")
    explicit = ProbeTarget.for_registrar("[::1]:5080", transport="udp", user="u", domain="d")
    assert (udp.host, udp.port) == ("pbx.example.com", 5060)
    assert (tls.host, tls.port) == ("10.0.0.1", 5061)
    assert (explicit.host, explicit.port) == ("::1", 5080)


class _FakeRegistrar(asyncio.DatagramProtocol):
    """Answers the server OPTIONS with 200 and the AOR OPTIONS with ``aor_status``."""

    def __init__(self, aor_status: int) -> None:
        self.aor_status = aor_status
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        text = data.decode()
        ruri = text.split(" ", 2)[1]
        call_id = next(v for k, _, v in (ln.partition(": ") for ln in text.split("\r\n"))
                       if k == "Call-ID")  # fmt: skip
        status = self.aor_status if "@" in ruri else 200
        reply = f"SIP/2.0 {status} X\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n\r\n"
        assert self.transport is not None
        self.transport.sendto(reply.encode(), addr)


@pytest.mark.parametrize(
    ("aor_status", "expected"), [(200, Outcome.BOUND), (404, Outcome.BINDING_MISSING)]
)
async def test_probe_over_udp(aor_status: int, expected: ProbeOutcome) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _FakeRegistrar(aor_status), local_addr=("127.0.0.1", 0)
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        target = ProbeTarget("127.0.0.1", port, "udp", "aibot", f"127.0.0.1:{port}")
        assert await RegistrarProbe(target, timeout_s=2.0).check() is expected
    finally:
        transport.close()


async def test_probe_of_a_closed_port_is_no_answer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = ProbeTarget("127.0.0.1", port, "udp", "aibot", "127.0.0.1")
    assert await RegistrarProbe(target, timeout_s=0.5).check() is Outcome.NO_ANSWER


# ---- the supervisor ---------------------------------------------------------------------------


class _Agent:
    handle = 1

    def __init__(self) -> None:
        self.registers = 0
        self.calls: list[str] = []

    async def register(self, timeout_s: float) -> None:
        self.registers += 1
        self.calls.append("register")

    async def unregister(self, timeout_s: float) -> None:
        self.calls.append("unregister")


class _ScriptedProbe:
    """Returns ``script(n)`` for the n-th check (0-based)."""

    def __init__(self, script: Callable[[int], ProbeOutcome], until: int) -> None:
        self._script = script
        self._until = until
        self.checks = 0
        self.done = asyncio.Event()

    async def check(self) -> ProbeOutcome:
        outcome = self._script(self.checks)
        self.checks += 1
        if self.checks >= self._until:
            self.done.set()
        return outcome


async def supervise(
    script: Callable[[int], ProbeOutcome], checks: int
) -> tuple[_Agent, list[RegistrationChanged]]:
    """Run a supervisor (slow backoff, fast probe) until the probe was asked ``checks`` times."""
    agent = _Agent()
    events: list[RegistrationChanged] = []
    probe = _ScriptedProbe(script, checks)
    supervisor = RegistrationSupervisor(
        agent,  # type: ignore[arg-type]
        registrar="192.0.2.1:5060",
        registrar_host="192.0.2.1",
        emit=events.append,
        backoff=Backoff(first_s=30.0, max_s=30.0),
        probe=probe,
        probe_interval_s=0.001,
    )
    task = asyncio.get_running_loop().create_task(supervisor.run())
    try:
        await asyncio.wait_for(probe.done.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return agent, events


def states(events: list[RegistrationChanged]) -> list[RegistrationState]:
    return [e.state for e in events]


async def test_outage_is_reported_and_the_return_re_registers_without_backoff() -> None:
    def script(n: int) -> ProbeOutcome:
        return Outcome.NO_ANSWER if 3 <= n < 8 else Outcome.ANSWERED

    agent, events = await supervise(script, 12)
    assert agent.registers == 2  # the 30 s backoff was cut short by the registrar's return
    assert states(events) == [
        RegistrationState.REGISTERING,
        RegistrationState.REGISTERED,
        RegistrationState.FAILED,
        RegistrationState.REGISTERED,
    ]
    assert events[2].reason == "timeout"


async def test_lost_binding_re_registers_at_once_without_a_failure() -> None:
    def script(n: int) -> ProbeOutcome:
        return Outcome.BINDING_MISSING if n == 4 else Outcome.BOUND

    agent, events = await supervise(script, 10)
    # The old REGISTER client is unregistered first: freed while it believes it is
    # registered, the stack's client would un-REGISTER the shared Contact later.
    assert agent.calls == ["register", "unregister", "register"]
    assert RegistrationState.FAILED not in states(events)
    assert states(events)[-1] is RegistrationState.REGISTERED


async def test_a_binding_that_never_comes_back_is_retried_only_a_few_times() -> None:
    def script(n: int) -> ProbeOutcome:
        return Outcome.BOUND if n < 2 else Outcome.BINDING_MISSING

    agent, events = await supervise(script, 20)
    assert agent.registers == 4  # the first, then three re-REGISTERs
    assert states(events)[-1] is RegistrationState.REGISTERED


async def test_a_registrar_that_always_says_404_causes_no_register_loop() -> None:
    agent, events = await supervise(lambda n: Outcome.BINDING_MISSING, 10)
    assert agent.registers == 1
    assert states(events)[-1] is RegistrationState.REGISTERED


async def test_a_registrar_that_never_answers_probes_is_not_reported_down() -> None:
    agent, events = await supervise(lambda n: Outcome.NO_ANSWER, 10)
    assert agent.registers == 1
    assert states(events)[-1] is RegistrationState.REGISTERED
