"""The SIP engines against real Kamailio + SIPp: registration, calls both ways, media on the
wire, DTMF, transfer, hold. Every test runs on both backends (``sip_backend``: baresip and
pjsua2) with the same assertions. Regression tests for the libraries' wrong defaults are in
test_sip_engine_defaults.py; pjsua2's 4-call limit in test_sip_engine_pjsua2.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Literal

import pytest

from sip4ai.config import Secret
from sip4ai.sip.interface import (
    DialRequest,
    DtmfReceived,
    EndCause,
    HoldChanged,
    IncomingCall,
    LegAnswered,
    LegEnded,
    LegRinging,
    MediaReady,
    RegistrationChanged,
    RegistrationState,
    TransferResult,
)
from testbed.harness.capture import CaptureFactory
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from testbed.harness.sipp import SippFactory, SippOptions
from testbed.harness.tones import ToneLibrary
from tests.e2e.sip_engine_kit import (
    EngineSession,
    assert_tone,
    engine_config,
    finish,
)


pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("sip_backend")]

CALL_MS = 3000


# ----- registration -----


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_registers_and_refreshes(kamailio: Kamailio, transport: str) -> None:
    cfg = engine_config(kamailio, transport=transport, register_expires_s=30)
    async with EngineSession(cfg) as session:
        ok = await session.registered()
        assert ok.status_code == 200
        contacts = kamailio.contacts("aibot")
        assert any(f"transport={transport}" in c.lower() or transport == "udp" for c in contacts)
        assert session.engine.registration is RegistrationState.REGISTERED
    assert kamailio.contacts("aibot") == [], "stop() must unregister"


async def test_wrong_password_fails_with_one_clear_line(
    kamailio: Kamailio, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sip4ai")
    cfg = engine_config(kamailio, password=Secret("nope"))
    async with EngineSession(cfg) as session:
        failed = await session.wait(
            RegistrationChanged, lambda e: e.state is RegistrationState.FAILED
        )
        await asyncio.sleep(1.5)  # a few retries (fast backoff) must not repeat the line
    assert failed.status_code == 401 and failed.reason == "401 Unauthorized", failed
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines  # the library's own per-attempt lines are filtered out
    assert "401 Unauthorized" in lines[0] and "wrong password" in lines[0], lines
    assert "nope" not in caplog.text


async def test_registrar_unreachable_then_back(tmp_path: Path) -> None:
    kam = Kamailio(tmp_path / "kam", sip_port=free_port(udp=True, tcp=True))
    cfg = engine_config(None, domain=f"127.0.0.1:{kam.sip_port}", transport="tcp")
    try:
        async with EngineSession(cfg) as session:
            failed = await session.wait(
                RegistrationChanged, lambda e: e.state is RegistrationState.FAILED
            )
            assert failed.reason == "connection refused", failed
            await asyncio.to_thread(kam.start)
            await session.registered(timeout_s=15.0)  # retried with backoff, no restart
    finally:
        kam.close()


async def test_dns_failure_is_reported_as_such(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sip4ai")
    cfg = engine_config(None, domain="sip4ai-no-such-host.invalid")
    async with EngineSession(cfg) as session:
        failed = await session.wait(
            RegistrationChanged, lambda e: e.state is RegistrationState.FAILED, 30.0
        )
        await asyncio.sleep(1.5)  # retries
    assert failed.reason == "DNS failure", failed
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "DNS failure" in lines[0] and "resolve" in lines[0], lines


async def test_registrar_timeout_is_reported_as_such(caplog: pytest.LogCaptureFixture) -> None:
    """UDP to a port nothing listens on: the REGISTER transaction times out (Timer F, 32 s)."""
    caplog.set_level(logging.INFO, logger="sip4ai")
    cfg = engine_config(None, domain=f"127.0.0.1:{free_port(udp=True, tcp=True)}")
    async with EngineSession(cfg) as session:
        failed = await session.wait(
            RegistrationChanged, lambda e: e.state is RegistrationState.FAILED, 45.0
        )
    assert failed.reason == "timeout" and failed.status_code is None, failed
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "timeout" in lines[0] and "no answer" in lines[0], lines


async def test_registers_over_tls(kamailio: Kamailio) -> None:
    cfg = engine_config(
        kamailio,
        transport="tls",
        server=f"127.0.0.1:{kamailio.tls_port}",
        tls_ca_file=str(kamailio.tls_cert_path),
    )
    async with EngineSession(cfg) as session:
        await session.registered()
        assert any("tls" in c.lower() for c in kamailio.contacts("aibot"))


# ----- inbound -----


@pytest.mark.parametrize(
    ("scenario", "law"), [("uac_invite_rtp", "ulaw"), ("uac_invite_rtp_pcma", "alaw")]
)
async def test_inbound_call_audio_both_ways(
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
    tones: ToneLibrary,
    scenario: str,
    law: Literal["ulaw", "alaw"],
) -> None:
    async with EngineSession(engine_config(kamailio), tone_hz=1000) as session:
        await session.registered()
        media_port = free_port(udp=True, tcp=False, span=4)
        capture = rtp_capture.start([media_port], port_span=4)
        uac = sipp.start(
            SippOptions(
                scenario,
                remote=kamailio.address,
                service="aibot",
                audio=tones.get(440, law),
                call_duration_ms=CALL_MS,
                media_port=media_port,
            ),
            wait_ready=False,
        )
        incoming = await session.wait(IncomingCall)
        ended = await session.wait(LegEnded)
        result = await finish(uac)
        wire = await asyncio.to_thread(capture.stop)

    assert result.ok, result.describe()  # a stray re-INVITE from us would abort the call
    assert incoming.from_user == "caller1" and incoming.from_display == "SIPp caller"
    assert incoming.to_user == "aibot" and incoming.remote_addr == kamailio.address
    assert ended.cause is EndCause.REMOTE_HANGUP and ended.leg_id == incoming.leg_id
    ready = session.of(MediaReady, incoming.leg_id)
    assert ready and ready[0].codec == {"ulaw": "pcmu", "alaw": "pcma"}[law]
    assert ready[0].rate_hz == 8000
    assert session.pump_errors == []
    # caller -> sip4ai: the 440 Hz tone reached Python
    assert_tone(session.received_pcm(incoming.leg_id), 440.0, "frames read in Python")
    # sip4ai -> caller: the 1000 Hz tone is on the wire
    to_caller = [s for s in wire.rtp_streams() if s.key.dst_port == media_port]
    assert len(to_caller) == 1, [str(s) for s in wire.rtp_streams()]
    assert_tone(to_caller[0].pcm(), 1000.0, "RTP sent by sip4ai")
    pacing = to_caller[0].pacing()
    assert pacing.gaps_over_60ms <= 1, pacing  # tolerant of a busy shared CI machine
    messages = result.message_log()
    assert messages.index("SIP/2.0 180") < messages.index("SIP/2.0 200"), "180 comes first"


async def test_bye_from_sip4ai(kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary) -> None:
    async with EngineSession(engine_config(kamailio)) as session:
        await session.registered()
        uac = sipp.start(
            SippOptions(
                "uac_invite_wait_bye",
                remote=kamailio.address,
                service="aibot",
                audio=tones.get(440),
                recv_timeout_ms=10000,
            ),
            wait_ready=False,
        )
        ready = await session.wait(MediaReady)
        await asyncio.sleep(1.0)
        await session.engine.hangup(ready.leg_id)
        await session.engine.hangup(ready.leg_id)  # idempotent
        ended = await session.wait(LegEnded)
        result = await finish(uac)
    assert result.ok, result.describe()
    assert ended.cause is EndCause.LOCAL_HANGUP
    assert len(session.of(LegEnded)) == 1


async def test_media_timeout_when_the_caller_goes_silent(
    kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary, tmp_path: Path
) -> None:
    """The caller stops sending RTP after 1 s and never hangs up: rtp_timeout_s ends the call."""
    wait_bye = (Path(__file__).parents[2] / "testbed/sipp/uac_invite_wait_bye.xml").read_text()
    start = '<exec rtp_stream="[audio]"/>'
    assert start in wait_bye
    silent = wait_bye.replace(
        start, start + '</action></nop><pause milliseconds="1000"/>'
        '<nop><action><exec rtp_stream="pause"/>',
    )  # fmt: skip
    scenario = tmp_path / "uac_goes_silent.xml"
    scenario.write_text(silent)
    async with EngineSession(engine_config(kamailio, rtp_timeout_s=2)) as session:
        await session.registered()
        uac = sipp.start(
            SippOptions(
                scenario,
                remote=kamailio.address,
                service="aibot",
                audio=tones.get(440),
                recv_timeout_ms=15000,
            ),
            wait_ready=False,
        )
        ended = await session.wait(LegEnded, timeout_s=15.0)
        result = await finish(uac)
    assert ended.cause is EndCause.MEDIA_TIMEOUT, ended
    assert result.ok, result.describe()  # it got our BYE


async def test_cancel_before_answer(kamailio: Kamailio, sipp: SippFactory) -> None:
    async with EngineSession(engine_config(kamailio), auto_answer=False) as session:
        await session.registered()
        uac = sipp.start(
            SippOptions("uac_cancel", remote=kamailio.address, service="aibot"),
            wait_ready=False,
        )
        incoming = await session.wait(IncomingCall)
        ended = await session.wait(LegEnded)
        result = await finish(uac)
    # uac_cancel.xml expects the proxy's 200 (CANCEL) before our 487 (INVITE); Kamailio's
    # workers sometimes relay the 487 first, which the scenario counts as unexpected.
    assert result.ok or result.unexpected_codes == (487,), result.describe()
    assert ended.leg_id == incoming.leg_id and ended.cause is EndCause.CANCELLED
    assert session.of(LegAnswered) == []


@pytest.mark.parametrize("scenario", ["uac_dtmf_rfc4733", "uac_dtmf_info"])
async def test_dtmf_received(
    kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary, scenario: str
) -> None:
    async with EngineSession(engine_config(kamailio)) as session:
        await session.registered()
        uac = sipp.start(
            SippOptions(
                scenario,
                remote=kamailio.address,
                service="aibot",
                audio=tones.get(440),
                call_duration_ms=1000,
            ),
            wait_ready=False,
        )
        await session.wait(LegEnded, timeout_s=20.0)
        result = await finish(uac)
    assert result.ok, result.describe()
    digits = session.of(DtmfReceived)
    expected_method = "info" if scenario.endswith("info") else "rfc4733"
    assert "".join(d.digit for d in digits) in ("123#", "5#"), digits
    assert {d.method for d in digits} == {expected_method}, digits


async def test_far_end_hold_and_resume(
    kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary, tmp_path: Path
) -> None:
    async with EngineSession(engine_config(kamailio)) as session:
        await session.registered()
        uac = sipp.start(
            SippOptions(
                "uac_hold_resume", remote=kamailio.address, service="aibot", audio=tones.get(440)
            ),
            wait_ready=False,
        )
        ended = await session.wait(LegEnded, timeout_s=20.0)
        result = await finish(uac)
    assert result.ok, result.describe()  # both re-INVITEs answered 200 with SDP
    assert [h.on_hold for h in session.of(HoldChanged)] == [True, False]
    assert ended.cause is EndCause.REMOTE_HANGUP
    assert session.pump_errors == []


async def test_trunk_mode_admits_only_trusted_sources(
    sipp: SippFactory, tones: ToneLibrary
) -> None:
    cfg = engine_config(None, username=None, password=None, trusted_sources=("127.0.0.1",))
    async with EngineSession(cfg) as session:
        assert session.engine.registration is RegistrationState.UNREGISTERED
        options = SippOptions(
            "uac_invite_rtp",
            remote=cfg.listen,
            service="+15550002222",  # any called number: trunk mode takes them all
            audio=tones.get(440),
            call_duration_ms=1000,
        )
        trusted = await finish(sipp.start(options, wait_ready=False))
        untrusted = await finish(
            sipp.start(dataclasses.replace(options, host="127.0.0.2"), wait_ready=False)
        )
        await asyncio.sleep(0.2)
    assert trusted.ok, trusted.describe()
    incoming = session.of(IncomingCall)
    assert len(incoming) == 1 and incoming[0].to_user == "+15550002222"
    assert incoming[0].remote_addr.startswith("127.0.0.1:")  # the packet source
    # the requirement asks 403; baresip-python can only reject with 486 (see the report)
    expected = 486 if session.engine.name == "baresip" else 403
    assert untrusted.unexpected_codes == (expected,), untrusted.describe()
    assert len(session.of(LegEnded)) == 1


# ----- outbound -----


async def test_outbound_call_with_caller_id(
    kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary
) -> None:
    uas = sipp.start(SippOptions("uas_answer_rtp", audio=tones.get(440)))
    kamailio.set_static_route("uas", uas.uri)
    cfg = engine_config(kamailio, p_asserted_identity=True)
    async with EngineSession(cfg, tone_hz=1000) as session:
        await session.registered()
        leg = await session.engine.dial(
            DialRequest(target="uas", caller_id="+15550001111", display_name="ACME Support")
        )
        await session.wait(LegRinging, lambda e: e.leg_id == leg)
        await session.wait(LegAnswered, lambda e: e.leg_id == leg)
        await session.wait(MediaReady, lambda e: e.leg_id == leg)
        await asyncio.sleep(2.0)
        await session.engine.hangup(leg)
        ended = await session.wait(LegEnded, lambda e: e.leg_id == leg)
        result = await finish(uas)
    assert result.ok, result.describe()
    assert ended.cause is EndCause.LOCAL_HANGUP
    assert_tone(session.received_pcm(leg), 440.0, "callee audio in Python")
    invite = result.message_log().split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
    assert 'From: "ACME Support" <sip:+15550001111@' in invite, invite
    assert "P-Asserted-Identity: " in invite and "+15550001111" in invite, invite


@pytest.mark.parametrize(
    ("callee", "cause", "status"),
    [
        ("busy", EndCause.BUSY, 486),
        ("declines", EndCause.DECLINED, 603),
        ("unavailable", EndCause.UNAVAILABLE, 500),  # the proxy turns 503 into 500 (RFC 3261 16.7)
        ("nobody-here", EndCause.NOT_FOUND, 404),
        ("ringing", EndCause.NO_ANSWER, None),
    ],
)
async def test_outbound_failures(
    kamailio: Kamailio,
    sipp: SippFactory,
    tmp_path: Path,
    callee: str,
    cause: EndCause,
    status: int | None,
) -> None:
    finals = {"busy": None, "declines": "603 Decline", "unavailable": "503 Service Unavailable"}
    if callee in finals:
        scenario: str | Path = "uas_busy"
        if finals[callee] is not None:
            busy = (Path(__file__).parents[2] / "testbed/sipp/uas_busy.xml").read_text()
            scenario = tmp_path / f"uas_{callee}.xml"
            scenario.write_text(busy.replace("486 Busy Here", str(finals[callee])))
        kamailio.set_static_route(callee, sipp.start(SippOptions(scenario)).uri)
    elif callee == "ringing":
        kamailio.set_static_route(callee, sipp.start(SippOptions("uas_ring_no_answer")).uri)
    async with EngineSession(engine_config(kamailio)) as session:
        await session.registered()
        leg = await session.engine.dial(DialRequest(target=callee, timeout_s=2.0))
        ended = await session.wait(LegEnded, lambda e: e.leg_id == leg)
    assert (ended.cause, ended.status_code) == (cause, status), ended


async def test_outbound_remote_bye(
    kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary
) -> None:
    uas = sipp.start(SippOptions("uas_answer_bye", audio=tones.get(440), call_duration_ms=1500))
    kamailio.set_static_route("byer", uas.uri)
    async with EngineSession(engine_config(kamailio)) as session:
        await session.registered()
        leg = await session.engine.dial(DialRequest(target="byer"))
        ended = await session.wait(LegEnded, lambda e: e.leg_id == leg)
        result = await finish(uas)
    assert result.ok, result.describe()
    assert ended.cause is EndCause.REMOTE_HANGUP


async def test_send_dtmf(
    kamailio: Kamailio, sipp: SippFactory, rtp_capture: CaptureFactory, tones: ToneLibrary
) -> None:
    uas = sipp.start(SippOptions("uas_answer_rtp", audio=tones.get(440)))
    kamailio.set_static_route("uas", uas.uri)
    capture = rtp_capture.start([uas.media_port], port_span=4)
    async with EngineSession(engine_config(kamailio)) as session:
        await session.registered()
        leg = await session.engine.dial(DialRequest(target="uas"))
        await session.wait(MediaReady, lambda e: e.leg_id == leg)
        await session.engine.send_dtmf(leg, "123#")
        await session.engine.hangup(leg)
        await session.wait(LegEnded, lambda e: e.leg_id == leg)
        await finish(uas)
    wire = await asyncio.to_thread(capture.stop)
    to_uas = [s for s in wire.rtp_streams() if s.key.dst_port == uas.media_port]
    assert len(to_uas) == 1
    assert to_uas[0].dtmf_digits() == "123#"


async def test_blind_transfer(kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary) -> None:
    async with EngineSession(engine_config(kamailio)) as session:
        await session.registered()
        uac = sipp.start(
            SippOptions(
                "uac_accept_refer",
                remote=kamailio.address,
                service="aibot",
                audio=tones.get(440),
                recv_timeout_ms=15000,
            ),
            wait_ready=False,
        )
        ready = await session.wait(MediaReady)
        await asyncio.sleep(1.0)  # the caller's scenario waits for the REFER after its RTP starts
        await session.engine.transfer(ready.leg_id, "alice")
        outcome = await session.wait(TransferResult)
        ended = await session.wait(LegEnded)
        result = await finish(uac)
    assert result.ok, result.describe()
    assert (outcome.success, outcome.status_code) == (True, 200)
    assert ended.cause is EndCause.TRANSFERRED
    assert any(f"sip:alice@{kamailio.address}" in line for line in result.log_lines())
