"""What the pjsua2 stack thread tells the engine (plain data, no library objects), and the pure
rules that turn it into sip4ai's causes. No SIP library, no I/O.

The stack's callbacks run on pjsua's worker thread (or on the command thread when a command
triggers them synchronously); each builds one of these notices from the library's objects and
posts it to the asyncio loop, so nothing on the loop ever holds a library object.
"""

from __future__ import annotations

from dataclasses import dataclass

from sip4ai.sip.causes import LegOutcome, cause_for_status
from sip4ai.sip.interface import EndCause


__all__ = [
    "CallAnswered",
    "CallEnded",
    "CallIncoming",
    "CallMedia",
    "CallRinging",
    "DtmfDigit",
    "PjNotice",
    "RegState",
    "TooManyCalls",
    "TransferStatus",
    "dtmf_method",
    "end_outcome",
    "registration_failure_input",
]

PJSUA_DTMF_METHOD_SIP_INFO = 1
TOO_MANY_CALLS_TEXT = "Unable to accept incoming call (too many calls)"
"""pjsua's log line (level 2) when it answers an INVITE with 486 because every call slot is
taken; it is the only trace of that rejection, no callback reaches the application."""


@dataclass(frozen=True, slots=True)
class RegState:
    code: int
    reason: str
    error: str
    """The library's text for a local failure (transport error, resolver), else empty."""
    from_wire: bool
    """The status came in a response from the registrar (not generated locally)."""
    expires_s: int
    renew: bool = True
    """False: the outcome of an un-REGISTER."""


@dataclass(frozen=True, slots=True)
class CallIncoming:
    leg_id: str
    remote_uri: str
    local_uri: str
    source: str
    """Packet source of the INVITE, ``host:port``."""


@dataclass(frozen=True, slots=True)
class CallRinging:
    leg_id: str


@dataclass(frozen=True, slots=True)
class CallAnswered:
    leg_id: str


@dataclass(frozen=True, slots=True)
class CallMedia:
    leg_id: str
    codec: str
    rate_hz: int
    on_hold: bool
    """The far end holds the call (its SDP says sendonly or inactive)."""


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    leg_id: str
    digit: str
    method: str


@dataclass(frozen=True, slots=True)
class TransferStatus:
    leg_id: str
    status_code: int
    final: bool


@dataclass(frozen=True, slots=True)
class CallEnded:
    leg_id: str
    status_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class TooManyCalls:
    """pjsua answered an INVITE with 486 itself: every call slot is in use."""


PjNotice = (
    RegState
    | CallIncoming
    | CallRinging
    | CallAnswered
    | CallMedia
    | DtmfDigit
    | TransferStatus
    | CallEnded
    | TooManyCalls
)


def dtmf_method(pj_method: int) -> str:
    return "info" if pj_method == PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"


def registration_failure_input(state: RegState) -> tuple[int | None, str]:
    """(status, text) for ``causes.classify_registration_failure``.

    pjsip reports local failures as responses it made up itself: a transaction timeout as
    ``408``, a transport error as ``503``; only the status of a real response is kept.
    """
    if state.from_wire:
        return state.code, f"{state.code} {state.reason}".strip()
    detail = state.error or state.reason
    lowered = detail.lower()
    if state.code == 408 or "timed out" in lowered or "timeout" in lowered:
        return None, "timeout"
    if "resolve" in lowered or "dns" in lowered or state.code == 502:
        return None, "Destination address required"
    return None, detail or f"{state.code}"


def end_outcome(
    *,
    inbound: bool,
    answered: bool,
    status_code: int,
    reason: str,
    local_hangup: bool = False,
    no_answer_timeout: bool = False,
    media_timeout: bool = False,
    transferred: bool = False,
) -> LegOutcome:
    """Why a leg ended, from its last SIP status and what this side did.

    pjsua reports the last status of the INVITE session: the final response for a failed
    outbound call, 487 for a cancelled inbound one, and the BYE's status after an answer.
    """
    text = f"{status_code} {reason}".strip() if status_code else reason
    if transferred:
        return LegOutcome(EndCause.TRANSFERRED, None, "transferred")
    if media_timeout:
        return LegOutcome(EndCause.MEDIA_TIMEOUT, None, "no RTP received")
    if no_answer_timeout and not answered:
        return LegOutcome(EndCause.NO_ANSWER, None, "no answer before the dial timeout")
    if local_hangup:
        return LegOutcome(EndCause.LOCAL_HANGUP, None, text)
    if answered:
        return LegOutcome(EndCause.REMOTE_HANGUP, None, text)
    if inbound:
        return LegOutcome(EndCause.CANCELLED, None, text)
    if status_code >= 300:
        return LegOutcome(cause_for_status(status_code), status_code, text)
    return LegOutcome(EndCause.ERROR, None, text or "call failed")
