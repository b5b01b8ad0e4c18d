"""Free loopback ports for testbed processes, chosen at runtime (never a fixed 5060).

Ports come from 20000 up to the start of the kernel's ephemeral range (32768 by default), so a
port handed out here is never taken meanwhile by a kernel-chosen client port. A port is only
checked, not held: the caller must bind it soon. Within one Python process the same port is
never handed out twice, so parallel fixtures cannot collide with each other.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path


_LOW = 20000
_DEFAULT_HIGH = 32768
_ATTEMPTS = 500

_lock = threading.Lock()
_handed_out: set[int] = set()
_rng = random.SystemRandom()


def _upper_bound() -> int:
    """First port of the kernel's ephemeral range, or 32768 if it cannot be read."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_HIGH
    return low if low > _LOW + 1000 else _DEFAULT_HIGH


def _can_bind(host: str, port: int, kind: socket.SocketKind) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, udp: bool = True, tcp: bool = True, span: int = 1) -> int:
    """A port P such that P .. P+span-1 are all bindable now on ``host`` for each protocol asked.

    Use ``span=4`` for SIPp's media port (-mp P: audio on P, video on P+2, RTCP next to each).
    Raises RuntimeError when no such port is found after a bounded number of attempts.
    """
    if not (udp or tcp):
        raise ValueError("ask for udp, tcp or both")
    kinds = [k for k, wanted in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)) if wanted]
    high = _upper_bound() - span
    with _lock:
        for _ in range(_ATTEMPTS):
            port = _rng.randrange(_LOW, high)
            candidates = range(port, port + span)
            if any(p in _handed_out for p in candidates):
                continue
            if all(_can_bind(host, p, k) for p in candidates for k in kinds):
                _handed_out.update(candidates)
                return port
    raise RuntimeError(f"no free port block of {span} on {host} after {_ATTEMPTS} attempts")
