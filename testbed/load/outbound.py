"""Outbound calls at a given rate through sip4ai's HTTP API (POST /api/calls).

A thread posts ``calls`` requests on an absolute schedule (request i at ``i / rate_cps`` s
after start, so a slow answer delays only itself and the ones queued behind it, never the
average rate). Each answer is kept: the call id of a 201, or the reason it failed
(``http_<code>`` or the exception's class name).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


ApiCall = Callable[..., tuple[int, Any]]
"""``Sip4ai.api``: (method, path, body, timeout_s=) -> (status, decoded body)."""


@dataclass
class OutboundResult:
    call_ids: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    posted: int = 0
    post_ms: list[float] = field(default_factory=list)
    """How long each POST took to answer."""


class OutboundDriver:
    """Places ``calls`` outbound calls to ``target`` at ``rate_cps`` in a background thread."""

    def __init__(
        self,
        api: ApiCall,
        *,
        target: str,
        calls: int,
        rate_cps: float,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        if rate_cps <= 0:
            raise ValueError("rate_cps must be > 0")
        self._api = api
        self._body = {"target": target, "task": "Load test call", **(body or {})}
        self.calls = calls
        self.rate_cps = rate_cps
        self.result = OutboundResult()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="load-outbound", daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float) -> bool:
        """True once every request has been answered (or failed)."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self) -> OutboundResult:
        self._stop.set()
        self.wait(15.0)
        return self.result

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(self.calls):
            delay = start + i / self.rate_cps - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            self._post_one()

    def _post_one(self) -> None:
        began = time.monotonic()
        try:
            code, body = self._api("POST", "/api/calls", self._body, timeout_s=10.0)
        except Exception as exc:  # one refused request is a result, not a crash
            self.result.failures[type(exc).__name__] += 1
        else:
            if code == 201 and isinstance(body, dict) and "call_id" in body:
                self.result.call_ids.append(str(body["call_id"]))
            else:
                self.result.failures[f"http_{code}"] += 1
        self.result.posted += 1
        self.result.post_ms.append(round((time.monotonic() - began) * 1000.0, 1))
