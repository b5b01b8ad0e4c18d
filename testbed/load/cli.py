"""``python -m testbed.load``: run one load test, print the table, write the JSON report.

    python -m testbed.load --calls 200 --rate 20 --duration 30            # inbound, OpenAI mock
    python -m testbed.load --calls 200 --rate 20 --duration 30 --ai file  # AUDIO_FILE mode
    python -m testbed.load --profile outbound --calls 50 --rate 5 --duration 20
    python -m testbed.load --profile ramp --calls 200 --rate 40 --ramp 10 --duration 30

``make loadtest N=.. RATE=.. DURATION=..`` runs the first form. Exit code 0 when every call
succeeded, 1 when some failed, 2 on a broken run (a process did not start).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.load.report import format_table
from testbed.load.runner import RESULTS_DIR, LoadOptions, run


def parse_args(argv: Sequence[str] | None) -> tuple[LoadOptions, Path]:
    p = argparse.ArgumentParser(
        prog="python -m testbed.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--calls",
        "-n",
        type=int,
        default=20,
        help="calls to place; also the most at once (default 20)",
    )
    p.add_argument("--rate", type=float, default=5.0, help="new calls per second (default 5)")
    p.add_argument(
        "--duration", type=float, default=10.0, help="length of each call in seconds (default 10)"
    )
    p.add_argument("--profile", choices=["inbound", "ramp", "outbound"], default="inbound")
    p.add_argument(
        "--ai",
        choices=["mock", "file"],
        default="mock",
        help="mock: the OpenAI mock with scripted replies and barge-ins; file: AUDIO_FILE mode",
    )
    p.add_argument(
        "--audio-file",
        type=Path,
        help="WAV for AUDIO_FILE mode (implies --ai file); default: a generated one",
    )
    p.add_argument(
        "--ramp",
        type=float,
        default=10.0,
        help="ramp profile: seconds to climb to --rate (default 10)",
    )
    p.add_argument(
        "--max-calls",
        type=int,
        help="sip4ai's sip.max_calls (default: --calls; set it lower to see refusals reported)",
    )
    p.add_argument(
        "--no-capture",
        action="store_true",
        help="skip the tcpdump of outgoing RTP (then no wire pacing figures)",
    )
    p.add_argument("--log-level", default="INFO", help="sip4ai's SIP4AI_LOG_LEVEL")
    p.add_argument(
        "--run-dir",
        type=Path,
        default=Path("/tmp/sip4ai-load"),
        help="where logs, pcaps and SIPp files go",
    )
    p.add_argument(
        "--output", type=Path, help="report path (default bench/results/loadtest-<stamp>.json)"
    )
    a = p.parse_args(argv)
    if a.calls < 1 or a.rate <= 0 or a.duration <= 0:
        p.error("--calls, --rate and --duration must be positive")
    opts = LoadOptions(
        calls=a.calls,
        rate_cps=a.rate,
        duration_s=a.duration,
        profile=a.profile,
        ai="file" if a.audio_file else a.ai,
        audio_file=a.audio_file,
        ramp_s=a.ramp,
        max_calls=a.max_calls,
        capture=not a.no_capture,
        log_level=a.log_level,
        run_dir=a.run_dir,
    )
    output = a.output or RESULTS_DIR / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return opts, output


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    opts, output = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _sigterm)  # unwind like Ctrl-C: all get stopped
    overlap = opts.rate_cps * opts.duration_s
    if opts.calls > overlap:
        print(f"note: calls at this rate and length overlap at most ~{overlap:.0f} at once")
    plan = f"{opts.calls} calls x {opts.duration_s:g} s at {opts.rate_cps:g}/s"
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] load test: {opts.profile}, AI side {opts.ai}, {plan} ...", flush=True)
    try:
        result: dict[str, Any] = run(opts)
    except KeyboardInterrupt:
        print("interrupted: every process the kit started was stopped", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"\nreport: {output}\nlogs, pcaps, SIPp files: {result['run_dir']}")
    return 0 if result["verdict"]["all_calls_succeeded"] else 1
