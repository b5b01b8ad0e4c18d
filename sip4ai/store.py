"""Call history in SQLite (WAL), off the event loop.

All SQLite work runs on one dedicated thread, so the loop (and the audio path on it) never waits
on disk I/O, and the connection is only ever used from that thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sip4ai.calls import (
    CallRecord,
    CallStatus,
    Direction,
    FunctionCallRecord,
    ProviderSegment,
    TranscriptEntry,
    transition,
)


logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    direction TEXT NOT NULL,
    target TEXT NOT NULL,
    provider TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    answered_at TEXT,
    ended_at TEXT,
    end_reason TEXT,
    sip_status INTEGER,
    transcript TEXT NOT NULL DEFAULT '[]',
    functions_called TEXT NOT NULL DEFAULT '[]',
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS calls_created ON calls (created_at DESC, id);
CREATE INDEX IF NOT EXISTS calls_status ON calls (status, created_at DESC);
"""

COLUMNS = (
    "id, direction, target, provider, status, created_at, answered_at, ended_at, end_reason,"
    " sip_status, transcript, functions_called, details"
)

ACTIVE = tuple(s.value for s in CallStatus if s.active)


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _row(record: CallRecord) -> tuple[Any, ...]:
    details = {
        "task": record.task,
        "instructions": record.instructions,
        "caller_id": record.caller_id,
        "max_duration_seconds": record.max_duration_seconds,
        "event_webhook": record.event_webhook,
        "functions": list(record.functions),
        "extra": dict(record.extra),
        "providers": [segment.to_json() for segment in record.providers],
    }
    return (
        record.id,
        record.direction.value,
        record.target,
        record.provider,
        record.status.value,
        _ts(record.created_at),
        _ts(record.answered_at),
        _ts(record.ended_at),
        record.end_reason,
        record.sip_status,
        json.dumps([e.to_json() for e in record.transcript]),
        json.dumps([f.to_json() for f in record.functions_called]),
        json.dumps(details),
    )


def _record(row: sqlite3.Row) -> CallRecord:
    details: Mapping[str, Any] = json.loads(row["details"])
    created = _parse_ts(row["created_at"])
    assert created is not None  # NOT NULL column
    return CallRecord(
        id=row["id"],
        direction=Direction(row["direction"]),
        target=row["target"],
        provider=row["provider"],
        created_at=created,
        status=CallStatus(row["status"]),
        answered_at=_parse_ts(row["answered_at"]),
        ended_at=_parse_ts(row["ended_at"]),
        end_reason=row["end_reason"],
        sip_status=row["sip_status"],
        transcript=tuple(
            TranscriptEntry(e["speaker"], e["text"], float(e["timestamp"]))
            for e in json.loads(row["transcript"])
        ),
        functions_called=tuple(
            FunctionCallRecord(f["name"], f["arguments"], f["result"])
            for f in json.loads(row["functions_called"])
        ),
        task=details.get("task"),
        instructions=details.get("instructions"),
        caller_id=details.get("caller_id"),
        max_duration_seconds=int(details.get("max_duration_seconds", 300)),
        event_webhook=details.get("event_webhook"),
        functions=tuple(details.get("functions", ())),
        extra=details.get("extra", {}),
        providers=tuple(ProviderSegment.from_json(p) for p in details.get("providers", ())),
    )


class CallStore:
    """Persistent call records. Open with ``await store.open()``; close with ``await close()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._db is None:
            raise RuntimeError("call store is not open")
        db = self._db
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, db)

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sip4ai-store")
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._executor, self._connect)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return db

    async def close(self) -> None:
        if self._db is not None and self._executor is not None:
            db = self._db
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
            self._db = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def save(self, record: CallRecord) -> None:
        row = _row(record)
        await self._run(
            lambda db: db.execute(
                f"INSERT OR REPLACE INTO calls ({COLUMNS}) VALUES ({','.join('?' * len(row))})", row
            )
        )

    async def get(self, call_id: str) -> CallRecord | None:
        def query(db: sqlite3.Connection) -> sqlite3.Row | None:
            row: sqlite3.Row | None = db.execute(
                f"SELECT {COLUMNS} FROM calls WHERE id = ?", (call_id,)
            ).fetchone()
            return row

        row = await self._run(query)
        return _record(row) if row is not None else None

    async def list_page(
        self, *, limit: int, offset: int, status: CallStatus | None = None
    ) -> tuple[list[CallRecord], int]:
        """A page of calls, newest first, and the total number matching the filter."""

        def query(db: sqlite3.Connection) -> tuple[list[sqlite3.Row], int]:
            where, args = ("WHERE status = ?", (status.value,)) if status else ("", ())
            total = int(db.execute(f"SELECT count(*) FROM calls {where}", args).fetchone()[0])
            rows = db.execute(
                f"SELECT {COLUMNS} FROM calls {where} "
                "ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            return rows, total

        rows, total = await self._run(query)
        return [_record(r) for r in rows], total

    async def mark_orphans_failed(self, now: datetime) -> list[CallRecord]:
        """Calls left active by a crash (the process died mid-call) end as failed, reason crash."""

        def fix(db: sqlite3.Connection) -> list[sqlite3.Row]:
            marks = ",".join("?" * len(ACTIVE))
            rows: list[sqlite3.Row] = db.execute(
                f"SELECT {COLUMNS} FROM calls WHERE status IN ({marks})", ACTIVE
            ).fetchall()
            return rows

        orphans = [
            transition(_record(r), CallStatus.FAILED, now, reason="crash")
            for r in await self._run(fix)
        ]
        for record in orphans:
            await self.save(record)
        if orphans:
            logger.warning(
                "! %d call(s) were active when sip4ai last stopped: marked failed", len(orphans)
            )
        return orphans
