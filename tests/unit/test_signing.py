from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from sip4ai import signing
from sip4ai.signing import (
    EVENT_ID_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    sign,
    signature_headers,
    verify,
)


pytestmark = pytest.mark.unit

SECRET = "whsec_test_secret"
TS = 1736937127
BODY = b'{"event":"call.completed","call_id":"abc"}'
# Computed independently: printf '%s' "$TS.$BODY" | openssl dgst -sha256 -hmac "$SECRET"
BODY_SIG = "1ad2ddb35feaee83ee43d2c9100ee843bf17bb38fe678fd281300ef090529987"
QUERY = b"date=2024-01-16&time=14%3A00"
QUERY_SIG = "fca4bfbd9f8c1c445556a1b5437ac94d2d5409d3fbac55410452ac500998fdc1"
# key "k", timestamp 1700000000, empty body
EMPTY_SIG = "5c2999a43333a6877f49c8003f235c4f6de40f85b1b7414b70bd470a8db53d97"


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "expected"),
    [
        (SECRET, TS, BODY, BODY_SIG),
        (SECRET, TS, QUERY, QUERY_SIG),
        ("k", 1700000000, b"", EMPTY_SIG),
        (SECRET.encode(), TS, BODY, BODY_SIG),
    ],
)
def test_known_vectors(secret: str | bytes, timestamp: int, body: bytes, expected: str) -> None:
    assert sign(secret, timestamp, body) == expected


def test_headers_carry_timestamp_signature_and_event_id() -> None:
    headers = signature_headers(SECRET, BODY, now=TS + 0.9, event_id="ev-1")
    assert headers == {
        TIMESTAMP_HEADER: str(TS),
        SIGNATURE_HEADER: f"v1={BODY_SIG}",
        EVENT_ID_HEADER: "ev-1",
        IDEMPOTENCY_HEADER: "ev-1",
    }


def test_no_secret_means_no_signature_header() -> None:
    headers = signature_headers(None, BODY, now=TS)
    assert headers == {TIMESTAMP_HEADER: str(TS)}


def test_empty_secret_is_refused_for_signing() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        sign("", TS, BODY)


def test_verify_accepts_within_the_window_both_ways() -> None:
    verify(SECRET, BODY, str(TS), f"v1={BODY_SIG}", now=TS)
    verify(SECRET, BODY, str(TS), f"v1={BODY_SIG}", now=TS + 300)
    verify(SECRET, BODY, str(TS), f"v1={BODY_SIG}", now=TS - 300)


@pytest.mark.parametrize("now", [TS + 301, TS - 301, TS + 86400])
def test_verify_rejects_outside_the_window(now: float) -> None:
    with pytest.raises(SignatureError, match="tolerance"):
        verify(SECRET, BODY, str(TS), f"v1={BODY_SIG}", now=now)


def test_verify_custom_tolerance() -> None:
    verify(SECRET, BODY, str(TS), f"v1={BODY_SIG}", now=TS + 1000, tolerance_s=1000)
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, str(TS), f"v1={BODY_SIG}", now=TS + 11, tolerance_s=10)


@pytest.mark.parametrize(
    ("timestamp", "signature", "reason"),
    [
        (None, f"v1={BODY_SIG}", "missing"),
        (str(TS), None, "missing"),
        ("17369371.27", f"v1={BODY_SIG}", "malformed timestamp"),
        ("-1", f"v1={BODY_SIG}", "malformed timestamp"),
        ("١٧٣٦٩٣٧١٢٧", f"v1={BODY_SIG}", "malformed timestamp"),  # non-ASCII digits
        (str(TS), BODY_SIG, "no v1 signature"),
        (str(TS), f"v2={BODY_SIG}", "no v1 signature"),
        (str(TS), "v1=" + "0" * 64, "mismatch"),
        (str(TS), "v1=zz\u00e9", "mismatch"),
        (str(TS + 1), f"v1={BODY_SIG}", "mismatch"),
    ],
)
def test_verify_rejects_bad_headers(
    timestamp: str | None, signature: str | None, reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify(SECRET, BODY, timestamp, signature, now=TS)


def test_verify_rejects_a_changed_body_or_wrong_secret() -> None:
    with pytest.raises(SignatureError, match="mismatch"):
        verify(SECRET, BODY + b" ", str(TS), f"v1={BODY_SIG}", now=TS)
    with pytest.raises(SignatureError, match="mismatch"):
        verify("other", BODY, str(TS), f"v1={BODY_SIG}", now=TS)


def test_verify_accepts_any_of_several_signatures_and_uppercase_hex() -> None:
    header = f"v1={'0' * 64}, v2=ignored , v1={BODY_SIG.upper()}"
    verify(SECRET, BODY, str(TS), header, now=TS)


def test_round_trip_through_headers() -> None:
    headers = signature_headers(SECRET, BODY, now=TS, event_id="e")
    verify(SECRET, BODY, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], now=TS + 5)


def test_the_documented_receiver_snippet_matches() -> None:
    """The stdlib-only snippet in signing.py's docstring (README material) agrees with sign()."""
    doc = signing.__doc__ or ""
    match = re.search(r"    import hashlib.*?\n\n(    def verify.*?)\n\n", doc, re.S)
    assert match is not None
    code = "\n".join(line[4:] for line in match.group(1).splitlines())
    namespace: dict[str, object] = {"hashlib": hashlib, "hmac": hmac, "time": FakeTime}
    exec(code, namespace)
    snippet_verify = namespace["verify"]
    assert callable(snippet_verify)
    headers = signature_headers(SECRET, BODY, now=FakeTime.time())
    ts, sig = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    assert snippet_verify(SECRET, BODY, ts, sig) is True
    assert snippet_verify(SECRET, BODY + b"x", ts, sig) is False
    assert snippet_verify(SECRET, BODY, str(TS - 1000), sig) is False


class FakeTime:
    @staticmethod
    def time() -> float:
        return float(TS)
