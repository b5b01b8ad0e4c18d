"""Live call events for Server-Sent Events clients: the same payloads as the webhooks."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from sip4ai.calls import CallRecord, utc_now
from sip4ai.webhooks import build_payload


QUEUE_LIMIT = 1000
"""A client this far behind is dropped rather than letting memory grow."""


class LiveEvents:
    """A manager listener fanning each call's events out to its SSE subscribers."""

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[asyncio.Queue[dict[str, Any] | None]]] = (
            defaultdict(set)
        )

    def subscribe(self, call_id: str) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers[call_id].add(queue)
        return queue

    def unsubscribe(self, call_id: str, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        queues = self._subscribers.get(call_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[call_id]

    def on_call_event(self, record: CallRecord, manager_event: str) -> None:
        queues = self._subscribers.get(record.id)
        if not queues:
            return
        payload = build_payload(record, manager_event, utc_now())
        final = not record.status.active
        for queue in list(queues):
            try:
                if payload is not None:
                    queue.put_nowait(payload)
                if final:
                    queue.put_nowait(None)  # end of stream
            except asyncio.QueueFull:
                queues.discard(queue)
