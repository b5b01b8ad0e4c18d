"""Shared helpers for bench/capacity.py and bench/latency.py (not a benchmark itself).

What the testbed harness does not offer and the benchmarks need lives here: /proc sampling of
CPU and RSS, the OpenAI mock as a process with its PID, a capture filtered by destination port
or TCP SYNs, a SIPp callee that only echoes (-rtp_echo, no rtp_stream), a bare baresip-python
loopback UA (the SIP library without sip4ai's bridge), clock conversion between the mock's
monotonic event log and the wall-clock capture, and table/JSON output.

``python -m bench._common loopback ...`` runs the loopback UA (used by bench/latency.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from testbed.harness import g711, procs
from testbed.harness.capture import PacketCapture
from testbed.harness.kamailio import Kamailio
from testbed.harness.paths import scenario_path
from testbed.harness.pcap import read_records
from testbed.harness.ports import free_port
from testbed.harness.rtp import RtpPacket


REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
RUNS_DIR = Path(tempfile.gettempdir()) / "sip4ai-bench"
"""Run directories (pcaps, logs): outside the repo, whose build/ other tools wipe."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
SILENCE_PEAK = 500
"""A G.711 frame whose largest |sample| is below this counts as silent (the test tones peak at
about 10000-16000; sip4ai's silence frames decode to 0 or +-4)."""


# ----- process lifetime ------------------------------------------------------------------------


def raise_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``with``/ExitStack cleans up what it started."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


class ChildProcess:
    """A Popen child stopped on exit with SIGTERM, a bounded wait, then SIGKILL."""

    def __init__(self, argv: Sequence[str], log_path: Path, *, stdout_pipe: bool = False) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._stdout_pipe = stdout_pipe
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self._stdout_pipe else self._log,
            stderr=self._log,
        )

    def read_line(self, timeout_s: float) -> str:
        """One stdout line (stdout_pipe=True), bounded by ``timeout_s``; '' on timeout/EOF."""
        assert self.proc is not None and self.proc.stdout is not None
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return self.proc.stdout.readline().decode(errors="replace").strip() if ready else ""

    def stop(self, timeout_s: float = 10.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        code = procs.stop_popen(proc, timeout_s)
        if proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
        return code

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MockProcess(ChildProcess):
    """``python -m testbed.mocks.mock_openai`` with its PID, URL and optional events log."""

    def __init__(self, run_dir: Path, *args: str, events_log: Path | None = None) -> None:
        argv = [sys.executable, "-m", "testbed.mocks.mock_openai", "--port", "0", "--any-key"]
        argv += list(args)
        if events_log is not None:
            argv += ["--events-log", str(events_log)]
        super().__init__(argv, run_dir / "mock_openai.log", stdout_pipe=True)
        self.events_log = events_log
        self.ws_url = ""

    def start(self) -> None:
        super().start()
        line = self.read_line(15.0)
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"the OpenAI mock did not start: {line!r} (log {self.log_path})")
        self.ws_url = line.split(" ", 1)[1]

    @property
    def base_url(self) -> str:
        """sip4ai's ``openai.base_url``."""
        return self.ws_url + "/v1/realtime"

    @property
    def port(self) -> int:
        return int(self.ws_url.rsplit(":", 1)[1])


# ----- /proc sampling --------------------------------------------------------------------------


def cpu_seconds(pid: int, task: Path | None = None) -> float:
    """utime + stime of one process (all its threads), or of one ``/proc/PID/task/TID``."""
    fields = ((task or Path(f"/proc/{pid}")) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def group_pids(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid`` (Kamailio's children share the leader's group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def group_cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def status_field(pid: int, name: str) -> int:
    """An integer field of /proc/<pid>/status (VmRSS in kB, Threads ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all cores from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def prometheus_value(text: str, name: str, labels: str = "") -> float | None:
    """Sum of the samples of metric ``name`` (whose labels contain ``labels``, e.g.
    ``le="0.02"``) in a Prometheus text exposition; None if absent."""
    total: float | None = None
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match and labels in (match.group(1) or ""):
            total = (total or 0.0) + float(match.group(2))
    return total


# ----- clocks and statistics -------------------------------------------------------------------


def wall_minus_monotonic(samples: int = 50) -> float:
    """time.time() - time.monotonic() (CLOCK_MONOTONIC is system-wide on Linux, so this converts
    the mock's monotonic event times to the capture's wall-clock times); the tightest of
    ``samples`` readings."""
    best: tuple[float, float] | None = None
    for _ in range(samples):
        m0 = time.monotonic()
        w = time.time()
        m1 = time.monotonic()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, w - (m0 + m1) / 2)
    assert best is not None
    return best[1]


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p95, p99, min, max (None when empty)."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "min": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "min": round(float(a.min()), 3),
        "max": round(float(a.max()), 3),
    }


def pooled_pacing(streams: Sequence[Sequence[RtpPacket]], frame_ms: float = 20.0) -> dict[str, Any]:
    """|interval - frame_ms| pooled over streams (each in arrival order): p50, p99, max
    interval, intervals over 60 ms. Only intervals between packets with consecutive RTP
    sequence numbers count, so a packet the capture missed is not taken for a sender gap;
    ``seq_skips`` counts the intervals left out."""
    deviations: list[npt.NDArray[np.float64]] = []
    intervals: list[npt.NDArray[np.float64]] = []
    skipped = 0
    for packets in streams:
        if len(packets) < 2:
            continue
        t = np.array([p.arrival_s for p in packets], dtype=np.float64)
        seq = np.array([p.sequence for p in packets], dtype=np.int64)
        step = np.mod(np.diff(seq), 65536)
        iv = (np.diff(t) * 1000.0)[step == 1]
        skipped += int(np.count_nonzero(step != 1))
        intervals.append(iv)
        deviations.append(np.abs(iv - frame_ms))
    iv_all = np.concatenate(intervals) if intervals else np.zeros(0)
    if not iv_all.size:
        return {"intervals": 0, "seq_skips": skipped}
    dev_all = np.concatenate(deviations)
    return {
        "streams": len(intervals),
        "intervals": int(iv_all.size),
        "seq_skips": skipped,
        "deviation_p50_ms": round(float(np.percentile(dev_all, 50)), 3),
        "deviation_p99_ms": round(float(np.percentile(dev_all, 99)), 3),
        "max_interval_ms": round(float(iv_all.max()), 2),
        "gaps_over_60ms": int(np.count_nonzero(iv_all > 60.0)),
        "intervals_over_30ms": int(np.count_nonzero(iv_all > 30.0)),
    }


def peak(packet: RtpPacket) -> int:
    """Largest |sample| of a G.711 packet (0 for other payload types)."""
    if packet.payload_type not in (0, 8) or not packet.payload:
        return 0
    pcm = g711.decode(packet.payload, g711.law_for_payload_type(packet.payload_type))
    return int(np.abs(pcm.astype(np.int32)).max())


def onset_offset(packet: RtpPacket, threshold: int = SILENCE_PEAK) -> int | None:
    """Index of the first sample over ``threshold`` in a G.711 packet, or None."""
    if packet.payload_type not in (0, 8) or not packet.payload:
        return None
    pcm = g711.decode(packet.payload, g711.law_for_payload_type(packet.payload_type))
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
    return int(loud[0]) if loud.size else None


# ----- media files -----------------------------------------------------------------------------


def write_wav(path: Path, pcm: npt.NDArray[np.int16], rate_hz: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def tone(freq_hz: float, seconds: float, rate_hz: int = 8000, amp: float = 0.5) -> Any:
    n = round(seconds * rate_hz)
    t = np.arange(n) / rate_hz
    return np.round(amp * 32767 * np.sin(2 * math.pi * freq_hz * t)).astype(np.int16)


# ----- sip4ai config and SIPp helpers ----------------------------------------------------------


def sip_config(
    kamailio: Kamailio, *, rtp_ports: int = 100, max_calls: int = 100, **extra: Any
) -> dict[str, Any]:
    """sip4ai registered as aibot at the testbed Kamailio on free loopback ports."""
    rtp = free_port(udp=True, tcp=False, span=rtp_ports)
    sip: dict[str, Any] = {
        "username": "aibot",
        "password": "aibotpw",
        "domain": kamailio.address,
        "server": kamailio.address,
        "listen": f"127.0.0.1:{free_port(udp=True, tcp=True)}",
        "rtp_port_min": rtp,
        "rtp_port_max": rtp + rtp_ports - 1,
        "answer_timeout_s": 5.0,
        "max_calls": max_calls,
        "jitter_buffer_ms": 0,
    }
    sip.update(extra)
    return {"sip": sip}


def sip_port_of(config: Mapping[str, Any]) -> int:
    return int(str(config["sip"]["listen"]).rsplit(":", 1)[1])


def echo_uas_scenario(directory: Path) -> Path:
    """uas_answer_rtp.xml without its rtp_stream action: a callee for ``-rtp_echo`` only."""
    text = scenario_path("uas_answer_rtp").read_text()
    stripped, count = re.subn(
        r'<recv request="ACK"([^>]*)>\s*<action>\s*<exec rtp_stream="\[audio\]"/>\s*</action>\s*'
        r"</recv>",
        r'<recv request="ACK"\1/>',
        text,
    )
    if count != 1:
        raise RuntimeError("uas_answer_rtp.xml changed shape: cannot derive the echo callee")
    path = directory / "uas_answer_echo.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(stripped)
    return path


class FilteredCapture(PacketCapture):
    """tcpdump on lo with an explicit BPF filter (the harness's filter is always 'udp and
    port ...' both ways)."""

    def __init__(self, pcap_path: Path, bpf: str) -> None:
        super().__init__(pcap_path, [0])
        self._bpf = bpf

    @property
    def bpf_filter(self) -> str:
        return self._bpf


def tcp_syn_filter(port: int) -> str:
    return f"tcp dst port {port} and tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack = 0"


def record_times(pcap: Path) -> list[float]:
    """Capture timestamps of every record (e.g. the SYNs of a tcp_syn_filter capture)."""
    return [r.time_s for r in read_records(pcap)]


@dataclass(frozen=True)
class SipMessage:
    time_s: float
    src_port: int
    dst_port: int
    first_line: str
    call_id: str
    cseq: str
    body: str


def sip_messages(datagrams: Sequence[Any]) -> list[SipMessage]:
    """SIP requests/responses among UDP datagrams (keep-alives and RTP are skipped)."""
    out = []
    for d in datagrams:
        if not d.payload[:1].isalpha():
            continue
        text = d.payload.decode("utf-8", "replace")
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        call_id = headers.get("call-id", headers.get("i", ""))
        cseq = headers.get("cseq", "")
        out.append(SipMessage(d.time_s, d.src_port, d.dst_port, lines[0], call_id, cseq, body))
    return out


def sdp_audio_port(body: str) -> int | None:
    match = re.search(r"^m=audio (\d+)", body, re.M)
    return int(match.group(1)) if match else None


# ----- output ----------------------------------------------------------------------------------


def git_revision() -> str:
    """HEAD's short hash, with ``+dirty`` when sip4ai/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sip4ai"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def host_info() -> dict[str, Any]:
    return {
        "git": git_revision(),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(name: str, data: Mapping[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----- baresip-python loopback UA (the SIP library without sip4ai) -----------------------------


async def _loopback(args: argparse.Namespace) -> None:
    from baresip import (  # the library under sip4ai, used bare: no sip4ai code involved
        Account,
        AudioNotActive,
        AudioRestarted,
        CallState,
        Config,
        Runtime,
        UserAgent,
    )

    config = Config(
        net_interface="127.0.0.1",
        max_concurrent_calls=4,
        extra_config_text=(
            f"sip_listen {args.listen}\nsip_transports udp\nrtp_ports {args.rtp}\n"
            "audio_jitter_buffer_type off\n"
        ),
    )
    runtime = Runtime()
    await runtime.start(config)
    account = Account(user=args.user, domain=args.domain, password=args.password)
    ua = await UserAgent.create(runtime, account)
    await ua.register()
    print("REGISTERED", flush=True)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(call: Any) -> None:
        await call.answer(video=True)
        audio = call.audio
        while True:
            try:
                info = audio.info()
                if info.tx_ready and info.rx_ready:
                    break
            except AudioNotActive:
                pass
            await asyncio.sleep(0.002)
        with contextlib.suppress(AudioNotActive, AudioRestarted):
            while call.state is not CallState.CLOSED:
                data = audio.read(32000)
                if data:
                    audio.write(data)  # straight back: the library's own loopback
                await asyncio.sleep(args.poll_ms / 1000)

    def incoming(call: Any) -> None:
        task = asyncio.get_running_loop().create_task(serve(call))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    ua.on_incoming(incoming)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.seconds)
    for task in list(tasks):
        task.cancel()
    with contextlib.suppress(Exception):
        await ua.unregister()
    await runtime.close()


class LoopbackUA(ChildProcess):
    """The loopback UA as a process, registered at Kamailio as ``user``."""

    def __init__(self, run_dir: Path, kamailio: Kamailio, user: str, password: str) -> None:
        self.sip_port = free_port(udp=True, tcp=True)
        rtp = free_port(udp=True, tcp=False, span=20)
        argv = [
            sys.executable, "-m", "bench._common", "loopback",
            "--listen", f"127.0.0.1:{self.sip_port}", "--rtp", f"{rtp}-{rtp + 19}",
            "--domain", kamailio.address, "--user", user, "--password", password,
        ]  # fmt: skip
        super().__init__(argv, run_dir / f"loopback-{user}.log", stdout_pipe=True)

    def start(self) -> None:
        super().start()
        line = self.read_line(15.0)
        if line != "REGISTERED":
            self.stop()
            raise RuntimeError(f"loopback UA did not register: {line!r} (log {self.log_path})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._common")
    sub = parser.add_subparsers(dest="command", required=True)
    lb = sub.add_parser("loopback", help="baresip-python UA that sends back what it receives")
    lb.add_argument("--listen", required=True)
    lb.add_argument("--rtp", required=True, help="RTP port range A-B")
    lb.add_argument("--domain", required=True)
    lb.add_argument("--user", required=True)
    lb.add_argument("--password", required=True)
    lb.add_argument("--poll-ms", type=float, default=2.0)
    lb.add_argument("--seconds", type=float, default=300.0, help="bound on the lifetime")
    args = parser.parse_args(argv)
    asyncio.run(_loopback(args))
    return 0


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    start = time.monotonic()
    print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
    yield
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
