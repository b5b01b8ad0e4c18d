from __future__ import annotations

import pytest

from sip4ai.sip.causes import (
    RegistrationProblem,
    cause_for_status,
    classify_close,
    classify_registration_failure,
    split_status,
)
from sip4ai.sip.interface import EndCause


pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        (486, EndCause.BUSY),
        (600, EndCause.BUSY),
        (404, EndCause.NOT_FOUND),
        (484, EndCause.NOT_FOUND),
        (604, EndCause.NOT_FOUND),
        (603, EndCause.DECLINED),
        (408, EndCause.NO_ANSWER),
        (480, EndCause.NO_ANSWER),
        (487, EndCause.NO_ANSWER),
        (503, EndCause.UNAVAILABLE),
        (500, EndCause.UNAVAILABLE),
        (403, EndCause.ERROR),
        (488, EndCause.ERROR),
    ],
)
def test_cause_for_status(status: int, cause: EndCause) -> None:
    assert cause_for_status(status) is cause


def test_split_status() -> None:
    assert split_status("486 Busy Here") == (486, "Busy Here")
    assert split_status("Connection timed out [110]") == (None, "Connection timed out [110]")
    assert split_status("200 OK") == (None, "200 OK")  # not a failure status


# The stack's own close texts, as observed with baresip 4.10.
REMOTE_BYE = "Connection reset by peer [104]"


@pytest.mark.parametrize(
    ("text", "kwargs", "cause", "status"),
    [
        (REMOTE_BYE, {"inbound": True, "answered": True}, EndCause.REMOTE_HANGUP, None),
        (REMOTE_BYE, {"inbound": True, "answered": False}, EndCause.CANCELLED, None),
        (
            "Rejected by user",
            {"inbound": False, "answered": True, "local_hangup": True},
            EndCause.LOCAL_HANGUP,
            None,
        ),
        (
            "Busy Here",
            {"inbound": True, "answered": False, "local_hangup": True},
            EndCause.LOCAL_HANGUP,
            None,
        ),
        ("486 Busy Here", {"inbound": False, "answered": False}, EndCause.BUSY, 486),
        ("404 Not Found", {"inbound": False, "answered": False}, EndCause.NOT_FOUND, 404),
        ("603 Decline", {"inbound": False, "answered": False}, EndCause.DECLINED, 603),
        (
            "503 Service Unavailable",
            {"inbound": False, "answered": False},
            EndCause.UNAVAILABLE,
            503,
        ),
        (
            "Rejected by user",
            {"inbound": False, "answered": False, "local_hangup": True, "no_answer_timeout": True},
            EndCause.NO_ANSWER,
            None,
        ),
        ("Call transfered", {"inbound": True, "answered": True}, EndCause.TRANSFERRED, None),
        ("rtp stream error", {"inbound": True, "answered": True}, EndCause.MEDIA_TIMEOUT, None),
        ("Local timeout", {"inbound": True, "answered": False}, EndCause.NO_ANSWER, None),
        ("Connection refused [111]", {"inbound": False, "answered": False}, EndCause.ERROR, None),
    ],
)
def test_classify_close(
    text: str, kwargs: dict[str, bool], cause: EndCause, status: int | None
) -> None:
    outcome = classify_close(text, **kwargs)
    assert outcome.cause is cause
    assert outcome.status_code == status


@pytest.mark.parametrize(
    ("status", "text", "resolves", "problem", "reason"),
    [
        (401, "401 Unauthorized", None, RegistrationProblem.CREDENTIALS, "401 Unauthorized"),
        (
            None,
            "407 Proxy Authentication Required",
            None,
            RegistrationProblem.CREDENTIALS,
            "407 Proxy Authentication Required",
        ),
        (403, "403 Forbidden", None, RegistrationProblem.CREDENTIALS, "403 Forbidden"),
        (404, "404 Not Found", None, RegistrationProblem.REJECTED, "404 Not Found"),
        (None, "Connection timed out [110]", None, RegistrationProblem.TIMEOUT, "timeout"),
        (None, "timeout", None, RegistrationProblem.TIMEOUT, "timeout"),
        (None, "Connection timed out [110]", False, RegistrationProblem.DNS, "DNS failure"),
        (None, "Destination address required [89]", None, RegistrationProblem.DNS, "DNS failure"),
        (
            None,
            "Connection refused [111]",
            None,
            RegistrationProblem.UNREACHABLE,
            "connection refused",
        ),
        (
            None,
            "Protocol not supported [93]",
            None,
            RegistrationProblem.OTHER,
            "protocol not supported",
        ),
    ],
)
def test_classify_registration_failure(
    status: int | None, text: str, resolves: bool | None, problem: RegistrationProblem, reason: str
) -> None:
    verdict = classify_registration_failure(status, text, name_resolves=resolves)
    assert verdict.problem is problem
    assert verdict.reason == reason
    if problem in (
        RegistrationProblem.CREDENTIALS,
        RegistrationProblem.DNS,
        RegistrationProblem.TIMEOUT,
    ):
        assert verdict.hint
