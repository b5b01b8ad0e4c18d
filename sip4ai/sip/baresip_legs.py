"""Per-leg bookkeeping for the baresip engine: the leg record and the buffer of stack events
that arrive for a call before the engine knows the call (the ``dial()`` race).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from sip4ai.sip.baresip_facade import CallControl, Notice
from sip4ai.sip.baresip_media import BaresipMediaStream


__all__ = ["Leg", "OrphanBuffer"]


@dataclass(eq=False, slots=True)
class Leg:
    leg_id: str
    inbound: bool
    control: CallControl
    call_id: str = ""
    announced: bool = False
    """IncomingCall was emitted (outbound legs: always true); LegEnded only follows then."""
    ringing: bool = False
    answered: bool = False
    local_hangup: bool = False
    no_answer_timeout: bool = False
    ended: bool = False
    on_hold: bool = False
    transfer_pending: bool = False
    media: BaresipMediaStream | None = None
    media_deadline: float = 0.0
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    pending_dtmf: list[str] = field(default_factory=list)

    @property
    def handle(self) -> int:
        return self.control.handle

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class OrphanBuffer:
    """Stack events for call handles no leg has claimed yet, in arrival order.

    Runtime-wide, so nothing is lost between the INVITE going out and ``dial()`` returning.
    Handles that are never claimed (a call the stack created and closed on its own) are pruned
    after ``ttl_s`` once their CALL_CLOSED arrived, and the buffer is bounded.
    """

    def __init__(self, *, ttl_s: float = 30.0, max_handles: int = 2048) -> None:
        self._events: collections.OrderedDict[int, list[Notice]] = collections.OrderedDict()
        self._ttl_s = ttl_s
        self._max_handles = max_handles

    def __len__(self) -> int:
        return len(self._events)

    def add(self, notice: Notice) -> None:
        bucket = self._events.get(notice.call)
        if bucket is None:
            bucket = self._events[notice.call] = []
            while len(self._events) > self._max_handles:
                self._events.popitem(last=False)
        bucket.append(notice)
        if notice.kind == "CALL_CLOSED":
            asyncio.get_running_loop().call_later(self._ttl_s, self._drop, notice.call, bucket)

    def claim(self, handle: int) -> list[Notice]:
        return self._events.pop(handle, [])

    def _drop(self, handle: int, bucket: list[Notice]) -> None:
        if self._events.get(handle) is bucket:
            del self._events[handle]
