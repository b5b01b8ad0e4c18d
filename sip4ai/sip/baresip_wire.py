"""Facts about calls learnt from the SIP trace, keyed by Call-ID (loop side only).

The trace and the stack's events reach the loop through two different threads, so either can
come first: lookups that must not miss (the INVITE's source in trunk mode) wait briefly.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

from sip4ai.sip.sipmsg import TraceRecord, sdp_audio_codec


__all__ = ["WireFacts", "WireIndex"]

_MAX_CALLS_TRACKED = 4096
_DTMF_INFO_TYPES = ("application/dtmf-relay", "application/dtmf")
# An INFO digit is matched to a DTMF event reported within this window.
_INFO_MATCH_S = 2.0


@dataclass(slots=True)
class WireFacts:
    source: str = ""
    """``host:port`` the first INVITE came from (the packet source, not what Via claims)."""
    codec: str = ""
    """Codec of the SDP answer (``pcmu``, ``pcma``, ``g722``...)."""
    info_dtmf: collections.deque[float] = field(default_factory=collections.deque)
    source_known: asyncio.Event = field(default_factory=asyncio.Event)


class WireIndex:
    def __init__(self) -> None:
        self._calls: collections.OrderedDict[str, WireFacts] = collections.OrderedDict()

    def add(self, record: TraceRecord) -> None:
        if not record.call_id:
            return
        facts = self._facts(record.call_id)
        if record.received and record.method == "INVITE" and not facts.source:
            facts.source = record.source
            facts.source_known.set()
        elif record.received and record.method == "INFO":
            if record.content_type in _DTMF_INFO_TYPES:
                facts.info_dtmf.append(time.monotonic())
        elif 200 <= record.status < 300 and record.body:
            found = sdp_audio_codec(record.body)
            if found is not None:
                facts.codec = found[0]

    def get(self, call_id: str) -> WireFacts | None:
        return self._calls.get(call_id)

    async def wait_source(self, call_id: str, timeout_s: float) -> str:
        facts = self._facts(call_id)
        if not facts.source_known.is_set():
            try:
                await asyncio.wait_for(facts.source_known.wait(), timeout_s)
            except TimeoutError:
                return ""
        return facts.source

    def take_info_digit(self, call_id: str) -> bool:
        """Whether a SIP INFO digit for this call arrived recently (consumes it)."""
        facts = self._calls.get(call_id)
        if facts is None:
            return False
        now = time.monotonic()
        while facts.info_dtmf and now - facts.info_dtmf[0] > _INFO_MATCH_S:
            facts.info_dtmf.popleft()
        if facts.info_dtmf:
            facts.info_dtmf.popleft()
            return True
        return False

    def forget(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    def _facts(self, call_id: str) -> WireFacts:
        facts = self._calls.get(call_id)
        if facts is None:
            facts = self._calls[call_id] = WireFacts()
            while len(self._calls) > _MAX_CALLS_TRACKED:
                self._calls.popitem(last=False)
        return facts
