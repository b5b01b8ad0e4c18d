"""Webhook request signatures (function calls and lifecycle events). Pure: no I/O, no clock.

Scheme, version 1
-----------------
Every request sip4ai sends to a webhook carries::

    X-Sip4ai-Timestamp: 1736937127                  (Unix time in whole seconds, when sent)
    X-Sip4ai-Signature: v1=<64 lowercase hex digits>

where the hex digits are ``HMAC-SHA256(key=secret, msg=timestamp + "." + body)``: the timestamp
header's exact ASCII text, one ``.``, then the exact bytes of the request body. For a GET
function call (no body) the signed bytes are the exact query string sent (the part after
``?``). The timestamp is set per attempt, so a retried event carries a fresh one.

The signature header may hold several comma-separated ``v1=`` entries (e.g. while a secret is
rotated); a request is valid when any of them matches. Unknown schemes (``v2=...``) are ignored.
Receivers must reject timestamps more than ``DEFAULT_TOLERANCE_S`` (5 minutes) away from
their clock, which bounds replays; lifecycle events also carry ``Idempotency-Key`` (= the
``X-Sip4ai-Event-Id``) so a receiver can drop redeliveries of an event it already processed.

Without a configured secret requests are sent unsigned (no signature header).

Verifying in a receiver (Python, standard library only)::

    import hashlib, hmac, time

    def verify(secret: str, body: bytes, timestamp: str, signature: str,
               tolerance_s: int = 300) -> bool:
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
            return False
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                            hashlib.sha256).hexdigest()
        return any(
            hmac.compare_digest(expected.encode(), part.strip()[3:].encode())
            for part in signature.split(",")
            if part.strip().startswith("v1=")
        )

    # aiohttp:  verify(SECRET, await request.read(), request.headers["X-Sip4ai-Timestamp"],
    #                  request.headers["X-Sip4ai-Signature"])
    # For GET function calls the signed bytes are the raw query string instead of the body:
    #   aiohttp: request.rel_url.raw_query_string.encode(); Flask: request.query_string
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final


__all__ = [
    "CALL_ID_HEADER",
    "DEFAULT_TOLERANCE_S",
    "EVENT_HEADER",
    "EVENT_ID_HEADER",
    "FUNCTION_HEADER",
    "IDEMPOTENCY_HEADER",
    "SCHEME",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "sign",
    "signature_headers",
    "verify",
]

TIMESTAMP_HEADER: Final = "X-Sip4ai-Timestamp"
SIGNATURE_HEADER: Final = "X-Sip4ai-Signature"
EVENT_ID_HEADER: Final = "X-Sip4ai-Event-Id"
EVENT_HEADER: Final = "X-Sip4ai-Event"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
CALL_ID_HEADER: Final = "X-Sip4ai-Call-Id"
FUNCTION_HEADER: Final = "X-Sip4ai-Function"
SCHEME: Final = "v1"
DEFAULT_TOLERANCE_S: Final = 300.0


class SignatureError(ValueError):
    """A request's signature headers are missing, malformed, stale or do not match."""


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the signing secret must not be empty")
    return key


def _digest(secret: str | bytes, timestamp: str, body: bytes) -> str:
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of ``f"{timestamp}." + body``."""
    return _digest(secret, str(int(timestamp)), body)


def signature_headers(
    secret: str | bytes | None,
    body: bytes,
    *,
    now: float,
    event_id: str | None = None,
) -> dict[str, str]:
    """Headers for one request: timestamp, signature (if a secret is set), event id.

    ``now`` is Unix time in seconds (``time.time()``); it is truncated to whole seconds.
    ``event_id`` is sent both as ``X-Sip4ai-Event-Id`` and ``Idempotency-Key``.
    """
    timestamp = int(now)
    headers = {TIMESTAMP_HEADER: str(timestamp)}
    if secret:
        headers[SIGNATURE_HEADER] = f"{SCHEME}={sign(secret, timestamp, body)}"
    if event_id is not None:
        headers[EVENT_ID_HEADER] = event_id
        headers[IDEMPOTENCY_HEADER] = event_id
    return headers


def verify(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> None:
    """Check one request; raises SignatureError with the reason when it is not valid.

    ``timestamp`` and ``signature`` are the raw header values (None when absent). The comparison
    is constant-time (``hmac.compare_digest``).
    """
    if timestamp is None or signature is None:
        raise SignatureError("missing signature headers")
    text = timestamp.strip()
    if not text.isascii() or not text.isdigit():
        raise SignatureError("malformed timestamp")
    if abs(now - int(text)) > tolerance_s:
        raise SignatureError("timestamp outside the tolerance window")
    expected = _digest(secret, text, body).encode("ascii")
    candidates = [
        part.strip()[len(SCHEME) + 1 :]
        for part in signature.split(",")
        if part.strip().startswith(f"{SCHEME}=")
    ]
    if not candidates:
        raise SignatureError(f"no {SCHEME} signature")
    matched = False
    for candidate in candidates:
        # No early exit: every candidate is compared, each in constant time.
        matched |= hmac.compare_digest(expected, candidate.lower().encode("utf-8"))
    if not matched:
        raise SignatureError("signature mismatch")
