"""Pure mappings from SIP outcomes to sip4ai's causes: final status codes, the close-reason texts
of baresip 4.10 and registration failures. No I/O, no SIP library.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from sip4ai.sip.interface import EndCause


__all__ = [
    "LegOutcome",
    "RegistrationFailure",
    "RegistrationProblem",
    "cause_for_status",
    "classify_close",
    "classify_registration_failure",
    "split_status",
]

# The stack's exact texts (baresip 4.10 / baresip-python 0.5.2a3), matched verbatim.
CLOSE_TRANSFERRED = "Call transfered"  # sic: the stack's spelling
CLOSE_RTP_TIMEOUT = "rtp stream error"
CLOSE_LOCAL_TIMEOUT = "Local timeout"

_BUSY = frozenset({486, 600})
_NOT_FOUND = frozenset({404, 410, 484, 604})
_DECLINED = frozenset({603, 607, 608})
_NO_ANSWER = frozenset({408, 480, 487})
_UNAVAILABLE = frozenset({500, 502, 503, 504, 580})


def split_status(text: str) -> tuple[int | None, str]:
    """``"486 Busy Here"`` -> (486, "Busy Here"); transport errors give (None, text)."""
    head, _, tail = text.strip().partition(" ")
    if len(head) == 3 and head.isdigit() and head[0] in "3456":
        return int(head), tail
    return None, text.strip()


def cause_for_status(status: int) -> EndCause:
    """The cause for a final non-2xx response to an INVITE (RFC 3261 section 21)."""
    if status in _BUSY:
        return EndCause.BUSY
    if status in _NOT_FOUND:
        return EndCause.NOT_FOUND
    if status in _DECLINED:
        return EndCause.DECLINED
    if status in _NO_ANSWER:
        return EndCause.NO_ANSWER
    if status in _UNAVAILABLE:
        return EndCause.UNAVAILABLE
    return EndCause.ERROR


@dataclass(frozen=True, slots=True)
class LegOutcome:
    cause: EndCause
    status_code: int | None
    reason: str


def classify_close(
    text: str,
    *,
    inbound: bool,
    answered: bool,
    local_hangup: bool = False,
    no_answer_timeout: bool = False,
) -> LegOutcome:
    """Why a leg ended, from the stack's close text and what this side did.

    ``local_hangup``: sip4ai asked for BYE/CANCEL/reject; ``no_answer_timeout``: that request came
    from the dial timeout. The stack reports a remote BYE and an inbound CANCEL with the same
    text (``Connection reset by peer [104]``), so ``answered`` tells them apart.
    """
    text = text.strip()
    if text == CLOSE_TRANSFERRED:
        return LegOutcome(EndCause.TRANSFERRED, None, text)
    if no_answer_timeout and not answered:
        return LegOutcome(EndCause.NO_ANSWER, None, "no answer before the dial timeout")
    if local_hangup:
        return LegOutcome(EndCause.LOCAL_HANGUP, None, text)
    if text == CLOSE_RTP_TIMEOUT:
        return LegOutcome(EndCause.MEDIA_TIMEOUT, None, "no RTP received")
    status, phrase = split_status(text)
    if answered:
        if status is not None:
            return LegOutcome(EndCause.ERROR, status, text)
        return LegOutcome(EndCause.REMOTE_HANGUP, None, text)
    if inbound:
        if text == CLOSE_LOCAL_TIMEOUT:
            return LegOutcome(EndCause.NO_ANSWER, None, "not answered in time")
        return LegOutcome(EndCause.CANCELLED, status, text)
    if status is not None:
        return LegOutcome(cause_for_status(status), status, text)
    if text == CLOSE_LOCAL_TIMEOUT:
        return LegOutcome(EndCause.NO_ANSWER, None, text)
    return LegOutcome(EndCause.ERROR, None, text)


class RegistrationProblem(enum.StrEnum):
    CREDENTIALS = "credentials"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    DNS = "dns"
    UNREACHABLE = "unreachable"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class RegistrationFailure:
    problem: RegistrationProblem
    reason: str
    """Short, for ``RegistrationChanged.reason``: ``401 Unauthorized``, ``timeout``..."""
    status_code: int | None
    hint: str
    """What an operator should check; goes into the one log line for this failure."""


_ERRNO_SUFFIX = re.compile(r"\s*\[\d+\]$")


def classify_registration_failure(
    status: int | None, text: str, *, name_resolves: bool | None = None
) -> RegistrationFailure:
    """Classify a REGISTER failure.

    ``text`` is the stack's failure text (``401 Unauthorized``, ``Connection timed out [110]``,
    ``Destination address required [89]``...). ``name_resolves`` is the result of our own look-up
    of the registrar's host name (None when the host is an IP address or was not looked up): the
    stack reports a DNS timeout and a registrar timeout with the same text.
    """
    if status is None:
        status, _ = split_status(text)
    if status in (401, 407):
        return RegistrationFailure(
            RegistrationProblem.CREDENTIALS,
            text if text[:3].isdigit() else f"{status} Unauthorized",
            status,
            "wrong password or user name (check SIP_USERNAME, SIP_AUTH_ID, SIP_PASSWORD)",
        )
    if status == 403:
        return RegistrationFailure(
            RegistrationProblem.CREDENTIALS,
            text if text[:3].isdigit() else "403 Forbidden",
            status,
            "registrar refused the credentials or this account",
        )
    if status is not None:
        return RegistrationFailure(
            RegistrationProblem.REJECTED, text, status, "registrar rejected the REGISTER"
        )
    detail = _ERRNO_SUFFIX.sub("", text).lower()
    if name_resolves is False or "destination address required" in detail:
        return RegistrationFailure(
            RegistrationProblem.DNS,
            "DNS failure",
            None,
            "the registrar's host name does not resolve (check SIP_SERVER / SIP_DOMAIN)",
        )
    if "timed out" in detail or detail in ("timeout", "no answer"):
        return RegistrationFailure(
            RegistrationProblem.TIMEOUT,
            "timeout",
            None,
            "no answer from the registrar (down, wrong host/port, or blocked by a firewall)",
        )
    if "refused" in detail or "unreachable" in detail or "reset" in detail:
        return RegistrationFailure(
            RegistrationProblem.UNREACHABLE,
            "connection refused" if "refused" in detail else detail,
            None,
            "nothing accepts SIP at the registrar's address (check host, port and transport)",
        )
    return RegistrationFailure(RegistrationProblem.OTHER, detail or "failed", None, "")
