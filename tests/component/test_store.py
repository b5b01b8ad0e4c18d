from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sip4ai.calls import (
    CallStatus,
    Direction,
    FunctionCallRecord,
    add_function_call,
    add_transcript,
    new_call,
    switch_provider,
    transition,
)
from sip4ai.manager import CallManager
from sip4ai.metrics import Metrics
from sip4ai.store import CallStore


pytestmark = pytest.mark.component

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


async def test_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "data" / "calls.sqlite3"
    store = CallStore(path)
    await store.open()
    record = new_call(
        direction=Direction.OUTBOUND,
        target="+61400000000",
        provider="openai",
        now=T0,
        task="Confirm",
        functions=({"name": "f", "webhook": "https://x/y"},),
    )
    record = transition(record, CallStatus.IN_PROGRESS, T0 + timedelta(seconds=2))
    record = add_transcript(record, "ai", "Hello", T0 + timedelta(seconds=2.5))
    record = add_transcript(record, "user", "Hi", T0 + timedelta(seconds=4))
    record = add_function_call(record, FunctionCallRecord("f", {"a": 1}, {"ok": True}))
    record = switch_provider(record, "openai", None, T0 + timedelta(seconds=2))
    record = switch_provider(record, "gemini", "openai: 1011", T0 + timedelta(seconds=30))
    record = transition(
        record, CallStatus.COMPLETED, T0 + timedelta(seconds=62), reason="remote_hangup"
    )
    await store.save(record)
    await store.close()

    reopened = CallStore(path)
    await reopened.open()
    loaded = await reopened.get(record.id)
    await reopened.close()
    assert loaded == record
    assert loaded.duration == 60


async def test_wal_mode_on_disk(tmp_path: Path) -> None:
    store = CallStore(tmp_path / "calls.sqlite3")
    await store.open()
    await store.close()
    db = sqlite3.connect(tmp_path / "calls.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


async def test_calls_active_at_a_crash_are_marked_failed(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite3"
    store = CallStore(path)
    await store.open()
    live = new_call(direction=Direction.INBOUND, target="+61400000001", provider="openai", now=T0)
    live = transition(live, CallStatus.IN_PROGRESS, T0)
    done = transition(
        new_call(direction=Direction.INBOUND, target="+61400000002", provider="openai", now=T0),
        CallStatus.FAILED,
        T0,
        reason="busy",
    )
    await store.save(live)
    await store.save(done)
    # No close(): the process "died" here. A new process opens the same file.
    store2 = CallStore(path)
    await store2.open()
    manager = CallManager(store=store2, metrics=Metrics(), engine=None, default_provider="openai")
    await manager.start()
    crashed = await store2.get(live.id)
    untouched = await store2.get(done.id)
    assert crashed is not None and crashed.status is CallStatus.FAILED
    assert crashed.end_reason == "crash" and crashed.ended_at is not None
    assert untouched == done
    await store2.close()
    await store.close()


async def test_list_is_newest_first_with_filter(tmp_path: Path) -> None:
    store = CallStore(tmp_path / "calls.sqlite3")
    await store.open()
    ids = []
    for i in range(7):
        record = new_call(
            direction=Direction.OUTBOUND,
            target="+61400000000",
            provider="openai",
            now=T0 + timedelta(seconds=i),
        )
        if i % 2:
            record = transition(record, CallStatus.FAILED, T0, reason="busy")
        await store.save(record)
        ids.append(record.id)
    page, total = await store.list_page(limit=3, offset=1)
    assert total == 7
    assert [r.id for r in page] == [ids[5], ids[4], ids[3]]
    failed, total_failed = await store.list_page(limit=10, offset=0, status=CallStatus.FAILED)
    assert total_failed == 3 and [r.id for r in failed] == [ids[5], ids[3], ids[1]]
    await store.close()
