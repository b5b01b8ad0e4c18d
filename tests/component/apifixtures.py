"""Shared set-up for API component tests: a real CallManager, SQLite store and fake SIP engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from sip4ai.api import create_app
from sip4ai.manager import CallManager
from sip4ai.metrics import Metrics
from sip4ai.store import CallStore
from tests.fakes.sip import FakeSipEngine


@dataclass
class Stack:
    app: web.Application
    manager: CallManager
    engine: FakeSipEngine | None
    store: CallStore
    metrics: Metrics
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on every persisted call change; tests wait on it instead of sleeping."""

    async def leg_of(self, call_id: str) -> str:
        """The SIP leg of an outbound call, once the manager has dialled it."""
        await self.until(lambda: self.manager.active[call_id].leg_id is not None)
        leg = self.manager.active[call_id].leg_id
        assert leg is not None
        return leg

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
        """Wait until ``predicate()`` holds, re-checking on every call change (bounded)."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                # A short re-check also covers state that changes without a persisted event
                # (a leg id assigned after dial() returns).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.01)


@asynccontextmanager
async def api_stack(
    tmp_path: Path, *, token: str | None = None, with_sip: bool = True, max_calls: int = 100
) -> AsyncIterator[Stack]:
    store = CallStore(tmp_path / "calls.sqlite3")
    await store.open()
    metrics = Metrics(engine="fake")
    engine = FakeSipEngine() if with_sip else None
    manager = CallManager(
        store=store, metrics=metrics, engine=engine, default_provider="openai", max_calls=max_calls
    )
    await manager.start()
    app = create_app(manager, metrics, token=token, info={"mode": "inbound", "sip_engine": "fake"})
    events = asyncio.create_task(manager.run(), name="sip-events")
    if engine is not None:
        await engine.start()
    stack = Stack(app, manager, engine, store, metrics)
    manager.subscribe(lambda _record, _event: stack.changed.set())
    try:
        yield stack
    finally:
        await manager.shutdown()
        if engine is not None:
            await engine.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await events
        await store.close()
