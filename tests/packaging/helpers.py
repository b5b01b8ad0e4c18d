"""Shared by the packaging tests: the one-file binary (built on demand), a systemd-like
NOTIFY_SOCKET, a loopback release server, and the skip-or-fail rule for missing tools."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
SPEC = PACKAGING / "pyinstaller.spec"
UNIT_FILE = PACKAGING / "systemd" / "sip4ai.service"
ENV_EXAMPLE = PACKAGING / "systemd" / "sip4ai.env"
CONFIG_EXAMPLE = PACKAGING / "systemd" / "config.json"
INSTALL_SH = REPO / "install.sh"
DIST_BINARY = REPO / "dist" / "sip4ai"
BUILD_DIR = REPO / "build" / "pyinstaller"
BUILD_TIMEOUT_S = 300.0

REQUIRED_ENV = "SIP4AI_E2E_REQUIRED"
"""Set to 1 in CI: a missing tool (pyinstaller, shellcheck, systemd-nspawn...) fails the test
instead of skipping it."""

BINARY_ENV = "SIP4AI_BINARY"
"""Path of an already built binary to test (the release workflow); skips the build."""


def require(condition: bool, message: str) -> None:
    """Skip the test when ``condition`` is false, or fail it when SIP4AI_E2E_REQUIRED=1."""
    if condition:
        return
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_tools(*tools: str, apt: str = "") -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    hint = f" (apt-get install {apt})" if apt else ""
    require(not missing, f"missing tools: {', '.join(missing)}{hint}")


# ----- the one-file binary -----


def binary_sources() -> list[Path]:
    """Everything a build depends on in this repository."""
    files = [SPEC, *sorted((PACKAGING / "hooks").glob("*.py"))]
    files += sorted((REPO / "sip4ai").rglob("*.py"))
    return [f for f in files if f.is_file()]


def binary_is_stale(binary: Path = DIST_BINARY) -> bool:
    if not binary.is_file():
        return True
    built = binary.stat().st_mtime
    return any(source.stat().st_mtime > built for source in binary_sources())


def build_binary() -> Path:
    """``dist/sip4ai``, rebuilt with PyInstaller (about 30 s) only when missing or older than
    the sources. A lock file serialises concurrent builds (parallel test runs)."""
    require(
        _has_pyinstaller(),
        "PyInstaller is not installed (pip install pyinstaller==6.22.3)",
    )
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with (BUILD_DIR.parent / ".sip4ai-binary.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary_is_stale():
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "PyInstaller",
                    "--noconfirm",
                    "--clean",
                    "--distpath",
                    str(DIST_BINARY.parent),
                    "--workpath",
                    str(BUILD_DIR.parent),
                    str(SPEC),
                ],
                cwd=REPO,
                env={k: v for k, v in os.environ.items() if k != "SIP4AI_ONEDIR"},
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
            if result.returncode != 0 or not DIST_BINARY.is_file():
                pytest.fail(f"PyInstaller build failed:\n{result.stderr[-4000:]}")
    return DIST_BINARY


def _has_pyinstaller() -> bool:
    return importlib.util.find_spec("PyInstaller") is not None


def binary_under_test() -> Path:
    """The binary under test: $SIP4AI_BINARY if set, else dist/sip4ai (built if stale)."""
    given = os.environ.get(BINARY_ENV)
    if given:
        path = Path(given).resolve()
        if not path.is_file():
            pytest.fail(f"{BINARY_ENV}={given} is not a file")
        return path
    return build_binary()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without SIP/provider/systemd settings, plus ``extra``."""
    dropped = ("SIP", "NOTIFY_SOCKET", "WATCHDOG", "CONFIG_FILE", "API_", "AUDIO_FILE")
    keys = ("OPENAI_API_KEY", "STATE_DIRECTORY", "LISTEN_FDS", "LISTEN_PID")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped) and k not in keys}
    env.update(extra)
    return env


# ----- sd_notify -----


@dataclass(frozen=True)
class Notification:
    at_s: float
    """Seconds since the listener was created."""
    pid: int | None
    """Sender PID from SCM_CREDENTIALS (None where the platform has no credentials)."""
    text: str


class NotifySocket:
    """What systemd's NOTIFY_SOCKET is: a unix datagram socket; records each message with the
    sender's PID (SO_PASSCRED / SCM_CREDENTIALS), like systemd does for NotifyAccess."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self._creds = hasattr(socket, "SO_PASSCRED")
        if self._creds:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.started = time.monotonic()
        self.messages: list[Notification] = []

    def _receive(self, timeout_s: float) -> bool:
        self.sock.settimeout(max(timeout_s, 0.001))
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return False
        pid = None
        for level, kind, payload in ancillary:
            if self._creds and level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        self.messages.append(Notification(time.monotonic() - self.started, pid, data.decode()))
        return True

    def wait_for(self, text: str, timeout_s: float) -> Notification | None:
        """The first message containing ``text`` (waiting up to ``timeout_s`` for it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = next((m for m in self.messages if text in m.text), None)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._receive(remaining)

    def count(self, text: str) -> int:
        return sum(text in m.text for m in self.messages)

    def wait_count(self, text: str, count: int, timeout_s: float) -> bool:
        """True once ``count`` messages containing ``text`` have arrived (within timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while self.count(text) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._receive(remaining)
        return True

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


# ----- a loopback release server -----


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sha256sums(directory: Path, names: list[str]) -> None:
    lines = [f"{sha256_file(directory / n)}  {n}\n" for n in names]
    (directory / "SHA256SUMS").write_text("".join(lines))


class ReleaseServer:
    """Serves a directory over HTTP on 127.0.0.1 (in a thread). ``short_body`` names files
    whose body is cut in half while Content-Length still announces the full size, which is
    what a dropped connection looks like to curl."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.short_body: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append(name)
                path = server.directory / name
                if "/" in name or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.short_body:
                    body = body[: len(body) // 2]
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ReleaseServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``root``: (mode, uid, gid, content hash or link target)."""
    snapshot: dict[str, tuple[int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                content = "-> " + os.readlink(path)
            elif path.is_file():
                content = sha256_file(path)
            else:
                content = ""
            snapshot[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, content)
    return snapshot


def run_checked(
    cmd: list[str], *, env: Mapping[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
