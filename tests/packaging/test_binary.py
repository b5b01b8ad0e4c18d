"""The one-file binary itself: what it bundles, --version, check-config, a systemd-style run
(NOTIFY_SOCKET, watchdog, /health, SIGTERM), and a registration plus one real call through
Kamailio with SIPp.

dist/sip4ai is built by the first test that needs it, and only when it is missing or older
than the sources (about 30 s); SIP4AI_BINARY=path tests a given binary instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sip4ai import __version__
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from tests.packaging import sipcall
from tests.packaging.helpers import (
    CONFIG_EXAMPLE,
    Notification,
    NotifySocket,
    clean_env,
    require_tools,
    run_checked,
)


pytestmark = pytest.mark.e2e

LINUX = sys.platform.startswith("linux")
READY_TIMEOUT_S = 20.0
WATCHDOG_USEC = 1_000_000
"""1 s: sip4ai pings every 0.5 s."""


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


class Service:
    """The binary started the way systemd starts a Type=notify unit: NOTIFY_SOCKET,
    WATCHDOG_USEC, and WATCHDOG_PID = the PID systemd forked (the one-file bootloader)."""

    def __init__(self, binary: Path, workdir: Path, **env: str) -> None:
        self.workdir = workdir
        self.api_port = free_port(udp=False)
        # Short path: unix socket addresses are limited to 104-108 bytes (macOS: 104).
        self.notify = NotifySocket(Path(tempfile.mkdtemp(prefix="sip4ai-")) / "notify.sock")
        self.unpack_dir = workdir / "tmp"
        self.unpack_dir.mkdir()
        environ = clean_env(
            NOTIFY_SOCKET=str(self.notify.path),
            WATCHDOG_USEC=str(WATCHDOG_USEC),
            API_PORT=str(self.api_port),
            STATE_DIRECTORY=str(workdir / "state"),
            TMPDIR=str(self.unpack_dir),
            **env,
        )
        (workdir / "state").mkdir()
        # `exec` keeps the PID, so WATCHDOG_PID names the bootloader as systemd's MAINPID does.
        # Output goes to a file: a full pipe would block the service.
        self.log_path = workdir / "sip4ai.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    "/bin/sh",
                    "-c",
                    'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$0" "$@"',
                    str(binary),
                ],
                env=environ,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so a hung Python child can be killed with its group
            )
        self.killed_note = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") + self.killed_note

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM the bootloader (as systemd does); SIGKILL the whole group if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.killed_note = f"\n[test: no exit within {timeout_s} s of SIGTERM, killed]"
            return self.proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self.notify.close()
        self.notify.path.parent.rmdir()


@pytest.fixture
def service_factory() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.close()


def start_service(started: list[Service], binary: Path, workdir: Path, **env: str) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    service = Service(binary, workdir, **env)
    started.append(service)
    return service


def wait_ready(service: Service) -> Notification:
    ready = service.notify.wait_for("READY=1", READY_TIMEOUT_S)
    if ready is None:
        service.stop()
        pytest.fail(f"no READY=1 within {READY_TIMEOUT_S} s; output:\n{service.output[-3000:]}")
    return ready


# ----- contents -----


def archive_listing(binary: Path) -> str:
    result = run_checked(
        [
            sys.executable,
            "-m",
            "PyInstaller.utils.cliutils.archive_viewer",
            "--recursive",
            "--brief",
            str(binary),
        ]
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bundles_baresip_its_native_libraries_and_the_lazy_sip_engine(sip4ai_binary: Path) -> None:
    """What a plain `pyinstaller` run would miss (packaging/hooks/hook-baresip.py)."""
    listing = archive_listing(sip4ai_binary)
    names = {line.strip().strip("'") for line in listing.splitlines()}
    for module in (
        "baresip.runtime",
        "baresip.ua",
        "baresip.call",
        "baresip.audio",
        "sip4ai.sip",
        "sip4ai.sip.baresip_engine",
        "sip4ai.app",
    ):
        assert module in names, f"{module} missing from the binary"
    if LINUX:
        native = [n for n in names if n.startswith(("baresip/_native", "_cffi_backend"))]
        assert len(native) == 2, native
        libs = {n.split("/")[-1].split("-")[0] for n in names if "baresip_python.libs/" in n}
        assert {"libssl", "libcrypto", "libasound"} <= libs, sorted(names)


# ----- command line -----


def test_version(sip4ai_binary: Path, tmp_path: Path) -> None:
    result = run_checked([str(sip4ai_binary), "--version"], env=clean_env(TMPDIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sip4ai {__version__}"


def test_check_config_accepts_the_shipped_example_and_rejects_a_bad_one(
    sip4ai_binary: Path, tmp_path: Path
) -> None:
    ok = run_checked(
        [str(sip4ai_binary), "check-config"],
        env=clean_env(CONFIG_FILE=str(CONFIG_EXAMPLE), TMPDIR=str(tmp_path)),
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["effective_mode"] == "api-only"
    bad = tmp_path / "bad.json"
    bad.write_text('{"sip": {"max_calls": 0}}')
    result = run_checked(
        [str(sip4ai_binary), "--config", str(bad), "check-config"],
        env=clean_env(TMPDIR=str(tmp_path)),
    )
    assert result.returncode == 2
    assert "sip.max_calls" in result.stderr


# ----- systemd-style run -----


def test_runs_as_a_notify_service_with_watchdog_and_stops_cleanly(
    sip4ai_binary: Path, tmp_path: Path, service_factory: list[Service]
) -> None:
    service = start_service(service_factory, sip4ai_binary, tmp_path / "run")
    ready = wait_ready(service)
    print(f"exec -> READY=1: {ready.at_s:.3f} s")
    assert "STATUS=API only" in ready.text
    if LINUX:
        # One-file: the bootloader (the PID systemd knows) forks the Python child, and the
        # notifications come from that child: hence NotifyAccess=all in the unit.
        assert ready.pid is not None and ready.pid != service.proc.pid
        assert parent_pid(ready.pid) == service.proc.pid

    assert service.notify.wait_for("WATCHDOG=1", 2 * WATCHDOG_USEC / 1e6) is not None
    health = json.loads(http_get(service.base_url + "/health"))
    assert health == {"status": "ok"}
    metrics = http_get(service.base_url + "/metrics").decode()
    assert f'sip4ai_build_info{{sip_engine="none",version="{__version__}"}} 1.0' in metrics
    pings = service.notify.count("WATCHDOG=1")
    assert service.notify.wait_count("WATCHDOG=1", pings + 2, 3 * WATCHDOG_USEC / 1e6)
    if LINUX:
        assert {m.pid for m in service.notify.messages} == {ready.pid}
    unpacked = list(service.unpack_dir.glob("_MEI*"))
    assert len(unpacked) == 1, "the bootloader unpacks into $TMPDIR"

    assert service.stop() == 0, service.output
    assert service.notify.wait_for("STOPPING=1", 1.0) is not None
    assert "Traceback" not in service.output
    assert (tmp_path / "run" / "state" / "sip4ai.sqlite3").exists(), "uses $STATE_DIRECTORY"
    assert not list(service.unpack_dir.glob("_MEI*")), "unpack dir left behind after SIGTERM"


# ----- SIP: registration and one call through Kamailio -----


@dataclass
class SipSetup:
    kamailio: Kamailio
    service: Service


@pytest.fixture
def registered(
    sip4ai_binary: Path, tmp_path: Path, service_factory: list[Service]
) -> Iterator[SipSetup]:
    """The binary with SIP credentials, registered to a Kamailio on loopback, in AUDIO_FILE
    mode (a 1 kHz tone WAV instead of an AI provider)."""
    require_tools("kamailio", "sipp", "tcpdump", apt="kamailio sip-tester tcpdump")
    wav = tmp_path / "tone.wav"
    sipcall.write_tone_wav(wav)
    rtp_base = free_port(tcp=False, span=20)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"sip": {"rtp_port_min": rtp_base, "rtp_port_max": rtp_base + 19}})
    )
    with Kamailio(tmp_path / "kamailio") as kam:
        service = start_service(
            service_factory,
            sip4ai_binary,
            tmp_path / "run",
            CONFIG_FILE=str(config),
            SIP_USERNAME="aibot",
            SIP_PASSWORD=kam.users["aibot"],
            SIP_DOMAIN="127.0.0.1",
            SIP_SERVER=kam.address,
            SIP_LISTEN=f"127.0.0.1:{free_port()}",
            AUDIO_FILE=str(wav),
        )
        ready = wait_ready(service)
        assert "via baresip" in ready.text
        assert kam.wait_registered("aibot", 10.0)
        yield SipSetup(kam, service)
        service.stop()


def test_frozen_sip_stack_registers(registered: SipSetup) -> None:
    """baresip's Runtime really starts inside the binary (importing it proves nothing)."""
    metrics = http_get(registered.service.base_url + "/metrics").decode()
    assert sipcall.metric_value(metrics, "sip4ai_sip_registered") == 1.0
    assert 'sip_engine="baresip"' in metrics
    assert registered.service.stop() == 0, registered.service.output
    assert "Traceback" not in registered.service.output


def test_answers_a_real_call_and_sends_the_audio_file(registered: SipSetup, tmp_path: Path) -> None:
    """SIPp calls aibot through Kamailio; the binary answers and streams the WAV as RTP."""
    service = registered.service
    result = sipcall.call(tmp_path, registered.kamailio.address)
    if len(result.to_caller) != 1:
        service.stop()
        pytest.fail(f"{result.describe()}\nsip4ai output:\n{service.output[-3000:]}")
    sipcall.assert_call_carried_the_audio_file(result)

    metrics = http_get(service.base_url + "/metrics").decode()
    calls = [line for line in metrics.splitlines() if line.startswith("sip4ai_calls_total")]
    completed = sipcall.metric_value(
        metrics, "sip4ai_calls_total", direction="inbound", status="completed"
    )
    assert completed == 1.0, calls
    assert service.stop() == 0, service.output[-3000:]
    assert "Traceback" not in service.output, service.output[-3000:]
