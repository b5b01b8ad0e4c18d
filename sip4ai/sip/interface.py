"""The SIP side as the rest of sip4ai sees it: commands in, events out, audio frames both ways.

Nothing outside ``sip4ai/sip/`` imports a SIP library. A backend (baresip-python, later pjsua2)
implements ``SipEngine``; the call manager (``calls.py``/``app.py``) consumes its events and drives
calls through its commands. Every method is called on the asyncio loop; a backend hops to and from
its own threads internally and never touches asyncio objects from them.

A *leg* is one SIP dialog (inbound or outbound), named by an engine-assigned ``leg_id``.

Audio: PCM16 mono native-endian, ``MediaStream.rate_hz`` (8000 for G.711), 20 ms frames
(``frame_bytes``). Reads and writes never block.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


FRAME_MS = 20


class EndCause(enum.StrEnum):
    """Why a leg ended; also the call record's ``end_reason`` for SIP-side endings."""

    REMOTE_HANGUP = "remote_hangup"
    """The far end sent BYE."""
    LOCAL_HANGUP = "local_hangup"
    """sip4ai sent BYE (or CANCEL before answer)."""
    CANCELLED = "cancelled"
    """The caller cancelled an inbound call before it was answered."""
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    NOT_FOUND = "not_found"
    DECLINED = "declined"
    UNAVAILABLE = "service_unavailable"
    TRANSFERRED = "transferred"
    MEDIA_TIMEOUT = "media_timeout"
    ERROR = "error"


class RegistrationState(enum.StrEnum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RegistrationChanged:
    state: RegistrationState
    reason: str
    """Human-readable cause, e.g. ``200 OK``, ``403 Forbidden``, ``timeout``, ``DNS failure``."""
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A new inbound INVITE. The engine has already sent 180 Ringing (or will at once)."""

    leg_id: str
    from_user: str
    """User part of the From URI (the caller's number), may be empty."""
    from_display: str
    to_user: str
    remote_addr: str
    """Source address of the INVITE, ``host:port``."""


@dataclass(frozen=True, slots=True)
class LegRinging:
    """Outbound: the far end sent 180/183."""

    leg_id: str


@dataclass(frozen=True, slots=True)
class LegAnswered:
    """The dialog is established (200 OK sent or received and ACKed). Media may follow shortly."""

    leg_id: str


@dataclass(frozen=True, slots=True)
class MediaReady:
    """Audio can be read and written on ``engine.media(leg_id)``."""

    leg_id: str
    codec: str
    """``pcmu``, ``pcma`` or ``g722``."""
    rate_hz: int


@dataclass(frozen=True, slots=True)
class LegEnded:
    leg_id: str
    cause: EndCause
    status_code: int | None = None
    """The SIP final response code when the leg failed before answer (486, 404, ...)."""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    leg_id: str
    digit: str
    """One of ``0-9 * # A-D``."""
    method: str = "rfc4733"
    """``rfc4733`` or ``info``."""


@dataclass(frozen=True, slots=True)
class TransferResult:
    """The outcome of a REFER sent with ``transfer()``, from the 202 and the NOTIFY sipfrag."""

    leg_id: str
    success: bool
    status_code: int | None
    """The sipfrag status (200 on success) or the REFER's own error response."""


@dataclass(frozen=True, slots=True)
class HoldChanged:
    """The far end put the call on hold (re-INVITE sendonly/inactive) or resumed it."""

    leg_id: str
    on_hold: bool


SipEvent = (
    RegistrationChanged
    | IncomingCall
    | LegRinging
    | LegAnswered
    | MediaReady
    | LegEnded
    | DtmfReceived
    | TransferResult
    | HoldChanged
)


@dataclass(frozen=True, slots=True)
class DialRequest:
    target: str
    """E.164 number or user part (dialled at the configured domain) or a full ``sip:`` URI."""
    caller_id: str | None = None
    """From user (and P-Asserted-Identity when enabled)."""
    display_name: str | None = None
    timeout_s: float = 60.0
    """Give up (CANCEL, cause NO_ANSWER) when not answered within this time."""


@dataclass(frozen=True, slots=True)
class MediaStats:
    frames_in: int
    """Frames handed from the wire to Python."""
    frames_out: int
    frames_lost: int
    """Caller frames dropped between the wire and Python (ring overflow, jitter-buffer drops)."""
    tx_underruns: int
    """Times the library wanted audio to send and none was queued."""


class MediaStream(Protocol):
    """One leg's audio. Non-blocking; safe to call every 20 ms from the asyncio loop."""

    @property
    def rate_hz(self) -> int: ...

    @property
    def frame_bytes(self) -> int:
        """Bytes of PCM16 in one 20 ms frame (320 at 8 kHz)."""
        ...

    def read(self) -> list[bytes]:
        """All complete caller frames received since the last read, oldest first."""
        ...

    def write(self, frame: bytes) -> None:
        """Queue one frame for sending; the library's clock paces it onto the wire."""
        ...

    def queued_ms(self) -> int:
        """Audio written but not yet sent, in ms (the pacer keeps this small)."""
        ...

    def flush(self) -> None:
        """Drop everything queued for sending (barge-in)."""
        ...

    def stats(self) -> MediaStats: ...


class SipEngine(Protocol):
    """A SIP user agent: registration, calls, media. All methods run on the asyncio loop."""

    @property
    def registration(self) -> RegistrationState: ...

    @property
    def name(self) -> str:
        """Backend name for /status and logs, e.g. ``baresip``."""
        ...

    async def start(self) -> None:
        """Start the stack and begin registering (retrying with backoff while unreachable)."""
        ...

    async def stop(self) -> None:
        """Hang up every leg (BYE/CANCEL), unregister, release the stack. Idempotent."""
        ...

    def events(self) -> AsyncIterator[SipEvent]:
        """Events in the order they happened; ends after ``stop()``."""
        ...

    async def answer(self, leg_id: str) -> None:
        """Send 200 OK for an inbound leg."""
        ...

    async def reject(
        self, leg_id: str, status_code: int = 486, reason: str = "Busy Here"
    ) -> None: ...

    async def dial(self, request: DialRequest) -> str:
        """Send an INVITE; returns the new leg_id. Progress arrives as events."""
        ...

    async def hangup(self, leg_id: str) -> None:
        """BYE (or CANCEL/reject before answer). A LegEnded event follows. Idempotent."""
        ...

    async def send_dtmf(self, leg_id: str, digits: str) -> None: ...

    async def transfer(self, leg_id: str, target: str) -> None:
        """Blind transfer by REFER; the outcome arrives as a TransferResult event."""
        ...

    def media(self, leg_id: str) -> MediaStream | None:
        """The leg's audio once MediaReady was emitted, else None."""
        ...
