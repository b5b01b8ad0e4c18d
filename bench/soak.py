"""Soak: N simultaneous calls churning for a long time; RSS growth and stuck calls.

Run: ``make soak`` (30 minutes) or ``.venv/bin/python -m bench.soak --minutes 30`` (not in
CI). Prints progress every minute, then a table, and writes
``bench/results/soak-<stamp>.json``.

SIPp (testbed/sipp/load_inbound.xml) keeps ``--calls`` (20) calls up at once: each lasts
``--call-length`` seconds and a new one starts every call-length / calls seconds, until
``--minutes`` worth of calls have been placed. The AI side is the OpenAI mock with the load
kit's scripted replies, turns and barge-ins (``--ai file``: AUDIO_FILE mode). sip4ai runs
with max_calls 2 x ``--calls``, so a slow hang-up never turns into a refusal.

Every ``--sample-every`` seconds: sip4ai's RSS, CPU, threads and open file descriptors from
/proc, and GET /status (active calls with their durations). Reported:

* RSS growth: median RSS of the last tenth of the run minus that of the tenth after the
  warm-up (the first call-length), in MB and MB/hour, and the least-squares slope;
* stuck calls: calls /status showed active for longer than call length + ``--stuck-margin``
  s, and, after SIPp finished and sip4ai had time to settle, call records not completed or
  failed, or active calls left;
* the calls: SIPp's and sip4ai's outcomes by reason (as in ``make loadtest``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import raise_on_sigterm
from testbed.harness.appliance import Sip4ai
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from testbed.harness.sipp import SippFactory, SippOptions
from testbed.load import media, report
from testbed.load.procstat import cpu_seconds, load_average, rss_kb
from testbed.load.runner import LoadOptions, ai_side, all_records, git_revision, sip4ai_config


REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"


def _count(path: Path) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return -1


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def sample(app: Sip4ai, t0: float, stuck_after_s: float, stuck: dict[str, float]) -> dict[str, Any]:
    """One reading; calls active longer than ``stuck_after_s`` go into ``stuck`` (id -> s)."""
    active: int | None = None
    with contextlib.suppress(Exception):
        code, body = app.api("GET", "/status", timeout_s=5.0)
        if code == 200 and isinstance(body, dict):
            active = int(body["active_calls"])
            for call in body.get("calls", []):
                duration = float(call.get("duration") or 0.0)
                if duration > stuck_after_s:
                    stuck[call["id"]] = max(duration, stuck.get(call["id"], 0.0))
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "rss_kb": rss_kb(app.pid),
        "cpu_s": round(cpu_seconds(app.pid), 2),
        "threads": _threads(app.pid),
        "fds": _count(Path(f"/proc/{app.pid}/fd")),
        "active_calls": active,
    }


def rss_growth(
    samples: list[dict[str, Any]], warmup_s: float, steady_end_s: float
) -> dict[str, Any]:
    """RSS while the calls churn (after the warm-up, before SIPp stops placing calls): first
    tenth vs last tenth (medians) and the fitted slope; and idle before vs after all calls."""
    after = [s for s in samples if warmup_s <= s["t_s"] <= steady_end_s]
    idle = {
        "idle_before_mb": round(samples[0]["rss_kb"] / 1024, 1),
        "idle_after_drain_mb": round(samples[-1]["rss_kb"] / 1024, 1),
        "fds_idle_before_after": [samples[0]["fds"], samples[-1]["fds"]],
        "threads_idle_before_after": [samples[0]["threads"], samples[-1]["threads"]],
    }
    if len(after) < 4:
        return {"samples_in_steady_phase": len(after), **idle}
    tenth = max(1, len(after) // 10)
    first = float(np.median([s["rss_kb"] for s in after[:tenth]]))
    last = float(np.median([s["rss_kb"] for s in after[-tenth:]]))
    t = np.array([s["t_s"] for s in after], dtype=np.float64)
    rss = np.array([s["rss_kb"] for s in after], dtype=np.float64)
    slope_kb_s = float(np.polyfit(t, rss, 1)[0]) if np.ptp(t) > 0 else 0.0
    hours = (after[-1]["t_s"] - after[0]["t_s"]) / 3600.0
    return {
        "samples_in_steady_phase": len(after),
        "steady_phase_s": [round(after[0]["t_s"]), round(after[-1]["t_s"])],
        "rss_start_mb": round(first / 1024, 1),
        "rss_end_mb": round(last / 1024, 1),
        "rss_peak_mb": round(max(s["rss_kb"] for s in samples) / 1024, 1),
        "growth_mb": round((last - first) / 1024, 2),
        "growth_mb_per_hour": round((last - first) / 1024 / hours, 2) if hours > 0 else None,
        "fitted_slope_mb_per_hour": round(slope_kb_s * 3600 / 1024, 2),
        "fds_start_end": [after[0]["fds"], after[-1]["fds"]],
        "threads_start_end": [after[0]["threads"], after[-1]["threads"]],
        **idle,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir: Path = args.run_dir / f"{stamp}-soak"
    run_dir.mkdir(parents=True, exist_ok=True)
    rate = args.calls / args.call_length
    total = max(args.calls, math.ceil(args.minutes * 60.0 * rate))
    opts = LoadOptions(calls=2 * args.calls, ai=args.ai, log_level=args.log_level)
    load_before = load_average()
    samples: list[dict[str, Any]] = []
    stuck: dict[str, float] = {}
    talk = media.write_talk_pattern(run_dir / "talk.ulaw")
    with contextlib.ExitStack() as stack:
        kam = stack.enter_context(Kamailio(run_dir / "kamailio"))
        url, env = stack.enter_context(ai_side(opts, run_dir))
        env["SIP4AI_LOG_LEVEL"] = args.log_level
        app = stack.enter_context(
            Sip4ai(run_dir / "sip4ai", config=sip4ai_config(kam, opts, url), env=env)
        )
        app.wait_registered()
        factory = SippFactory(run_dir)
        stack.callback(factory.close)
        options = SippOptions(
            "load_inbound",
            remote=kam.address,
            service="aibot",
            audio=talk,
            calls=total,
            rate_cps=rate,
            max_concurrent=args.calls,
            call_duration_ms=round(args.call_length * 1000),
            media_port=free_port(udp=True, tcp=False, span=4),
            trace_messages=False,
            timeout_s=args.minutes * 60.0 + args.call_length + 120.0,
            recv_timeout_ms=20000,
        )
        t0 = time.monotonic()
        samples.append(sample(app, t0, math.inf, stuck))
        proc = factory.start(options)
        next_print = 60.0
        stuck_after = args.call_length + args.stuck_margin
        while proc.running():
            time.sleep(args.sample_every)
            samples.append(sample(app, t0, stuck_after, stuck))
            if samples[-1]["t_s"] >= next_print:
                s = samples[-1]
                print(
                    f"[{time.strftime('%H:%M:%S')}] {s['t_s'] / 60:.0f} min: "
                    f"{s['active_calls']} active, RSS {s['rss_kb'] / 1024:.1f} MB, "
                    f"{s['fds']} fds, {len(stuck)} stuck",
                    flush=True,
                )
                next_print += 60.0
            if time.monotonic() - t0 > options.timeout_s + 30.0:
                break
        sipp = proc.stop()
        settle_until = time.monotonic() + args.stuck_margin
        while time.monotonic() < settle_until and samples[-1]["active_calls"] != 0:
            time.sleep(1.0)
            samples.append(sample(app, t0, stuck_after, stuck))
        records = all_records(app)
        left_active = samples[-1]["active_calls"]
    placed = report.sipp_outcome(sipp.stats, sipp.unexpected_codes, total)
    sip4ai = report.records_outcome(records)
    calls = report.combine_outcomes(total, placed, sip4ai, {})
    not_closed = [r["id"] for r in records if r.get("status") not in ("completed", "failed")]
    return {
        "benchmark": "soak",
        "settings": {
            "minutes": args.minutes,
            "simultaneous_calls": args.calls,
            "call_length_s": args.call_length,
            "rate_cps": round(rate, 3),
            "calls_planned": total,
            "ai": args.ai,
            "sample_every_s": args.sample_every,
            "stuck_margin_s": args.stuck_margin,
            "sip4ai_log_level": args.log_level,
        },
        "host": {
            "git": git_revision(),
            "cores": os.cpu_count(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_before": list(load_before),
            "load_average_after": list(load_average()),
        },
        "calls": calls,
        "sipp": {**placed, "returncode": sipp.returncode, "timed_out": sipp.timed_out},
        "sip4ai_records": sip4ai,
        "rss": rss_growth(samples, args.call_length, args.minutes * 60.0),
        "stuck": {
            "active_longer_than_s": stuck_after,
            "calls_seen_stuck": len(stuck),
            "longest_s": round(max(stuck.values()), 1) if stuck else None,
            "records_not_closed_at_end": len(not_closed),
            "active_calls_at_end": left_active,
            "ids": sorted(stuck)[:20] + not_closed[:20],
        },
        "peak_active_calls": max((s["active_calls"] or 0 for s in samples), default=0),
        "samples": samples,
        "run_dir": str(run_dir),
    }


def table(result: dict[str, Any]) -> str:
    rss, stuck, calls = result["rss"], result["stuck"], result["calls"]
    rows = [
        (
            "minutes / simultaneous",
            f"{result['settings']['minutes']} / {result['settings']['simultaneous_calls']}",
        ),
        (
            "calls planned / succeeded / failed",
            f"{calls['planned']} / {calls['succeeded']} / {calls['failed']}",
        ),
        *((f"  failed: {k}", v) for k, v in calls["failed_by_reason"].items()),
        ("peak active calls", result["peak_active_calls"]),
        ("RSS start -> end MB", f"{rss.get('rss_start_mb')} -> {rss.get('rss_end_mb')}"),
        ("RSS growth MB (/hour)", f"{rss.get('growth_mb')} ({rss.get('growth_mb_per_hour')})"),
        ("RSS fitted slope MB/hour", rss.get("fitted_slope_mb_per_hour")),
        (
            "fds / threads start -> end",
            f"{rss.get('fds_start_end')} / {rss.get('threads_start_end')}",
        ),
        (
            "RSS idle before -> after drain MB",
            f"{rss.get('idle_before_mb')} -> {rss.get('idle_after_drain_mb')}",
        ),
        (
            "fds / threads idle before -> after",
            f"{rss.get('fds_idle_before_after')} / {rss.get('threads_idle_before_after')}",
        ),
        (f"calls active > {stuck['active_longer_than_s']:g} s", stuck["calls_seen_stuck"]),
        ("records not closed at end", stuck["records_not_closed_at_end"]),
        ("active calls at end", stuck["active_calls_at_end"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--calls", type=int, default=20, help="simultaneous calls (default 20)")
    p.add_argument("--call-length", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--ai", choices=["mock", "file"], default="mock")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds (default 5)")
    p.add_argument(
        "--stuck-margin",
        type=float,
        default=15.0,
        help="a call active this long past its length counts as stuck (default 15 s)",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--run-dir", type=Path, default=Path("/tmp/sip4ai-load"))
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    raise_on_sigterm()
    output = args.output or RESULTS_DIR / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    print(
        f"[{time.strftime('%H:%M:%S')}] soak: {args.calls} calls at once for "
        f"{args.minutes:g} min ...",
        flush=True,
    )
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nreport: {output}\nlogs: {result['run_dir']}")
    stuck = result["stuck"]
    clean = not (stuck["calls_seen_stuck"] or stuck["records_not_closed_at_end"])
    return 0 if clean and result["calls"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
