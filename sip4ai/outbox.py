"""Durable outbox for lifecycle webhook events: SQLite (WAL) plus one delivery worker.

Guarantees
----------
* ``enqueue()`` is synchronous and returns at once: the row is written by the outbox's own
  SQLite thread (as in store.py), so neither the loop nor the audio path waits on disk.
* Events of one call are delivered **in the order they were enqueued**: only the oldest
  undelivered event of a call (its *head*) is ever in flight. The line is per call and
  destination URL, so a task result for a down ``result_webhook`` does not hold up the call's
  lifecycle events at another URL. Calls are independent of each other; at most
  ``RetryPolicy.max_in_flight`` requests run at once.
* Every attempt is a signed POST (see signing.py) with ``Idempotency-Key`` /
  ``X-Sip4ai-Event-Id`` set to the event's id, which never changes across retries and restarts.
  A 2xx answer deletes the row, so a delivered event is never sent again. An event whose 2xx
  was lost (crash or timeout after the receiver processed it) is sent again with the same key:
  receivers that skip keys they have seen get each event exactly once.
* Failures (connection refused, timeout, non-2xx) are retried with capped exponential backoff
  and jitter. After ``max_attempts`` attempts, or once the event is older than ``max_age_s``, or
  on ``410 Gone``, the event is given up: logged at ERROR, counted, kept as a *dead* row for
  ``DEAD_RETENTION_S`` for inspection, and the call's next event moves up.
* Undelivered rows survive restarts (kill -9 included: WAL with ``synchronous=NORMAL`` loses
  nothing on a process crash; only an OS crash or power loss can drop the last commits). The
  short window between ``enqueue()`` and the thread's commit (well under a millisecond on an idle
  disk) is not durable.

The outbox has its own SQLite file (``data_dir/webhooks.sqlite3``) rather than a table in the
call store's file: WAL allows one writer per database file, and outbox traffic (an insert per
transcript segment, a delete per delivery, backlog scans while a receiver is down) would
otherwise queue behind and in front of call-record writes. A separate file also versions,
vacuums and can be removed on its own. Nothing needs a transaction spanning both files: the
manager enqueues an event after the record it describes was saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

import aiohttp

from sip4ai import __version__
from sip4ai.signing import EVENT_HEADER, signature_headers


__all__ = [
    "Attempt",
    "NullObserver",
    "Outbox",
    "OutboxCounters",
    "OutboxEvent",
    "OutboxObserver",
    "RetryPolicy",
    "backoff_delay",
    "classify_status",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION: Final = 1
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    call_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhook_outbox_heads ON webhook_outbox (dead, call_id, url, seq);
"""
DEAD_RETENTION_S: Final = 7 * 86400.0
"""Given-up events stay in the file this long (for inspection), then are pruned at start."""
USER_AGENT: Final = f"sip4ai/{__version__}"
SCAN_ERROR_BACKOFF_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One webhook event ready to send: the exact JSON body and where it goes."""

    call_id: str
    event: str
    """The docs' event name (``call.completed``...)."""
    url: str
    body: bytes
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    """Stable across retries and restarts; sent as ``Idempotency-Key``."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_backoff_s: float = 1.0
    """Delay after the first failed attempt (before jitter); doubles per further failure."""
    max_backoff_s: float = 300.0
    """Cap of the delay between two attempts of one event."""
    max_attempts: int = 50
    """Attempts per event before it is given up (about 3.5 h with the defaults)."""
    max_age_s: float = 86400.0
    """An event still failing this long after it was enqueued is given up."""
    attempt_timeout_s: float = 10.0
    """Total time for one POST, connect to response headers."""
    max_in_flight: int = 8
    """Requests running at once (all calls together; one per call at most)."""

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s")
        if self.max_attempts < 1 or self.max_in_flight < 1:
            raise ValueError("max_attempts and max_in_flight must be at least 1")
        if self.max_age_s <= 0 or self.attempt_timeout_s <= 0:
            raise ValueError("max_age_s and attempt_timeout_s must be positive")


def backoff_delay(attempts: int, policy: RetryPolicy, rand: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt; ``rand`` in [0, 1).

    Capped exponential, with "equal jitter": between half and all of the capped delay, so
    events that failed together spread out but none is retried much sooner than planned.
    """
    exponent = min(max(attempts - 1, 0), 62)
    capped = min(policy.max_backoff_s, policy.initial_backoff_s * 2.0**exponent)
    return capped * (0.5 + 0.5 * rand)


Outcome = Literal["delivered", "retry", "give_up"]


def classify_status(status: int) -> Outcome:
    """2xx delivers; 410 Gone gives up; anything else (3xx, 4xx, 5xx) is retried.

    4xx is retried on purpose: a wrong path or secret (404/401) is fixed by the operator, and
    the events should arrive afterwards rather than be lost.
    """
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "give_up"
    return "retry"


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: Outcome
    result: str
    """Short label for logs and metrics: ``2xx``, ``http_503``, ``timeout``, ``connect``..."""


class OutboxObserver(Protocol):
    """Metric hook. All methods are called on the event loop and must not block."""

    def enqueued(self, event: str) -> None: ...

    def attempted(self, event: str, result: str) -> None: ...

    def delivered(self, event: str, attempts: int, age_s: float) -> None: ...

    def gave_up(self, event: str, reason: str) -> None: ...

    def backlog(self, pending: int) -> None: ...


class NullObserver:
    def enqueued(self, event: str) -> None:
        return None

    def attempted(self, event: str, result: str) -> None:
        return None

    def delivered(self, event: str, attempts: int, age_s: float) -> None:
        return None

    def gave_up(self, event: str, reason: str) -> None:
        return None

    def backlog(self, pending: int) -> None:
        return None


@dataclass
class OutboxCounters:
    """Plain counters implementing OutboxObserver (tests, /status)."""

    enqueued_total: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    delivered_total: int = 0
    gave_up_total: int = 0
    pending: int = 0

    def enqueued(self, event: str) -> None:
        self.enqueued_total += 1

    def attempted(self, event: str, result: str) -> None:
        self.attempts[result] = self.attempts.get(result, 0) + 1

    def delivered(self, event: str, attempts: int, age_s: float) -> None:
        self.delivered_total += 1

    def gave_up(self, event: str, reason: str) -> None:
        self.gave_up_total += 1

    def backlog(self, pending: int) -> None:
        self.pending = pending


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    event_id: str
    call_id: str
    event: str
    url: str
    body: bytes
    created_at: float
    attempts: int
    next_attempt_at: float

    @property
    def line(self) -> tuple[str, str]:
        """Events of one line are delivered one at a time, in order."""
        return (self.call_id, self.url)


class _OutboxFile:
    """The SQLite side. Every method runs on the outbox's own thread (never on the loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("webhook outbox is not open")
        return self._db

    def open(self, dead_before: float) -> tuple[int, int]:
        """Open (creating it if needed), prune old dead rows; (pruned, pending) counts."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db = db
        pruned = db.execute(
            "DELETE FROM webhook_outbox WHERE dead = 1 AND created_at < ?", (dead_before,)
        ).rowcount
        return int(pruned), self.pending()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def pending(self) -> int:
        return int(
            self.db.execute("SELECT count(*) FROM webhook_outbox WHERE dead = 0").fetchone()[0]
        )

    def insert(self, row: tuple[object, ...]) -> None:
        """INSERT OR IGNORE: enqueueing the same event id twice stores it once."""
        self.db.execute(
            "INSERT OR IGNORE INTO webhook_outbox "
            "(event_id, call_id, event, url, body, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    def heads(self, limit: int) -> tuple[list[_Row], int]:
        """Each line's (call and URL) oldest pending event, soonest due first; the number
        pending."""
        pending = self.pending()
        if pending == 0:
            return [], 0
        rows = self.db.execute(
            "SELECT o.seq, o.event_id, o.call_id, o.event, o.url, o.body, o.created_at,"
            " o.attempts, o.next_attempt_at FROM webhook_outbox o JOIN"
            " (SELECT MIN(seq) AS seq FROM webhook_outbox WHERE dead = 0 GROUP BY call_id, url) h"
            " ON o.seq = h.seq ORDER BY o.next_attempt_at, o.seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [_Row(*r) for r in rows], pending

    def delivered(self, seq: int) -> None:
        self.db.execute("DELETE FROM webhook_outbox WHERE seq = ?", (seq,))

    def dead(self, seq: int, attempts: int, error: str) -> None:
        self.db.execute(
            "UPDATE webhook_outbox SET dead = 1, attempts = ?, last_error = ? WHERE seq = ?",
            (attempts, error, seq),
        )

    def retry(self, seq: int, attempts: int, next_attempt_at: float, error: str) -> None:
        self.db.execute(
            "UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ?, last_error = ?"
            " WHERE seq = ?",
            (attempts, next_attempt_at, error, seq),
        )


class Outbox:
    """``await start()``, ``enqueue()`` from anywhere on the loop, ``await close()`` (bounded).

    ``session``: a shared aiohttp ClientSession (e.g. the app's webhook session); when None the
    outbox creates and closes its own. ``secret`` signs every request (None: unsigned).
    """

    def __init__(
        self,
        path: Path,
        *,
        secret: str | bytes | None,
        policy: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        observer: OutboxObserver | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.path = path
        self.policy = policy or RetryPolicy()
        self._file = _OutboxFile(path)
        self._secret = secret
        self._session = session
        self._own_session = session is None
        self._observer: OutboxObserver = observer or NullObserver()
        self._clock = clock
        self._rand = rand
        self._executor: ThreadPoolExecutor | None = None
        self._writes: set[asyncio.Future[None]] = set()
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        """(call id, url) -> the task delivering that line's head event."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sip4ai-outbox")
        pruned, pending = await self._run(self._file.open, self._clock() - DEAD_RETENTION_S)
        if pending:
            logger.info("= webhook outbox: %d undelivered event(s) from before, resending", pending)
        if pruned:
            logger.info("x webhook outbox: pruned %d given-up event(s)", pruned)
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        self._dispatcher = asyncio.create_task(self._dispatch(), name="webhook-outbox")

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is left to deliver; False if that did not happen in time."""
        if self._idle.is_set():
            return True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, grace_s: float = 2.0) -> None:
        """Deliver what can be delivered within ``grace_s``, then stop. Idempotent.

        Whatever is still pending stays in the file and is sent after the next start.
        """
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        try:
            if self._dispatcher is not None:
                await self.drain(grace_s)
            self._closing = True
            await self._stop_tasks()
            if self._writes:
                await asyncio.wait(set(self._writes))
            if self._own_session and self._session is not None:
                await self._session.close()
            self._session = None
            if self._executor is not None:
                # The queue runs dry first: writes of finished deliveries are kept.
                await self._run(self._file.close)
                self._executor.shutdown(wait=True)
                self._executor = None
            logger.info("x webhook outbox closed")
        finally:
            self._closed.set_result(None)

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self._dispatcher, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Not gather(): a cancellation of close() itself must propagate, not be swallowed.
            await asyncio.wait(tasks)
        self._dispatcher = None
        self._in_flight.clear()

    async def _run(self, fn: Callable[..., T], *args: Any, finish: bool = False) -> T:
        """Run ``fn(*args)`` on the outbox thread.

        ``finish``: the job runs to completion even if the awaiting task is cancelled (close()
        runs the thread's queue dry before closing the file), so a delivery already made is
        recorded as such.
        """
        if self._executor is None:
            raise RuntimeError("webhook outbox is not open")
        job = asyncio.wrap_future(self._executor.submit(fn, *args))
        return await (asyncio.shield(job) if finish else job)

    async def pending_count(self) -> int:
        return await self._run(self._file.pending)

    # ---- enqueue -------------------------------------------------------------------------

    def enqueue(self, event: OutboxEvent) -> None:
        """Queue ``event`` for delivery. Never blocks and never raises into the caller."""
        if self._closing or self._executor is None:
            logger.error("! webhook outbox not running: dropped %s %s", event.event, event.event_id)
            self._observer.gave_up(event.event, "not_running")
            return
        now = self._clock()
        row = (event.event_id, event.call_id, event.event, event.url, event.body, now, now)
        future = asyncio.wrap_future(self._executor.submit(self._file.insert, row))
        self._writes.add(future)
        self._idle.clear()
        future.add_done_callback(self._written)
        self._observer.enqueued(event.event)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._writes.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error("! webhook outbox: writing an event failed", exc_info=future.exception())
        self._wake.set()

    # ---- dispatcher ----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Start the due head events, then sleep until the next one is due or something changes."""
        limit = 2 * self.policy.max_in_flight + 1
        while True:
            self._wake.clear()
            try:
                heads, pending = await self._run(self._file.heads, limit)
            except Exception:
                logger.exception("! webhook outbox: reading the queue failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), SCAN_ERROR_BACKOFF_S)
                continue
            self._observer.backlog(pending)
            if pending == 0 and not self._in_flight and not self._writes:
                self._idle.set()
            now = self._clock()
            next_due: float | None = None
            for row in heads:
                if row.line in self._in_flight:
                    continue
                if row.next_attempt_at > now:
                    next_due = row.next_attempt_at if next_due is None else next_due
                    continue
                if len(self._in_flight) >= self.policy.max_in_flight:
                    next_due = None  # a finishing delivery wakes us
                    break
                self._in_flight[row.line] = asyncio.create_task(
                    self._deliver(row), name=f"webhook-outbox:{row.event_id}"
                )
            timeout = None if next_due is None else max(0.0, next_due - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # ---- delivery ------------------------------------------------------------------------

    async def _deliver(self, row: _Row) -> None:
        try:
            try:
                attempt = await self._post(row)
            except Exception as exc:  # a bug, not the network: keep the event, retry later
                logger.exception("! webhook %s %s: delivery failed", row.event, row.event_id)
                attempt = Attempt("retry", f"error:{type(exc).__name__}")
            self._observer.attempted(row.event, attempt.result)
            await self._record(row, attempt)
        except Exception:  # the file: the row stays as it was and is tried again
            logger.exception(
                "! webhook %s %s: recording the attempt failed", row.event, row.event_id
            )
        finally:
            self._in_flight.pop(row.line, None)
            self._wake.set()

    async def _post(self, row: _Row) -> Attempt:
        session = self._session
        assert session is not None
        headers = signature_headers(
            self._secret, row.body, now=self._clock(), event_id=row.event_id
        )
        headers["Content-Type"] = "application/json"
        headers[EVENT_HEADER] = row.event
        timeout = aiohttp.ClientTimeout(total=self.policy.attempt_timeout_s)
        try:
            async with session.post(
                row.url, data=row.body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
        except TimeoutError:
            return Attempt("retry", "timeout")
        except aiohttp.InvalidURL:
            return Attempt("give_up", "invalid_url")
        except aiohttp.ClientConnectionError:
            return Attempt("retry", "connect")
        except aiohttp.ClientError as exc:
            return Attempt("retry", f"client:{type(exc).__name__}")
        outcome = classify_status(status)
        return Attempt(outcome, "2xx" if outcome == "delivered" else f"http_{status}")

    async def _record(self, row: _Row, attempt: Attempt) -> None:
        attempts = row.attempts + 1
        now = self._clock()
        age_s = now - row.created_at
        if attempt.outcome == "delivered":
            await self._run(self._file.delivered, row.seq, finish=True)
            logger.debug(
                "> webhook %s %s delivered (attempt %d)", row.event, row.event_id, attempts
            )
            self._observer.delivered(row.event, attempts, age_s)
            return
        reason = None
        if attempt.outcome == "give_up":
            reason = attempt.result
        elif attempts >= self.policy.max_attempts:
            reason = "max_attempts"
        elif age_s >= self.policy.max_age_s:
            reason = "max_age"
        if reason is not None:
            await self._run(self._file.dead, row.seq, attempts, attempt.result, finish=True)
            logger.error(
                "! webhook %s %s for call %s given up after %d attempt(s) (%s, last: %s)",
                row.event,
                row.event_id,
                row.call_id,
                attempts,
                reason,
                attempt.result,
            )
            self._observer.gave_up(row.event, reason)
            return
        delay = backoff_delay(attempts, self.policy, self._rand())
        await self._run(
            self._file.retry, row.seq, attempts, now + delay, attempt.result, finish=True
        )
        log = logger.warning if attempts == 1 else logger.debug
        log(
            "! webhook %s %s: attempt %d failed (%s), retrying in %.1f s",
            row.event,
            row.event_id,
            attempts,
            attempt.result,
            delay,
        )
