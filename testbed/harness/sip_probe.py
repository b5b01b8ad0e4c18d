"""Minimal SIP client for health checks: one OPTIONS over UDP, TCP or TLS, read the status line.

Used to wait until Kamailio answers after (re)start. Not a SIP stack: no retransmission
timers, no authentication; TLS does not verify the (self-signed) certificate.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from typing import Literal


Transport = Literal["udp", "tcp", "tls"]


def options_request(host: str, port: int, local: tuple[str, int], transport: Transport) -> bytes:
    """An OPTIONS to the server itself (no user part), which the testbed answers with 200."""
    tag = uuid.uuid4().hex
    via = transport.upper()
    return (
        f"OPTIONS sip:{host}:{port};transport={transport} SIP/2.0\r\n"
        f"Via: SIP/2.0/{via} {local[0]}:{local[1]};branch=z9hG4bK{tag[:16]};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:healthcheck@{local[0]}>;tag={tag[:8]}\r\n"
        f"To: <sip:{host}:{port}>\r\n"
        f"Call-ID: {tag}@{local[0]}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def status_line(response: bytes) -> str:
    """First line of a SIP response, e.g. ``SIP/2.0 200 Keepalive``; ValueError otherwise."""
    first = response.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    if not first.startswith("SIP/2.0 "):
        raise ValueError(f"not a SIP response: {first!r}")
    return first


def sip_options(
    host: str, port: int, transport: Transport = "udp", timeout_s: float = 0.5
) -> str | None:
    """Send one OPTIONS and return the response's status line, or None on timeout/refusal."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if transport == "udp":
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout_s)
                s.bind((host, 0))
                s.sendto(options_request(host, port, s.getsockname()[:2], "udp"), (host, port))
                return status_line(s.recv(65535))
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            if transport == "tls":
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                with ctx.wrap_socket(raw, server_hostname=host) as s:
                    s.sendall(options_request(host, port, s.getsockname()[:2], "tls"))
                    return status_line(s.recv(65535))
            raw.sendall(options_request(host, port, raw.getsockname()[:2], "tcp"))
            return status_line(raw.recv(65535))
    except (OSError, ValueError):
        return None


def wait_for_sip(
    host: str, port: int, transport: Transport = "udp", timeout_s: float = 10.0
) -> float:
    """Repeat OPTIONS until a 200 arrives; return the seconds it took.

    Raises TimeoutError after ``timeout_s``. Each attempt waits at most 100 ms for its answer.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    last: str | None = None
    while time.monotonic() < deadline:
        last = sip_options(host, port, transport, timeout_s=0.1)
        if last is not None and last.startswith("SIP/2.0 200"):
            return time.monotonic() - start
        if last is not None or transport != "udp":
            time.sleep(0.02)  # refused or non-200: the UDP recv timeout did not pace this attempt
    raise TimeoutError(
        f"no 200 to OPTIONS from {transport}:{host}:{port} in {timeout_s} s (last: {last})"
    )
