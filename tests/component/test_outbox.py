"""The durable webhook outbox against a real local receiver (down, up, slow, failing)."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sip4ai.outbox import (
    Outbox,
    OutboxCounters,
    OutboxEvent,
    RetryPolicy,
    backoff_delay,
    classify_status,
)
from sip4ai.signing import (
    EVENT_HEADER,
    EVENT_ID_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    verify,
)
from tests.conftest import MS


pytestmark = pytest.mark.component

SECRET = "outbox-secret"
FAST = RetryPolicy(initial_backoff_s=20 * MS, max_backoff_s=100 * MS, attempt_timeout_s=2000 * MS)
WAIT_S = 5000 * MS


@dataclass
class Received:
    event_id: str
    call_id: str
    event: str
    seq: int


@dataclass
class Receiver:
    """A webhook receiver that deduplicates on Idempotency-Key, as the docs ask receivers to."""

    sock: socket.socket
    accepted: list[Received] = field(default_factory=list)
    """Events processed, in processing order (first delivery of each key only)."""
    duplicates: list[str] = field(default_factory=list)
    requests: int = 0
    bad: list[str] = field(default_factory=list)
    fail_next: dict[str, int] = field(default_factory=dict)
    """Event id -> how many more times to answer 503 for it."""
    stall: set[str] = field(default_factory=set)
    """Call ids whose requests wait for ``release``."""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    concurrent: int = 0
    max_concurrent: int = 0
    status_for: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self.changed.set()
        try:
            return await self._handle(request)
        finally:
            self.concurrent -= 1
            self.changed.set()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        try:
            verify(
                SECRET,
                body,
                headers.get(TIMESTAMP_HEADER),
                headers.get(SIGNATURE_HEADER),
                now=time.time(),
            )
        except SignatureError as exc:
            self.bad.append(str(exc))
            return web.Response(status=401)
        key = headers[IDEMPOTENCY_HEADER]
        if key != headers[EVENT_ID_HEADER]:
            self.bad.append("idempotency key differs from the event id")
        payload: dict[str, Any] = json.loads(body)
        if payload["event"] != headers[EVENT_HEADER]:
            self.bad.append("event header differs from the payload")
        if payload["call_id"] in self.stall:
            await self.release.wait()
        if self.fail_next.get(key, 0) > 0:
            self.fail_next[key] -= 1
            return web.Response(status=503)
        if key in self.status_for:
            return web.Response(status=self.status_for[key])
        if any(r.event_id == key for r in self.accepted):
            self.duplicates.append(key)
        else:
            self.accepted.append(
                Received(key, payload["call_id"], payload["event"], payload["data"]["seq"])
            )
        return web.Response(status=204)

    async def up(self) -> None:
        """Start listening on the reserved port (until now connections are refused)."""
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def order(self, call_id: str) -> list[int]:
        return [r.seq for r in self.accepted if r.call_id == call_id]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connection refused until up()
    r = Receiver(sock)
    try:
        yield r
    finally:
        r.release.set()
        if r.runner is not None:
            await r.runner.cleanup()
        sock.close()


class Watch(OutboxCounters):
    """Counters that wake waiters on every change."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def attempted(self, event: str, result: str) -> None:
        super().attempted(event, result)
        self.changed.set()

    def delivered(self, event: str, attempts: int, age_s: float) -> None:
        super().delivered(event, attempts, age_s)
        self.changed.set()

    def gave_up(self, event: str, reason: str) -> None:
        super().gave_up(event, reason)
        self.changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def event(url: str, call_id: str, seq: int, name: str = "transcript.update") -> OutboxEvent:
    body = {"event": name, "call_id": call_id, "timestamp": "2024-01-15T10:30:00Z"}
    body["data"] = {"seq": seq}  # type: ignore[assignment]
    return OutboxEvent(call_id=call_id, event=name, url=url, body=json.dumps(body).encode())


async def open_outbox(path: Path, watch: Watch | None = None, policy: RetryPolicy = FAST) -> Outbox:
    outbox = Outbox(path, secret=SECRET, policy=policy, observer=watch)
    await outbox.start()
    return outbox


def test_backoff_is_capped_exponential_with_jitter() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=60.0)
    assert [backoff_delay(n, policy, 0.999999) for n in (1, 2, 3, 4)] == pytest.approx(
        [1, 2, 4, 8], rel=1e-5
    )
    assert backoff_delay(1, policy, 0.0) == 0.5
    assert backoff_delay(30, policy, 0.0) == 30.0
    assert backoff_delay(10_000, policy, 0.999999) == pytest.approx(60.0)


def test_status_classification() -> None:
    assert [classify_status(s) for s in (200, 202, 204, 301, 404, 410, 429, 500)] == [
        "delivered",
        "delivered",
        "delivered",
        "retry",
        "retry",
        "give_up",
        "retry",
        "retry",
    ]


async def test_receiver_down_then_up_gets_everything_once_in_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    watch = Watch()
    outbox = await open_outbox(tmp_path / "webhooks.sqlite3", watch)
    calls = ["call-a", "call-b", "call-c"]
    sent = [event(receiver.url, call, seq) for seq in range(5) for call in calls]
    for item in sent:
        outbox.enqueue(item)  # synchronous: nothing awaited on the caller's side
    await watch.until(lambda: watch.attempts.get("connect", 0) >= 6)
    await receiver.up()
    await receiver.until(lambda: len(receiver.accepted) == len(sent))
    assert await outbox.drain(WAIT_S)
    assert await outbox.pending_count() == 0
    await outbox.close()

    assert receiver.bad == []
    assert receiver.duplicates == []
    assert sorted(r.event_id for r in receiver.accepted) == sorted(e.event_id for e in sent)
    for call in calls:
        assert receiver.order(call) == [0, 1, 2, 3, 4]
    assert watch.enqueued_total == watch.delivered_total == len(sent)
    assert watch.gave_up_total == 0


async def test_a_retried_event_holds_back_the_rest_of_its_call_only(
    tmp_path: Path, receiver: Receiver
) -> None:
    await receiver.up()
    watch = Watch()
    outbox = await open_outbox(tmp_path / "w.sqlite3", watch)
    first = event(receiver.url, "slowpoke", 0)
    receiver.fail_next[first.event_id] = 1_000
    outbox.enqueue(first)
    for seq in range(1, 4):
        outbox.enqueue(event(receiver.url, "slowpoke", seq))
    for seq in range(4):
        outbox.enqueue(event(receiver.url, "other", seq))
    await watch.until(
        lambda: watch.attempts.get("http_503", 0) >= 3 and len(receiver.order("other")) == 4
    )
    # The other call went through; nothing of the failing call overtook its first event.
    assert receiver.order("slowpoke") == []
    receiver.fail_next[first.event_id] = 0
    await receiver.until(lambda: len(receiver.accepted) == 8)
    await outbox.close()
    assert receiver.order("slowpoke") == [0, 1, 2, 3]
    assert receiver.order("other") == [0, 1, 2, 3]


async def test_restart_resends_pending_and_never_delivered_ones(
    tmp_path: Path, receiver: Receiver
) -> None:
    await receiver.up()
    path = tmp_path / "w.sqlite3"
    outbox = await open_outbox(path)
    events = [event(receiver.url, "c1", seq) for seq in range(6)]
    receiver.fail_next[events[3].event_id] = 1_000  # stuck: the receiver fails it for now
    for item in events:
        outbox.enqueue(item)
    await receiver.until(lambda: len(receiver.accepted) == 3 and receiver.requests >= 5)
    await outbox.close(grace_s=0)
    assert receiver.order("c1") == [0, 1, 2]

    with sqlite3.connect(path) as db:  # what survives on disk: exactly the undelivered ones
        rows = db.execute("SELECT event_id FROM webhook_outbox ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [e.event_id for e in events[3:]]

    receiver.fail_next.clear()
    reopened = await open_outbox(path)
    await receiver.until(lambda: len(receiver.accepted) == 6)
    assert await reopened.drain(WAIT_S)
    await reopened.close()
    assert receiver.order("c1") == [0, 1, 2, 3, 4, 5]
    assert receiver.duplicates == []
    assert receiver.bad == []


async def test_a_lost_answer_is_resent_with_the_same_key(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The receiver processed the event but the answer came too late: the retry carries the
    same Idempotency-Key, so the receiver processes it once."""
    await receiver.up()
    policy = RetryPolicy(
        initial_backoff_s=20 * MS, max_backoff_s=100 * MS, attempt_timeout_s=200 * MS
    )
    watch = Watch()
    outbox = await open_outbox(tmp_path / "w.sqlite3", watch, policy)
    receiver.stall.add("c1")
    item = event(receiver.url, "c1", 0)
    outbox.enqueue(item)
    await watch.until(lambda: watch.attempts.get("timeout", 0) >= 1)
    receiver.release.set()  # the stalled request now completes and is processed
    await watch.until(lambda: watch.delivered_total == 1)
    await outbox.close()
    assert [r.event_id for r in receiver.accepted] == [item.event_id]
    assert receiver.requests >= 2


async def test_calls_are_independent_and_concurrency_is_bounded(
    tmp_path: Path, receiver: Receiver
) -> None:
    await receiver.up()
    policy = RetryPolicy(
        initial_backoff_s=20 * MS, max_backoff_s=100 * MS, attempt_timeout_s=5.0, max_in_flight=2
    )
    outbox = await open_outbox(tmp_path / "w.sqlite3", policy=policy)
    receiver.stall.update({"stuck-1", "stuck-2"})
    for call in ("stuck-1", "stuck-2", "free"):
        for seq in range(3):
            outbox.enqueue(event(receiver.url, call, seq))
    await receiver.until(lambda: receiver.concurrent == 2)
    # Both slots are taken by the stalled calls: "free" waits for a slot, not behind their events.
    assert receiver.accepted == []
    receiver.release.set()
    await receiver.until(lambda: len(receiver.accepted) == 9)
    await outbox.close()
    assert receiver.max_concurrent == 2
    for call in ("stuck-1", "stuck-2", "free"):
        assert receiver.order(call) == [0, 1, 2]


async def test_many_calls_flow_in_parallel(tmp_path: Path, receiver: Receiver) -> None:
    await receiver.up()
    outbox = await open_outbox(tmp_path / "w.sqlite3")
    receiver.stall.add("blocked")
    outbox.enqueue(event(receiver.url, "blocked", 0))
    for call in range(10):
        for seq in range(3):
            outbox.enqueue(event(receiver.url, f"c{call}", seq))
    await receiver.until(lambda: len(receiver.accepted) == 30)  # while "blocked" still hangs
    receiver.release.set()
    await receiver.until(lambda: len(receiver.accepted) == 31)
    await outbox.close()
    assert receiver.max_concurrent > 1
    for call in range(10):
        assert receiver.order(f"c{call}") == [0, 1, 2]


async def test_gone_and_exhausted_events_are_given_up_and_the_call_moves_on(
    tmp_path: Path, receiver: Receiver
) -> None:
    await receiver.up()
    policy = RetryPolicy(
        initial_backoff_s=10 * MS, max_backoff_s=20 * MS, max_attempts=3, attempt_timeout_s=2.0
    )
    watch = Watch()
    path = tmp_path / "w.sqlite3"
    outbox = await open_outbox(path, watch, policy)
    gone, failing, fine = (event(receiver.url, "c", seq) for seq in range(3))
    receiver.status_for[gone.event_id] = 410
    receiver.fail_next[failing.event_id] = 1_000
    for item in (gone, failing, fine):
        outbox.enqueue(item)
    await receiver.until(lambda: len(receiver.accepted) == 1)
    await outbox.close()
    assert receiver.order("c") == [2]
    assert watch.gave_up_total == 2
    assert watch.attempts == {"http_410": 1, "http_503": 3, "2xx": 1}
    with sqlite3.connect(path) as db:
        dead = db.execute("SELECT event_id, attempts, last_error FROM webhook_outbox").fetchall()
    assert sorted(dead) == sorted(
        [(gone.event_id, 1, "http_410"), (failing.event_id, 3, "http_503")]
    )


async def test_enqueue_after_close_is_dropped_not_raised(tmp_path: Path) -> None:
    watch = Watch()
    outbox = await open_outbox(tmp_path / "w.sqlite3", watch)
    await outbox.close()
    await outbox.close()  # idempotent
    outbox.enqueue(event("http://127.0.0.1:9/x", "c", 0))
    assert watch.gave_up_total == 1


async def test_same_event_id_is_stored_once(tmp_path: Path, receiver: Receiver) -> None:
    await receiver.up()
    outbox = await open_outbox(tmp_path / "w.sqlite3")
    item = event(receiver.url, "c", 0)
    outbox.enqueue(item)
    outbox.enqueue(item)
    await receiver.until(lambda: len(receiver.accepted) == 1)
    assert await outbox.drain(WAIT_S)
    await outbox.close()
    assert receiver.requests == 1


async def test_a_down_destination_does_not_hold_up_another_one(
    tmp_path: Path, receiver: Receiver
) -> None:
    await receiver.up()
    watch = Watch()
    outbox = await open_outbox(tmp_path / "w.sqlite3", watch)
    with socket.socket() as down:  # the call's result_webhook, say, is not reachable
        down.bind(("127.0.0.1", 0))
        outbox.enqueue(event(f"http://127.0.0.1:{down.getsockname()[1]}/r", "c", 0))
        for seq in range(1, 4):
            outbox.enqueue(event(receiver.url, "c", seq))
        await receiver.until(lambda: len(receiver.accepted) == 3)
        await watch.until(lambda: watch.attempts.get("connect", 0) >= 1)
        await outbox.close(grace_s=0)
    assert receiver.order("c") == [1, 2, 3]
