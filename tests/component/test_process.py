"""The real CLI process: --help, --version, check-config, API-only run, sd_notify, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sip4ai import __version__


pytestmark = pytest.mark.component

SECRETS = {
    "SIP_PASSWORD": "hunter2-pw",
    "OPENAI_API_KEY": "sk-very-secret",
    "SIP4AI_API_TOKEN": "tok-xyz",
}


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIP", "NOTIFY", "WATCHDOG"))}
    env.update(
        {"CONFIG_FILE": str(tmp_path / "absent.json"), "SIP4AI_DATA_DIR": str(tmp_path / "data")}
    )
    env.pop("CONFIG_FILE")
    env.update(extra)
    return env


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sip4ai", *args],
        env=base_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_help_lists_commands_and_variables(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0
    for word in (
        "check-config",
        "SIP_USERNAME",
        "SIP_TRANSPORT",
        "CONFIG_FILE",
        "AUDIO_FILE",
        "API_PORT",
    ):
        assert word in result.stdout


def test_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"sip4ai {__version__}"


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path, "check-config", SIP_USERNAME="aibot", SIP_SERVER="pbx.example.com", **SECRETS
    )
    assert result.returncode == 0, result.stderr
    for secret in SECRETS.values():
        assert secret not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["sip"]["password"] == "********"
    assert shown["openai"]["api_key"] == "********"
    assert shown["sip"]["username"] == "aibot"
    assert shown["effective_mode"] == "inbound (SIP udp)"


def test_check_config_api_only_without_credentials(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "check-config")
    assert result.returncode == 0
    assert json.loads(result.stdout)["effective_mode"] == "api-only"


def test_bad_config_exits_2_naming_field_and_source(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"openai": {"turn_detection": {"threshold": "high"}}}')
    result = run_cli(tmp_path, "check-config", CONFIG_FILE=str(config))
    assert result.returncode == 2
    assert "openai.turn_detection.threshold" in result.stderr
    assert str(config) in result.stderr
    result = run_cli(tmp_path, API_PORT="-5")
    assert result.returncode == 2
    assert "api_port" in result.stderr and "env API_PORT" in result.stderr


class NotifyListener:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in m for m in self.messages):
                return True
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return any(text in m for m in self.messages)

    def collect(self, duration_s: float) -> None:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


def test_api_only_run_with_sd_notify_and_graceful_sigterm(
    tmp_path: Path, notify: NotifyListener
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sip4ai"],
        env=base_env(
            tmp_path,
            API_PORT=str(port),
            NOTIFY_SOCKET=str(notify.path),
            WATCHDOG_USEC="400000",
            WATCHDOG_PID=str(
                os.getpid()
            ),  # our PID is the child's parent, as with a one-file binary
            **SECRETS,
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert notify.wait_for("READY=1", 15), notify.messages
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
        notify.collect(0.7)  # a few watchdog periods (0.2 s each)
        pings = sum(m == "WATCHDOG=1" for m in notify.messages)
        assert pings >= 2
        ready = next(m for m in notify.messages if "READY=1" in m)
        assert "STATUS=API only" in ready
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 5
        assert notify.wait_for("STOPPING=1", 2)
        for secret in SECRETS.values():
            assert secret not in out + err
        assert (tmp_path / "data" / "sip4ai.sqlite3").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_api_binds_loopback_only_by_default(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sip4ai"],
        env=base_env(tmp_path, API_PORT=str(port)),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        listening = Path("/proc/net/tcp").read_text()
        port_hex = f":{port:04X}"
        lines = [line.split() for line in listening.splitlines()[1:] if port_hex in line.split()[1]]
        assert lines, "API port not listening"
        assert all(fields[1] == f"0100007F{port_hex}" for fields in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_without_notify_socket_nothing_is_sent(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sip4ai"],
        env=base_env(tmp_path, API_PORT=str(port), WATCHDOG_USEC="100000"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "Traceback" not in err
