"""`make demo`: run sip4ai on its embedded defaults and show what it does.

Today this is the API-only appliance (no SIP credentials): it starts the real sip4ai process,
waits for it, shows /health, /status, the OpenAPI routes, what an outbound call request gets
without SIP, and the metrics, then stops it with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def request(
    port: int, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def show(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    status, text = request(port, method, path, body)
    print(f"\n$ {method} {path}" + (f"  {json.dumps(body)}" if body else ""))
    print(f"HTTP {status}")
    try:
        print(json.dumps(json.loads(text), indent=2))
    except ValueError:
        print(text)


def main() -> int:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sip4ai-demo-") as data_dir:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SIP_", "NOTIFY_", "WATCHDOG"))
        }
        env.update({"API_PORT": str(port), "SIP4AI_DATA_DIR": data_dir})
        print(f"starting sip4ai (API only: no SIP credentials) on 127.0.0.1:{port}")
        proc = subprocess.Popen([sys.executable, "-m", "sip4ai"], env=env)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    request(port, "GET", "/health")
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        print("sip4ai did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.05)
            show(port, "GET", "/health")
            show(port, "GET", "/status")
            show(port, "GET", "/api/calls")
            show(port, "POST", "/api/calls", {"target": "+61400000000", "task": "Say hello"})
            _, metrics = request(port, "GET", "/metrics")
            print("\n$ GET /metrics  (sip4ai_* samples)")
            for line in metrics.splitlines():
                if line.startswith("sip4ai_") and not any(
                    s in line for s in ("_created", "_bucket")
                ):
                    print(line)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
        print(f"\nsip4ai stopped with exit code {code}")
        return code


if __name__ == "__main__":
    raise SystemExit(main())
