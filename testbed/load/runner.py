"""One load run: Kamailio, the AI side, sip4ai, SIPp traffic, sampling, then the report.

Profiles (``--profile``):

* ``inbound``: SIPp (load_inbound.xml) places ``calls`` calls to aibot at ``rate_cps``, each
  ``duration_s`` long, at most ``calls`` at once.
* ``ramp``: the same calls, but the rate climbs from rate/ramp_s to rate_cps over about
  ``ramp_s`` seconds (SIPp -rate_increase, in whole calls/s per second).
* ``outbound``: sip4ai places the calls itself, POST /api/calls at ``rate_cps``, to a SIPp
  callee (load_uas.xml) that answers and hangs up after ``duration_s``.

The AI side (``--ai``): ``mock`` = the OpenAI mock streaming scripted replies (with a greeting)
while the far party's talk pattern makes turns and barge-ins (testbed.load.media); ``file`` =
AUDIO_FILE mode (no provider), with ``--audio-file`` or a generated speech-like WAV.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from testbed.harness.appliance import Sip4ai
from testbed.harness.capture import PacketCapture
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from testbed.harness.rtp import rtp_streams
from testbed.harness.scenario import openai_mock_process
from testbed.harness.sipp import SippFactory, SippOptions, SippProcess, SippResult
from testbed.load import media, report
from testbed.load.outbound import OutboundDriver, OutboundResult
from testbed.load.procstat import Sample, Sampler, load_average, rss_kb, status_active_calls


REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "bench" / "results"
OUTBOUND_TARGET = "+15550100"
"""The number outbound load calls dial; Kamailio routes it statically to the SIPp callee."""
SETTLE_S = 20.0
"""After SIPp is done: how long sip4ai may take to close its last calls."""

Profile = Literal["inbound", "ramp", "outbound"]
AiSide = Literal["mock", "file"]


@dataclass(frozen=True)
class LoadOptions:
    calls: int = 20
    """Calls placed, and the most allowed at once (SIPp -l, sip4ai max_calls)."""
    rate_cps: float = 5.0
    duration_s: float = 10.0
    """Length of each call (the far party hangs up after it)."""
    profile: Profile = "inbound"
    ai: AiSide = "mock"
    audio_file: Path | None = None
    ramp_s: float = 10.0
    max_calls: int | None = None
    """sip4ai's sip.max_calls; None: ``calls`` (set it lower to see refused calls reported)."""
    capture: bool = True
    """tcpdump of sip4ai's outgoing RTP for wire pacing (needs root and tcpdump)."""
    log_level: str = "INFO"
    pacing_target_p99_ms: float = 5.0
    run_dir: Path = Path("/tmp/sip4ai-load")


class DstPortCapture(PacketCapture):
    """tcpdump of UDP *to* one port only: sip4ai's RTP towards SIPp, half the packets to parse."""

    @property
    def bpf_filter(self) -> str:
        return f"udp and dst port {self.ports[0]}"


def capture_possible() -> bool:
    return os.geteuid() == 0 and shutil.which("tcpdump") is not None


def git_revision() -> str:
    """HEAD's short hash, with ``+dirty`` when sip4ai/ has uncommitted changes (the build
    measured is then not exactly HEAD)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "sip4ai")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def sip4ai_config(kam: Kamailio, opts: LoadOptions, ai_url: str | None) -> dict[str, Any]:
    span = 4 * opts.calls + 40  # RTP + RTCP per call, with room
    rtp = free_port(udp=True, tcp=False, span=span)
    config: dict[str, Any] = {
        "sip": {
            "username": "aibot",
            "password": "aibotpw",
            "domain": kam.address,
            "server": kam.address,
            "listen": f"127.0.0.1:{free_port(udp=True, tcp=True)}",
            "rtp_port_min": rtp,
            "rtp_port_max": rtp + span - 1,
            "answer_timeout_s": 5.0,
            "max_calls": opts.max_calls or opts.calls,
            "jitter_buffer_ms": 0,
        }
    }
    if ai_url is not None:
        config["openai"] = {"base_url": ai_url, "greeting": media.GREETING}
    return config


@contextlib.contextmanager
def ai_side(opts: LoadOptions, run_dir: Path) -> Iterator[tuple[str | None, dict[str, str]]]:
    """Yields (openai base_url or None, extra environment for sip4ai)."""
    if opts.ai == "mock":
        script = media.write_mock_script(run_dir / "mock_script.json")
        with openai_mock_process(run_dir, "--script", str(script)) as url:
            yield url, {"OPENAI_API_KEY": "sk-load"}
        return
    wav = opts.audio_file or media.write_ai_wav(run_dir / "ai_audio.wav")
    yield None, {"AUDIO_FILE": str(Path(wav).resolve())}


def sipp_options(opts: LoadOptions, kam: Kamailio, talk: Any, media_port: int) -> SippOptions:
    length_ms = round(opts.duration_s * 1000)
    spread_s = opts.calls / opts.rate_cps + (opts.ramp_s if opts.profile == "ramp" else 0.0)
    common: dict[str, Any] = {
        "audio": talk,
        "calls": opts.calls,
        "call_duration_ms": length_ms,
        "media_port": media_port,
        "trace_messages": False,
        "timeout_s": spread_s + opts.duration_s + 60.0,
        "recv_timeout_ms": 20000,
    }
    if opts.profile == "outbound":
        return SippOptions("load_uas", **common)
    extra: tuple[str, ...] = ()
    rate = opts.rate_cps
    if opts.profile == "ramp":
        # SIPp's -rate_increase takes whole calls/s: the climb takes about ramp_s seconds
        step = max(1, round(opts.rate_cps / max(1.0, opts.ramp_s)))
        rate = min(float(step), opts.rate_cps)
        extra = (
            "-rate_increase",
            str(step),
            "-rate_interval",
            "1",
            "-rate_max",
            f"{opts.rate_cps:g}",
            "-no_rate_quit",
        )
    return SippOptions(
        "load_inbound",
        remote=kam.address,
        service="aibot",
        rate_cps=rate,
        max_concurrent=opts.calls,
        extra_args=extra,
        **common,
    )


def sipp_peak_calls(result: SippResult) -> int | None:
    """Highest CurrentCall of SIPp's per-second statistics rows."""
    try:
        lines = (result.directory / "stat.csv").read_text().splitlines()
    except OSError:
        return None
    rows = [line.rstrip(";").split(";") for line in lines if line.strip()]
    if len(rows) < 2 or "CurrentCall" not in rows[0]:
        return None
    col = rows[0].index("CurrentCall")
    values = [int(r[col]) for r in rows[1:] if len(r) > col and r[col].strip().isdigit()]
    return max(values, default=None)


def all_records(app: Sip4ai) -> list[dict[str, Any]]:
    """Every call record of this sip4ai (GET /api/calls, paged)."""
    out: list[dict[str, Any]] = []
    while True:
        code, body = app.api("GET", f"/api/calls?limit=100&offset={len(out)}", timeout_s=10.0)
        if code != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/api/calls answered {code}: {body}")
        page = body.get("calls", [])
        out += page
        if not page or len(out) >= int(body.get("total", 0)):
            return out


def wait_idle(app: Sip4ai, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    read = status_active_calls(app.api)
    while time.monotonic() < deadline:
        if read() == 0:
            return
        time.sleep(0.25)


@dataclass
class Collected:
    """Everything a run gathered, before it is turned into figures."""

    sipp: SippResult
    outbound: OutboundResult | None
    records: list[dict[str, Any]]
    metrics_before: str
    metrics_after: str
    samples: list[Sample]
    idle_rss_kb: int
    pacing: dict[str, Any]
    log_errors: int
    run_dir: Path


def run(opts: LoadOptions) -> dict[str, Any]:
    """Run one load test and return its report (also written by ``main``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = opts.run_dir / f"{stamp}-{opts.profile}-{opts.ai}-{opts.calls}"
    run_dir.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    started = time.monotonic()
    collected = _drive(opts, run_dir)
    return build_report(opts, collected, load_before, time.monotonic() - started)


def _drive(opts: LoadOptions, run_dir: Path) -> Collected:
    talk = media.write_talk_pattern(run_dir / "talk.ulaw")
    with contextlib.ExitStack() as stack:
        kam = stack.enter_context(Kamailio(run_dir / "kamailio"))
        url, env = stack.enter_context(ai_side(opts, run_dir))
        env["SIP4AI_LOG_LEVEL"] = opts.log_level
        app = stack.enter_context(
            Sip4ai(run_dir / "sip4ai", config=sip4ai_config(kam, opts, url), env=env)
        )
        app.wait_registered()
        metrics_before = app.metrics()
        idle_rss = rss_kb(app.pid)
        media_port = free_port(udp=True, tcp=False, span=4)
        capture: PacketCapture | None = None
        if opts.capture and capture_possible():
            capture = DstPortCapture(run_dir / "rtp_to_far_party.pcap", [media_port], bulk=True)
            capture.start()
            stack.callback(lambda: capture.stop() if capture.result is None else None)
        sampler = Sampler(app.pid, status_active_calls(app.api))
        sampler.start()
        stack.callback(sampler.stop)
        factory = SippFactory(run_dir)
        stack.callback(factory.close)
        options = sipp_options(opts, kam, talk, media_port)
        driver: OutboundDriver | None = None
        proc: SippProcess = factory.start(options)
        if opts.profile == "outbound":
            kam.set_static_route(OUTBOUND_TARGET, proc.uri)
            driver = OutboundDriver(
                app.api, target=OUTBOUND_TARGET, calls=opts.calls, rate_cps=opts.rate_cps
            )
            driver.start()
        sipp = _finish_sipp(proc, driver, app, options.timeout_s)
        outbound = driver.stop() if driver is not None else None
        wait_idle(app, SETTLE_S)
        samples = sampler.stop()
        pacing: dict[str, Any] = {"source": "none: no capture (needs root and tcpdump)"}
        if capture is not None:
            wire = capture.stop()
            streams = [s.packets for s in rtp_streams(wire.datagrams)]
            pacing = {
                "source": "tcpdump of sip4ai's RTP to the far party, |interval - 20 ms| pooled",
                **report.pooled_pacing(streams),
                "capture_dropped_by_kernel": wire.dropped_by_kernel,
            }
        metrics_after = app.metrics()
        records = all_records(app)
        log = app.log_text()
    return Collected(
        sipp=sipp,
        outbound=outbound,
        records=records,
        metrics_before=metrics_before,
        metrics_after=metrics_after,
        samples=samples,
        idle_rss_kb=idle_rss,
        pacing=pacing,
        log_errors=sum(1 for line in log.splitlines() if " ERROR " in line or "Traceback" in line),
        run_dir=run_dir,
    )


def _finish_sipp(
    proc: SippProcess, driver: OutboundDriver | None, app: Sip4ai, timeout_s: float
) -> SippResult:
    """Wait for SIPp to finish its calls; stop it (soft, then hard) past its time.

    A SIPp callee exits only after ``calls`` answered calls, which never come when the API
    refused some or sip4ai failed to place them: once the driver is done, SIPp is stopped as
    soon as sip4ai has had no active call for 3 s."""
    deadline = time.monotonic() + timeout_s + 10.0
    if driver is None:
        with contextlib.suppress(TimeoutError):
            return proc.wait(timeout_s + 10.0)
        return proc.stop()
    driver.wait(timeout_s)
    active = status_active_calls(app.api)
    idle_since: float | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            return proc.wait(1.0)
        now = time.monotonic()
        idle_since = (idle_since or now) if active() == 0 else None
        if idle_since is not None and now - idle_since >= 3.0:
            break
    return proc.stop()


def build_report(
    opts: LoadOptions, c: Collected, load_before: tuple[float, ...], wall_s: float
) -> dict[str, Any]:
    st = c.sipp.stats
    placed = report.sipp_outcome(st, c.sipp.unexpected_codes, opts.calls)
    api_failures: dict[str, int] = {}
    if c.outbound is not None:
        api_failures = dict(c.outbound.failures)
        # a call the API refused never reached SIPp: it is not a SIPp 'not_started'
        placed["not_started"] = max(0, placed["not_started"] - sum(api_failures.values()))
    sip4ai = report.records_outcome(c.records)
    calls = report.combine_outcomes(opts.calls, placed, sip4ai, api_failures)
    underruns = report.metric_delta(
        c.metrics_before, c.metrics_after, "sip4ai_audio_underruns_total"
    )
    lost = report.metric_delta(c.metrics_before, c.metrics_after, "sip4ai_audio_frames_lost_total")
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "kit": "sip4ai load test (testbed.load)",
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
            "talk_pattern": {
                "loop_s": media.LOOP_S,
                "speech_s": [list(span) for span in media.SPEECH_SPANS_S],
                "turns_per_loop": media.TURNS_PER_LOOP,
                "barge_ins_per_loop": media.BARGE_INS_PER_LOOP,
            }
            if opts.ai == "mock"
            else None,
        },
        "host": {
            "git": git_revision(),
            "kernel": platform.release(),
            "cores": cores,
            "python": platform.python_version(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_before": list(load_before),
            "load_average_after": list(load_average()),
        },
        "calls": calls,
        "sipp": {**placed, "returncode": c.sipp.returncode, "timed_out": c.sipp.timed_out},
        "sip4ai_records": sip4ai,
        "api": None
        if c.outbound is None
        else {
            "posted": c.outbound.posted,
            "accepted": len(c.outbound.call_ids),
            "failed_by_reason": dict(c.outbound.failures),
            "post_ms_max": max(c.outbound.post_ms, default=None),
        },
        "peak_concurrency": {
            "sip4ai_active_calls": max((s.active_calls or 0 for s in c.samples), default=0),
            "sipp_current_calls": sipp_peak_calls(c.sipp),
        },
        "resources": report.resources(c.samples, c.idle_rss_kb, cores),
        "pacing": c.pacing,
        "send_ticks": report.send_ticks(c.metrics_before, c.metrics_after),
        "underruns": None if underruns is None else int(underruns),
        "frames_lost": None if lost is None else int(lost),
        "frames_lost_pct_of_caller_audio": None
        if lost is None
        else round(100.0 * lost / max(1.0, calls["succeeded"] * opts.duration_s * 50.0), 2),
        "turn_latency": report.turn_latency(c.metrics_before, c.metrics_after),
        "conversation": report.conversation(c.records, [text for text, _ in media.REPLIES])
        if opts.ai == "mock"
        else None,
        "sip4ai_log_error_lines": c.log_errors,
        "run_dir": str(c.run_dir),
        "wall_s": round(wall_s, 1),
    }
    out["verdict"] = report.verdict(calls, c.pacing, opts.pacing_target_p99_ms)
    return out
