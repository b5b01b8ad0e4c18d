"""Run the real sip4ai as a process for e2e tests, benchmarks and QA scripts.

By default it runs ``python -m sip4ai`` from this checkout; set ``SIP4AI_BINARY`` to run a built
one-file binary instead (the same tests then cover the shipped artefact).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from testbed.harness.ports import free_port


class ApplianceError(RuntimeError):
    pass


def command() -> list[str]:
    binary = os.environ.get("SIP4AI_BINARY")
    return [binary] if binary else [sys.executable, "-m", "sip4ai"]


class Sip4ai:
    """One sip4ai process with its own data dir, config file, API port and log file."""

    def __init__(
        self,
        run_dir: Path,
        *,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.api_port = free_port()
        self.config_path = run_dir / "sip4ai-config.json"
        self.log_path = run_dir / "sip4ai.log"
        self.data_dir = run_dir / "sip4ai-data"
        self._config = dict(config or {})
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ApplianceError("sip4ai is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def environment(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SIP_", "NOTIFY_", "WATCHDOG_", "OPENAI_", "AUDIO_FILE", "API_"))
        }
        base.update(
            {
                "CONFIG_FILE": str(self.config_path),
                "API_PORT": str(self.api_port),
                "SIP4AI_DATA_DIR": str(self.data_dir),
                "SIP4AI_LOG_LEVEL": "DEBUG",
            }
        )
        base.update(self._extra_env)
        return base

    def start(self, timeout_s: float = 20.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self._config, indent=2))
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            command(),
            env=self.environment(),
            cwd=self.run_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_for(self._healthy, timeout_s, "the API to answer /health")

    def _healthy(self) -> bool:
        try:
            status, _ = self.api("GET", "/health", timeout_s=1.0)
        except OSError:
            return False
        return status == 200

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self._proc is not None and self._proc.poll() is not None:
                raise ApplianceError(
                    f"sip4ai exited ({self._proc.returncode}) waiting for {what}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ApplianceError(f"timed out waiting for {what}\n{self.log_tail()}")
            time.sleep(0.05)

    def api(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout_s: float = 5.0,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            status = exc.code
        text = raw.decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def status(self) -> dict[str, Any]:
        code, body = self.api("GET", "/status")
        if code != 200 or not isinstance(body, dict):
            raise ApplianceError(f"/status answered {code}: {body}")
        return body

    def call(self, call_id: str) -> dict[str, Any]:
        code, body = self.api("GET", f"/api/calls/{call_id}")
        if code != 200 or not isinstance(body, dict):
            raise ApplianceError(f"/api/calls/{call_id} answered {code}: {body}")
        return body

    def calls(self, **query: str | int) -> list[dict[str, Any]]:
        suffix = "&".join(f"{k}={v}" for k, v in query.items())
        code, body = self.api("GET", f"/api/calls?{suffix}")
        if code != 200 or not isinstance(body, dict):
            raise ApplianceError(f"/api/calls answered {code}: {body}")
        calls: list[dict[str, Any]] = body["calls"]
        return calls

    def wait_registered(self, registered: bool = True, timeout_s: float = 10.0) -> None:
        self.wait_for(
            lambda: bool(self.status()["sip_registered"]) is registered,
            timeout_s,
            f"sip_registered={registered}",
        )

    def wait_call(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """The newest call for which ``predicate`` holds, waiting until there is one."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [c for c in self.calls(limit=100) if predicate(c)]
            return bool(found)

        self.wait_for(check, timeout_s, "a matching call record")
        return found[0]

    def metrics(self) -> str:
        code, body = self.api("GET", "/metrics")
        if code != 200:
            raise ApplianceError(f"/metrics answered {code}")
        return str(body)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait; returns the exit code (SIGKILL and ApplianceError past the timeout)."""
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise ApplianceError(f"sip4ai ignored SIGTERM\n{self.log_tail()}") from None
        self._close_log()
        return proc.returncode

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Sip4ai:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            try:
                self.stop()
            except ApplianceError:
                pass
        self._close_log()
