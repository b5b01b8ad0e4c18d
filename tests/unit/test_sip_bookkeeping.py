"""Pure-ish helpers of the baresip engine: backoff, the orphan buffer, the wire index."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import pytest

from sip4ai.sip.baresip_facade import Notice
from sip4ai.sip.baresip_legs import OrphanBuffer
from sip4ai.sip.baresip_registration import Backoff
from sip4ai.sip.baresip_wire import WireIndex
from sip4ai.sip.sipmsg import TraceRecord


pytestmark = pytest.mark.unit


def test_backoff() -> None:
    backoff = Backoff(first_s=2.0, factor=2.0, max_s=60.0, jitter=0.2)
    assert [backoff.delay(n, 0.5) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(0, 0.0) == pytest.approx(1.6)
    assert backoff.delay(10, 0.999999) == pytest.approx(72.0, rel=1e-4)
    assert backoff.delay(10_000, 0.5) == 60
    with pytest.raises(ValueError):
        Backoff(first_s=0)
    with pytest.raises(ValueError):
        Backoff(first_s=10, max_s=5)


def notice(kind: str, call: int, headers: Mapping[str, str] | None = None) -> Notice:
    return Notice(kind, call, 1, "", "cid", headers or {}, None, raw=None)  # type: ignore[arg-type]


async def test_orphans_are_kept_in_order_until_claimed() -> None:
    buffer = OrphanBuffer(ttl_s=0.05, max_handles=2)
    for kind in ("CALL_OUTGOING", "CALL_RINGING", "CALL_ESTABLISHED"):
        buffer.add(notice(kind, 7))
    assert [n.kind for n in buffer.claim(7)] == [
        "CALL_OUTGOING",
        "CALL_RINGING",
        "CALL_ESTABLISHED",
    ]
    assert buffer.claim(7) == []


async def test_orphans_are_bounded_and_expire_after_close() -> None:
    buffer = OrphanBuffer(ttl_s=0.05, max_handles=2)
    for handle in (1, 2, 3):
        buffer.add(notice("CALL_OUTGOING", handle))
    assert len(buffer) == 2 and buffer.claim(1) == []  # the oldest handle was dropped
    buffer.add(notice("CALL_CLOSED", 2))
    await asyncio.sleep(0.1)
    assert buffer.claim(2) == [] and len(buffer.claim(3)) == 1


def record(**fields: object) -> TraceRecord:
    base = TraceRecord(
        received=True,
        transport="udp",
        source="192.0.2.1:5060",
        destination="127.0.0.1:5070",
        method="",
        status=0,
        call_id="c1",
        cseq_method="",
        content_type="",
        body="",
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


async def test_wire_index_source_codec_and_info_dtmf() -> None:
    wire = WireIndex()
    waiter = asyncio.create_task(wire.wait_source("c1", 1.0))
    await asyncio.sleep(0)
    wire.add(record(method="INVITE", cseq_method="INVITE"))
    assert await waiter == "192.0.2.1:5060"
    wire.add(record(method="INVITE", source="198.51.100.9:5060"))  # a re-INVITE: first wins
    wire.add(
        record(
            received=False,
            status=200,
            cseq_method="INVITE",
            content_type="application/sdp",
            body="m=audio 4000 RTP/AVP 8 101\r\n",
        )  # fmt: skip
    )
    facts = wire.get("c1")
    assert facts is not None and facts.source == "192.0.2.1:5060" and facts.codec == "pcma"
    assert not wire.take_info_digit("c1")
    wire.add(record(method="INFO", content_type="application/dtmf-relay"))
    wire.add(record(method="INFO", content_type="application/pidf+xml"))
    assert wire.take_info_digit("c1") and not wire.take_info_digit("c1")
    assert await wire.wait_source("unknown", 0.01) == ""
    wire.forget("c1")
    assert wire.get("c1") is None
