"""The pjsua2 backend's pure rules: end causes, registration failure input, DTMF method."""

from __future__ import annotations

import pytest

from sip4ai.sip.causes import RegistrationProblem, classify_registration_failure
from sip4ai.sip.interface import EndCause
from sip4ai.sip.pjsua2_events import (
    RegState,
    dtmf_method,
    end_outcome,
    registration_failure_input,
)


pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("status", "cause", "code"),
    [
        (486, EndCause.BUSY, 486),
        (603, EndCause.DECLINED, 603),
        (404, EndCause.NOT_FOUND, 404),
        (500, EndCause.UNAVAILABLE, 500),
        (408, EndCause.NO_ANSWER, 408),
        (488, EndCause.ERROR, 488),
    ],
)
def test_outbound_failure_before_answer(status: int, cause: EndCause, code: int) -> None:
    outcome = end_outcome(inbound=False, answered=False, status_code=status, reason="x")
    assert (outcome.cause, outcome.status_code) == (cause, code)


def test_outbound_without_final_status_is_an_error() -> None:
    outcome = end_outcome(inbound=False, answered=False, status_code=0, reason="")
    assert (outcome.cause, outcome.status_code) == (EndCause.ERROR, None)


def test_dial_timeout_wins_over_the_487_of_our_own_cancel() -> None:
    outcome = end_outcome(
        inbound=False,
        answered=False,
        status_code=487,
        reason="Request Terminated",
        local_hangup=True,
        no_answer_timeout=True,
    )
    assert (outcome.cause, outcome.status_code) == (EndCause.NO_ANSWER, None)


@pytest.mark.parametrize(
    ("flags", "cause"),
    [
        ({}, EndCause.REMOTE_HANGUP),
        ({"local_hangup": True}, EndCause.LOCAL_HANGUP),
        ({"local_hangup": True, "media_timeout": True}, EndCause.MEDIA_TIMEOUT),
        ({"local_hangup": True, "transferred": True}, EndCause.TRANSFERRED),
    ],
)
def test_after_answer(flags: dict[str, bool], cause: EndCause) -> None:
    outcome = end_outcome(inbound=True, answered=True, status_code=200, reason="OK", **flags)
    assert (outcome.cause, outcome.status_code) == (cause, None)


def test_inbound_cancelled_before_answer() -> None:
    outcome = end_outcome(
        inbound=True, answered=False, status_code=487, reason="Request Terminated"
    )
    assert (outcome.cause, outcome.status_code) == (EndCause.CANCELLED, None)
    assert outcome.reason == "487 Request Terminated"


def test_registrar_response_keeps_its_status() -> None:
    state = RegState(401, "Unauthorized", "credential failed to authenticate", True, 0)
    status, text = registration_failure_input(state)
    assert (status, text) == (401, "401 Unauthorized")
    verdict = classify_registration_failure(status, text)
    assert verdict.problem is RegistrationProblem.CREDENTIALS
    assert verdict.reason == "401 Unauthorized"


@pytest.mark.parametrize(
    ("state", "problem", "reason"),
    [
        (RegState(408, "Request Timeout", "", False, 0), RegistrationProblem.TIMEOUT, "timeout"),
        (
            RegState(503, "Service Unavailable", "Connection refused", False, 0),
            RegistrationProblem.UNREACHABLE,
            "connection refused",
        ),
        (
            RegState(502, "Bad Gateway", "gethostbyname() has returned error", False, 0),
            RegistrationProblem.DNS,
            "DNS failure",
        ),
    ],
)
def test_locally_generated_failures_lose_their_made_up_status(
    state: RegState, problem: RegistrationProblem, reason: str
) -> None:
    status, text = registration_failure_input(state)
    assert status is None
    verdict = classify_registration_failure(status, text)
    assert (verdict.problem, verdict.reason, verdict.status_code) == (problem, reason, None)


def test_dtmf_method() -> None:
    assert dtmf_method(0) == "rfc4733"
    assert dtmf_method(1) == "info"
