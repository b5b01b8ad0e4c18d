"""The composed App delivers signed lifecycle webhooks for real call state changes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sip4ai.app import App
from sip4ai.calls import CallStatus, Direction, new_call, transition
from sip4ai.config import Config, Secret, SipConfig, WebhookConfig
from sip4ai.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from sip4ai.sip.interface import EndCause
from sip4ai.store import CallStore
from tests.fakes.sip import FakeSipEngine


pytestmark = pytest.mark.component

SECRET = "whsec-test"


@dataclass
class Receiver:
    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        verify(
            SECRET,
            body,
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            now=time.time(),
        )
        self.events.append(json.loads(body))
        self.keys.append(request.headers["Idempotency-Key"])
        self.arrived.set()
        return web.Response(status=204)

    async def wait(self, count: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rx.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rx
    await runner.cleanup()


def config(tmp_path: Path, url: str) -> Config:
    return Config(
        api_port=0,
        data_dir=tmp_path,
        sip=SipConfig(username="aibot", password=Secret("pw"), server="127.0.0.1"),
        webhooks=WebhookConfig(event_webhook=url, secret=Secret(SECRET)),
    )


async def test_outbound_call_lifecycle_is_posted_in_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    engine = FakeSipEngine()
    app = App(
        config(tmp_path, receiver.url), engine_factory=lambda _: engine, conversation_factory=None
    )
    app.manager.ai_available = True
    await app.start()
    try:
        record = await app.manager.create_outbound("+61400000000", task="Confirm")
        await asyncio.wait_for(engine.dial_seen.wait(), 5)
        leg = engine.dialled[0][0]
        engine.remote_ringing(leg)
        engine.remote_answer(leg)
        engine.remote_end(leg, EndCause.REMOTE_HANGUP)
        await receiver.wait(4)
    finally:
        await app.stop()
    assert [e["event"] for e in receiver.events] == [
        "call.initiated",
        "call.ringing",
        "call.answered",
        "call.completed",
    ]
    assert {e["call_id"] for e in receiver.events} == {record.id}
    done = receiver.events[-1]["data"]
    assert done["end_reason"] == "remote_hangup"
    assert set(done) >= {"duration", "end_reason", "transcript", "functions_called"}
    assert len(set(receiver.keys)) == 4


async def test_call_left_active_by_a_crash_is_reported_failed(
    tmp_path: Path, receiver: Receiver
) -> None:
    store = CallStore(tmp_path / "sip4ai.sqlite3")
    await store.open()
    now = datetime.now(UTC)
    live = new_call(direction=Direction.INBOUND, target="+61400000009", provider="openai", now=now)
    await store.save(transition(replace(live), CallStatus.IN_PROGRESS, now))
    await store.close()
    app = App(config(tmp_path, receiver.url), engine_factory=None, conversation_factory=None)
    await app.start()
    try:
        await receiver.wait(1)
    finally:
        await app.stop()
    (event,) = receiver.events
    assert event["event"] == "call.failed" and event["call_id"] == live.id
    assert event["data"]["end_reason"] == "crash"
