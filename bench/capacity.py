"""Capacity: N simultaneous SIPp calls with RTP through Kamailio into the real sip4ai process.

Run: ``.venv/bin/python -m bench.capacity --calls 10,50,100,200 --duration 20``
(root: tcpdump on lo). Prints a table and writes ``bench/results/capacity.json``.
``--engines baresip,pjsua2`` runs every N on each SIP backend (``sip.engine``; the pjsua2 rows
need ``sip4ai[pjsua2]``). pjsua2 handles at most 4 calls per process: its rows for N > 4 show
how the calls beyond 4 are refused (486), e.g. ``--engines pjsua2 --calls 4,8``.

For each N: a fresh Kamailio, the stand-in AI side and sip4ai (jitter buffer off, max_calls N,
log level INFO). SIPp (uac_invite_rtp, 440 Hz mu-law both ways) starts N calls at N/ramp calls
per second, each ``--duration`` seconds long, so all N overlap for duration - ramp seconds.

Stand-in AI side, two modes, labelled in every row:

* ``echo``: the OpenAI mock process in echo mode (the real bridge path: websocket, base64,
  playout buffer). The mock shares the 2 cores with sip4ai, SIPp, Kamailio and tcpdump.
* ``file``: AUDIO_FILE mode (a 1 kHz tone WAV at 16 kHz, resampled by sip4ai): no provider
  process. With ``--file-mode auto`` it runs only for the N whose echo run saturated the
  machine (>= 85 % of both cores busy) or the mock (>= 60 % of one core).

Measured over the window in which sip4ai's /status reported the most calls active at once:
sip4ai CPU (utime+stime from /proc, 100 = one core), the mock's, SIPp's, Kamailio's and the
whole machine's; sip4ai RSS and threads. From a tcpdump of SIPp's media port: outgoing RTP
pacing of sip4ai's streams (|interval - 20 ms| pooled over all streams, p50/p99, intervals over
60 ms; only between packets with consecutive RTP sequence numbers, so a packet the capture
missed never counts as a gap), the tone each stream carried, silent frames inside each stream's
audio ("holes": playout underruns), and in echo mode the per-call echo deficit (caller frames
sent minus tone frames that came back: frames lost anywhere in the loop, or still queued at
hang-up). Frames lost before Python: sip4ai_audio_frames_lost_total from /metrics.
The cores are shared with anything else running on the machine: each run first waits (bounded)
for a quiet machine, and "others %" is the CPU of processes not started here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import (
    RUNS_DIR,
    MockProcess,
    cpu_seconds,
    fmt,
    group_cpu_seconds,
    group_pids,
    host_info,
    machine_jiffies,
    pooled_pacing,
    prometheus_value,
    raise_on_sigterm,
    sip_config,
    status_field,
    table,
    timed,
    tone,
    write_json,
    write_wav,
)
from testbed.harness import g711
from testbed.harness.appliance import Sip4ai
from testbed.harness.capture import CaptureResult, PacketCapture
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from testbed.harness.rtp import RtpStream
from testbed.harness.sipp import SippFactory, SippOptions, SippResult
from testbed.harness.tones import ToneLibrary, analyse_tone


CALLER_TONE_HZ = 440.0
FILE_TONE_HZ = 1000.0
SAMPLE_PERIOD_S = 0.5
LOUD_PEAK = 500


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, utime+stime seconds) for every thread of ``pid``."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            out[int(task.name)] = ((task / "comm").read_text().strip(), cpu_seconds(pid, task))
    return out


def thread_split(a: Sample, b: Sample, pid: int) -> dict[str, float]:
    """CPU % of one core per thread name over the window; the asyncio thread as 'main'."""
    split: dict[str, float] = {}
    for tid, (name, cpu) in b.thread_cpu.items():
        key = "main (asyncio)" if tid == pid else name
        before = a.thread_cpu.get(tid, (name, 0.0))[1]
        split[key] = split.get(key, 0.0) + 100.0 * (cpu - before) / (b.t - a.t)
    top = sorted(split.items(), key=lambda kv: -kv[1])[:8]
    return {k: round(v, 1) for k, v in top}


@dataclass
class Sample:
    t: float
    sip4ai_cpu: float
    mock_cpu: float | None
    sipp_cpu: float | None
    kamailio_cpu: float
    tcpdump_cpu: float | None
    machine_busy: int
    machine_total: int
    rss_kb: int
    threads: int
    active_calls: int | None
    thread_cpu: dict[int, tuple[str, float]]


@dataclass
class Sampler:
    """Samples /proc and sip4ai's /status every 0.5 s in a thread."""

    app: Sip4ai
    mock_pid: int | None
    kamailio_pids: list[int]
    sipp_pid: int | None = None
    tcpdump_pid: int | None = None
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                busy, total = machine_jiffies()
                sample = Sample(
                    t,
                    cpu_seconds(self.app.pid),
                    _maybe_cpu(self.mock_pid),
                    _maybe_cpu(self.sipp_pid),
                    group_cpu_seconds(self.kamailio_pids),
                    _maybe_cpu(self.tcpdump_pid),
                    busy,
                    total,
                    status_field(self.app.pid, "VmRSS"),
                    status_field(self.app.pid, "Threads"),
                    None,
                    thread_cpu(self.app.pid),
                )
            except OSError:
                return
            with contextlib.suppress(Exception):
                code, body = self.app.api("GET", "/status", timeout_s=2.0)
                if code == 200 and isinstance(body, dict):
                    sample.active_calls = int(body.get("active_calls", 0))
            self.samples.append(sample)
            self._stop.wait(max(0.0, SAMPLE_PERIOD_S - (time.monotonic() - t)))


def _maybe_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return cpu_seconds(pid)
    except OSError:
        return None


def _rate(a: Sample, b: Sample, attr: str) -> float | None:
    va: float | None = getattr(a, attr)
    vb: float | None = getattr(b, attr)
    if va is None or vb is None or b.t <= a.t:
        return None
    return round(100.0 * (vb - va) / (b.t - a.t), 1)


def window(samples: list[Sample], fallback: tuple[float, float]) -> tuple[int, int, str]:
    """Indices (first, last) of the samples while sip4ai had its most calls active at once."""
    active = [s.active_calls or 0 for s in samples]
    top = max(active, default=0)
    idx = [i for i, a in enumerate(active) if a == top and top > 0]
    if idx and samples[idx[-1]].t - samples[idx[0]].t >= 2.0:
        return idx[0], idx[-1], f"/status active_calls == {top}"
    lo, hi = fallback
    idx = [i for i, s in enumerate(samples) if lo <= s.t <= hi]
    if len(idx) >= 2:
        return idx[0], idx[-1], "SIPp schedule (active_calls never steady)"
    return 0, max(0, len(samples) - 1), "whole run"


def analyse_media(
    wire: CaptureResult, media_port: int, expect_hz: float, echo: bool
) -> dict[str, Any]:
    streams = wire.rtp_streams([media_port])
    outgoing = [s for s in streams if s.key.dst_port == media_port]
    from_caller: dict[int, int] = {}
    for s in streams:
        if s.key.src_port == media_port:
            from_caller[s.key.dst_port] = from_caller.get(s.key.dst_port, 0) + len(s.packets)
    pacing = pooled_pacing([s.packets for s in outgoing])
    tone_ok = 0
    deficits: list[int] = []
    loud_share: list[float] = []
    holes: list[int] = []
    for s in outgoing:
        loud, hole = _loud_frames(s)
        holes.append(hole)
        loud_share.append(loud / max(1, len(s.packets)))
        pcm = s.pcm()
        mid = pcm[len(pcm) // 2 : len(pcm) // 2 + 8000]
        if len(mid) >= 4000 and abs(analyse_tone(mid).dominant_hz - expect_hz) < 10:
            tone_ok += 1
        sent = from_caller.get(s.key.src_port)
        if echo and sent is not None:
            deficits.append(sent - loud)
    return {
        "sip4ai_streams": len(outgoing),
        "streams_with_expected_tone": tone_ok,
        "expected_tone_hz": expect_hz,
        "packets_to_caller": sum(len(s.packets) for s in outgoing),
        "packets_from_caller": sum(from_caller.values()),
        "pacing": pacing,
        "loud_share_median": round(float(np.median(loud_share)), 4) if loud_share else None,
        "echo_deficit_frames_median": int(np.median(deficits)) if deficits else None,
        "echo_deficit_frames_max": max(deficits) if deficits else None,
        "silent_frames_inside_audio_median": int(np.median(holes)) if holes else None,
        "silent_frames_inside_audio_max": max(holes) if holes else None,
        "capture_dropped_by_kernel": wire.dropped_by_kernel,
    }


def _loud_frames(stream: RtpStream) -> tuple[int, int]:
    """(tone frames, silent frames between the first and the last tone frame) of a stream."""
    packets = [p for p in stream.packets if p.payload_type in (0, 8) and len(p.payload) == 160]
    if not packets:
        return 0, 0
    law = g711.law_for_payload_type(packets[0].payload_type)
    pcm = g711.decode(b"".join(p.payload for p in packets), law).astype(np.int32)
    loud = np.flatnonzero(np.abs(pcm.reshape(-1, 160)).max(axis=1) > LOUD_PEAK)
    if not loud.size:
        return 0, 0
    return int(loud.size), int(loud[-1] - loud[0] + 1 - loud.size)


def wait_quiet(limit_pct: float, timeout_s: float) -> float:
    """Wait (bounded) until the machine is less than ``limit_pct`` busy over 2 s: the cores
    are shared with whatever else runs here. Returns the last reading."""
    deadline = time.monotonic() + timeout_s
    while True:
        b0, t0 = machine_jiffies()
        time.sleep(2.0)
        b1, t1 = machine_jiffies()
        busy = 100.0 * (b1 - b0) / max(1, t1 - t0)
        if busy < limit_pct or time.monotonic() >= deadline:
            return round(busy, 1)


def run_one(engine: str, mode: str, n: int, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    background = wait_quiet(args.quiet_pct, args.quiet_wait)
    run_dir = base / f"{engine}-{mode}-{n}"
    run_dir.mkdir(parents=True, exist_ok=True)
    hold_s, ramp_s = args.duration, args.ramp
    result: dict[str, Any] = {"engine": engine, "mode": mode, "calls": n, "run_dir": str(run_dir)}
    result["machine_busy_pct_before_run"] = background
    with contextlib.ExitStack() as stack:
        kam = Kamailio(run_dir / "kamailio")
        stack.enter_context(kam)
        config = sip_config(kam, rtp_ports=4 * n + 40, max_calls=max(n, 2), engine=engine)
        env = {"SIP4AI_LOG_LEVEL": args.log_level}
        mock: MockProcess | None = None
        expect_hz = CALLER_TONE_HZ
        if mode == "echo":
            mock = stack.enter_context(MockProcess(run_dir, "--mode", "echo"))
            config["openai"] = {"base_url": mock.base_url}
            env["OPENAI_API_KEY"] = "sk-bench"
        else:
            wav = write_wav(run_dir / "tone1k.wav", tone(FILE_TONE_HZ, 5.0, 16000, 0.3), 16000)
            env["AUDIO_FILE"] = str(wav)
            expect_hz = FILE_TONE_HZ
        app = Sip4ai(run_dir / "sip4ai", config=config, env=env)
        stack.enter_context(app)
        app.wait_registered()
        metrics_before = app.metrics()
        rss_idle_kb = status_field(app.pid, "VmRSS")
        kam_pid = int((kam.run_dir / "kamailio.pid").read_text().split()[0])
        sampler = Sampler(app, mock.pid if mock else None, group_pids(kam_pid))
        sipp = SippFactory(run_dir)
        stack.callback(sipp.close)
        media_port = free_port(udp=True, tcp=False, span=4)
        capture = PacketCapture(run_dir / "rtp.pcap", [media_port], bulk=True)
        capture.start()
        stack.callback(lambda: capture.stop() if capture.result is None else None)
        tcpdump = getattr(capture, "_proc", None)
        sampler.tcpdump_pid = tcpdump.pid if tcpdump is not None else None
        options = SippOptions(
            "uac_invite_rtp",
            remote=kam.address,
            service="aibot",
            audio=ToneLibrary(run_dir / "media").get(CALLER_TONE_HZ),
            calls=n,
            rate_cps=n / ramp_s,
            max_concurrent=n,
            call_duration_ms=round(hold_s * 1000),
            media_port=media_port,
            trace_messages=False,
            timeout_s=ramp_s + hold_s + 40,
        )
        sampler.start()
        stack.callback(sampler.stop)
        t0 = time.monotonic()
        proc = sipp.start(options)
        sampler.sipp_pid = proc.pid
        try:
            sipp_result: SippResult = proc.wait(options.timeout_s + 10)
        except TimeoutError:
            sipp_result = proc.stop()
        time.sleep(1.0)  # the last BYEs settle; sip4ai ends its calls
        sampler.stop()
        wire = capture.stop()
        metrics_after = app.metrics()
        log = app.log_text()
    samples = sampler.samples
    first, last, how = window(samples, (t0 + ramp_s + 1.0, t0 + hold_s - 1.0))
    a, b = samples[first], samples[last]
    active = [s.active_calls or 0 for s in samples]
    machine = (
        round(100.0 * (b.machine_busy - a.machine_busy) / (b.machine_total - a.machine_total), 1)
        if b.machine_total > a.machine_total
        else None
    )
    mine = [_rate(a, b, k) for k in ("sip4ai_cpu", "mock_cpu", "sipp_cpu", "kamailio_cpu")]
    mine.append(_rate(a, b, "tcpdump_cpu"))
    cores = os.cpu_count() or 1
    others = (
        round(machine * cores - sum(v for v in mine if v is not None), 1)
        if machine is not None
        else None
    )
    in_window = samples[first : last + 1]
    rss_kb = max(s.rss_kb for s in in_window)
    st = sipp_result.stats
    created = st.total_calls_created if st else 0
    ok = st.successful_calls if st else 0
    result.update(
        {
            "sipp": {
                "returncode": sipp_result.returncode,
                "created": created,
                "successful": ok,
                "failed": st.failed_calls if st else None,
                "success_rate": round(ok / n, 4) if n else None,
                "retransmissions": st.retransmissions if st else None,
                "unexpected_codes": list(sipp_result.unexpected_codes),
            },
            "max_active_calls": max(active, default=0),
            "window": {"how": how, "seconds": round(b.t - a.t, 1)},
            "cpu_pct_one_core": {
                "sip4ai": _rate(a, b, "sip4ai_cpu"),
                "mock": _rate(a, b, "mock_cpu"),
                "sipp": _rate(a, b, "sipp_cpu"),
                "kamailio": _rate(a, b, "kamailio_cpu"),
                "tcpdump": _rate(a, b, "tcpdump_cpu"),
                "machine_busy_pct_of_all_cores": machine,
                "other_processes_on_machine": others,
            },
            "sip4ai_threads_cpu_pct": thread_split(a, b, sampler.app.pid),
            "sip4ai_rss_mb": round(rss_kb / 1024, 1),
            "sip4ai_rss_idle_mb": round(rss_idle_kb / 1024, 1),
            "sip4ai_rss_per_call_mb": round((rss_kb - rss_idle_kb) / 1024 / n, 2),
            "sip4ai_threads": max(s.threads for s in in_window),
            **product_metrics(metrics_before, metrics_after),
            "media": analyse_media(wire, media_port, expect_hz, mode == "echo"),
            "sip4ai_log_errors": sum(1 for line in log.splitlines() if "ERROR" in line),
            "sip4ai_log_tracebacks": log.count("Traceback"),
        }
    )
    return result


def product_metrics(before: str, after: str) -> dict[str, Any]:
    """sip4ai's own counters over the run (None: the metric is not exposed)."""

    def delta(name: str, labels: str = "") -> float | None:
        b, a = prometheus_value(before, name, labels), prometheus_value(after, name, labels)
        return None if a is None else a - (b or 0.0)

    tick = "sip4ai_audio_send_deviation_seconds"
    ticks = delta(f"{tick}_count")
    late: dict[str, int | None] = {}
    for ms, le in ((5, "0.005"), (20, "0.02"), (40, "0.04")):
        on_time = delta(f"{tick}_bucket", f'le="{le}"') or 0.0
        late[f"ticks_late_over_{ms}ms"] = None if not ticks else int(ticks - on_time)
    return {
        "frames_lost_before_python": delta("sip4ai_audio_frames_lost_total"),
        "frames_lost_source": "sip4ai_audio_frames_lost_total (delta over the run, counted at "
        "each call's end)",
        "underruns_metric": delta("sip4ai_audio_underruns_total"),
        "bridge_ticks": None if ticks is None else int(ticks),
        **late,
    }


def row(r: dict[str, Any]) -> list[object]:
    cpu, media, sipp = r["cpu_pct_one_core"], r["media"], r["sipp"]
    pacing = media["pacing"]
    return [
        r.get("engine", "baresip"),
        r["mode"],
        r["calls"],
        f"{sipp['successful']}/{r['calls']}",
        r["max_active_calls"],
        cpu["sip4ai"],
        cpu["mock"],
        cpu["other_processes_on_machine"],
        cpu["machine_busy_pct_of_all_cores"],
        r["sip4ai_rss_mb"],
        r["sip4ai_rss_per_call_mb"],
        fmt(r["frames_lost_before_python"], 0)
        if r["frames_lost_before_python"] is not None
        else "n/e",
        pacing.get("deviation_p50_ms"),
        pacing.get("deviation_p99_ms"),
        pacing.get("gaps_over_60ms"),
        pacing.get("max_interval_ms"),
        media["echo_deficit_frames_max"],
        media["silent_frames_inside_audio_max"],
        f"{media['streams_with_expected_tone']}/{media['sip4ai_streams']}",
    ]


HEADERS = [
    "engine", "mode", "N", "SIPp ok", "max act", "sip4ai %", "mock %", "others %", "machine %",
    "RSS MB", "MB/call", "lost", "pace p50", "pace p99", ">60ms", "max iv", "echo def", "holes",
    "tone ok",
]  # fmt: skip


def saturated(r: dict[str, Any]) -> bool:
    cpu = r["cpu_pct_one_core"]
    machine, mock = cpu["machine_busy_pct_of_all_cores"], cpu["mock"]
    return (machine is not None and machine >= 85.0) or (mock is not None and mock >= 60.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--calls", default="10,50,100,200", help="comma-separated N values")
    parser.add_argument(
        "--engines", default="baresip", help="comma-separated SIP backends: baresip, pjsua2"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="call length, seconds")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds to start all N calls")
    parser.add_argument("--file-mode", choices=["auto", "always", "never"], default="auto")
    parser.add_argument(
        "--quiet-pct", type=float, default=25.0, help="wait for the machine to be this idle"
    )
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="... at most this long")
    parser.add_argument("--log-level", default="INFO", help="sip4ai's SIP4AI_LOG_LEVEL")
    parser.add_argument("--run-dir", type=Path, default=RUNS_DIR / "capacity")
    parser.add_argument("--output", default="capacity.json")
    args = parser.parse_args(argv)
    if args.duration <= args.ramp:
        parser.error("--duration must exceed --ramp, or the N calls never overlap")
    ns = [int(x) for x in args.calls.split(",") if x.strip()]
    engines = [x.strip() for x in args.engines.split(",") if x.strip()]
    if not engines or any(e not in ("baresip", "pjsua2") for e in engines):
        parser.error("--engines takes baresip and/or pjsua2")
    raise_on_sigterm()
    base = args.run_dir / time.strftime("%Y%m%d-%H%M%S")
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    started = time.monotonic()

    def attempt(engine: str, mode: str, n: int) -> dict[str, Any] | None:
        try:
            with timed(f"{engine} {mode} N={n}"):
                r = run_one(engine, mode, n, args, base)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failed N must not hide the others' figures
            error = f"{type(exc).__name__}: {exc}"
            errors.append({"engine": engine, "mode": mode, "calls": n, "error": error})
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            return None
        results.append(r)
        print(table(HEADERS, [row(r)]), flush=True)
        return r

    try:
        for engine in engines:
            echo = [attempt(engine, "echo", n) for n in ns]
            for n, r in zip(ns, echo, strict=True):
                wanted = args.file_mode == "always" or (
                    args.file_mode == "auto" and (r is None or saturated(r))
                )
                if wanted:
                    attempt(engine, "file", n)
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    out = {
        "benchmark": "capacity",
        "command": "python -m bench.capacity " + " ".join(sys.argv[1:] if argv is None else argv),
        "host": host_info(),
        "settings": {
            "calls": ns,
            "engines": engines,
            "call_duration_s": args.duration,
            "ramp_s": args.ramp,
            "all_calls_overlap_s": args.duration - args.ramp,
            "sip4ai_log_level": args.log_level,
            "jitter_buffer_ms": 0,
            "caller_tone_hz": CALLER_TONE_HZ,
            "file_mode_tone_hz": FILE_TONE_HZ,
        },
        "targets": {
            "calls": 200,
            "success_rate": 1.0,
            "frames_lost": 0,
            "pacing_deviation_p99_ms": 5.0,
        },
        "runs": results,
        "errors": errors,
        "wall_s": round(time.monotonic() - started, 1),
        "legend": {
            "cpu_pct_one_core": "utime+stime over the window, 100 = one core",
            "pacing": "sip4ai -> SIPp RTP, |interval - 20 ms| pooled over all streams",
            "echo_deficit": "caller frames sent minus tone frames echoed back, per call (max)",
            "holes": "silent frames between a stream's first and last tone frame (max)",
            "others": "CPU % (one core = 100) of processes on the machine not started here",
            "lost": "sip4ai_audio_frames_lost_total delta; n/e = not exposed",
        },
    }
    path = write_json(args.output, out)
    print()
    print(table(HEADERS, [row(r) for r in results]))
    for e in errors:
        print(f"FAILED {e['engine']} {e['mode']} N={e['calls']}: {e['error']}")
    print(f"\nwrote {path} ({out['wall_s']} s)")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
