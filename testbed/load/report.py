"""The load report: pure functions from what a run collected to figures, plus the table.

Inputs are plain data: SIPp's final statistics, sip4ai's call records (GET /api/calls), two
/metrics texts (before and after the run), /proc samples and the RTP sip4ai sent. Nothing here
does I/O, so every figure can be checked on recorded inputs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from testbed.harness.rtp import RtpPacket
from testbed.harness.sipp_stats import SippStats
from testbed.load.procstat import Sample


FRAME_MS = 20.0
EXPECTED_END = "remote_hangup"
"""The far party (SIPp) hangs up every load call itself, so that is how a good call ends."""
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


# ----- Prometheus text ---------------------------------------------------------------------------


def metric_sum(text: str, name: str, labels: str = "") -> float | None:
    """Sum of the samples of ``name`` whose label text contains ``labels``; None if absent."""
    total: float | None = None
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name and labels in (match.group(2) or ""):
            total = (total or 0.0) + float(match.group(3))
    return total


def metric_delta(before: str, after: str, name: str, labels: str = "") -> float | None:
    """``name`` after minus before (None: not exposed by this sip4ai)."""
    end = metric_sum(after, name, labels)
    return None if end is None else end - (metric_sum(before, name, labels) or 0.0)


def _bucket_counts(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` by upper bound, summed over label sets."""
    counts: dict[float, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) != f"{name}_bucket":
            continue
        le = re.search(r'le="([^"]+)"', match.group(2) or "")
        if le:
            bound = float(le.group(1))  # "+Inf" parses to inf
            counts[bound] = counts.get(bound, 0.0) + float(match.group(3))
    return counts


def histogram_delta(before: str, after: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of histogram ``name`` over the run, summed over
    its label sets, in ascending order (the last bound is +Inf)."""
    start, end = _bucket_counts(before, name), _bucket_counts(after, name)
    return [(bound, end[bound] - start.get(bound, 0.0)) for bound in sorted(end)]


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket holding the q-th observation.
    None without observations; the highest finite bound if it lands in the +Inf bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def histogram_bucket(
    buckets: Sequence[tuple[float, float]], q: float
) -> tuple[float, float] | None:
    """(lower, upper) bounds of the bucket holding the q-th observation (None: no data)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower = 0.0
    for bound, count in buckets:
        if count >= rank:
            return lower, bound
        lower = bound
    return lower, math.inf


def _bucket_ms(bucket: tuple[float, float] | None) -> list[float | None] | None:
    if bucket is None:
        return None
    return [_ms(b) if not math.isinf(b) else None for b in bucket]


def turn_latency(before: str, after: str) -> dict[str, Any]:
    """sip4ai_turn_latency_seconds over the run: count, exact mean, p50/p95 estimated from the
    histogram buckets (0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5 s) like histogram_quantile."""
    name = "sip4ai_turn_latency_seconds"
    buckets = histogram_delta(before, after, name)
    count = metric_delta(before, after, f"{name}_count")
    total = metric_delta(before, after, f"{name}_sum")
    mean = total / count if count and total is not None else None
    return {
        "source": f"{name} (p50/p95 interpolated inside histogram buckets; mean exact)",
        "turns": None if count is None else int(count),
        "mean_ms": _ms(mean),
        "p50_ms": _ms(histogram_quantile(buckets, 0.50)),
        "p95_ms": _ms(histogram_quantile(buckets, 0.95)),
        "p50_bucket_ms": _bucket_ms(histogram_bucket(buckets, 0.50)),
        "p95_bucket_ms": _bucket_ms(histogram_bucket(buckets, 0.95)),
    }


def send_ticks(before: str, after: str) -> dict[str, Any]:
    """sip4ai's own view of its 20 ms send ticks (sip4ai_audio_send_deviation_seconds)."""
    name = "sip4ai_audio_send_deviation_seconds"
    buckets = histogram_delta(before, after, name)
    if not buckets or buckets[-1][1] <= 0:
        return {"ticks": 0}
    total = buckets[-1][1]
    within = dict(buckets)
    late = {f"late_over_{ms}ms": int(total - within.get(ms / 1000.0, total)) for ms in (5, 20, 40)}
    return {
        "ticks": int(total),
        "p50_ms": _ms(histogram_quantile(buckets, 0.50)),
        "p99_ms": _ms(histogram_quantile(buckets, 0.99)),
        **late,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


# ----- calls -------------------------------------------------------------------------------------


def sipp_outcome(
    stats: SippStats | None, unexpected_codes: Sequence[int], planned: int
) -> dict[str, Any]:
    """Attempted / succeeded / failed by reason from SIPp's final statistics row.

    Reasons are SIPp's own ``Failed...(C)`` counters (``unexpected_message``,
    ``timeout_on_recv``, ``max_udp_retrans`` ...) and, for unexpected responses, their status
    codes (``unexpected_response_486``; every unexpected response, failing or not, is in
    ``unexpected_responses``). ``not_started``: planned calls SIPp never created."""
    if stats is None:
        return {
            "attempted": 0,
            "succeeded": 0,
            "failed": 0,
            "still_running": 0,
            "not_started": planned,
            "failed_by_reason": {},
            "retransmissions": None,
        }
    reasons: dict[str, int] = {}
    for column, value in stats.columns.items():
        if column.startswith("Failed") and column.endswith("(C)") and column != "FailedCall(C)":
            count = _int(value)
            if count:
                reasons[_snake(column[len("Failed") : -len("(C)")])] = count
    seen = dict(sorted(Counter(unexpected_codes).items()))
    if stats.failed_calls:
        # the failure responses among them; a late 1xx/2xx retransmission fails no call
        for code, count in seen.items():
            if code >= 300:
                reasons[f"unexpected_response_{code}"] = count
    return {
        "attempted": stats.total_calls_created,
        "succeeded": stats.successful_calls,
        "failed": stats.failed_calls,
        "still_running": stats.current_calls,
        "not_started": max(0, planned - stats.total_calls_created),
        "failed_by_reason": reasons,
        "unexpected_responses": {str(code): count for code, count in seen.items()},
        "retransmissions": stats.retransmissions,
    }


def _int(value: str) -> int:
    try:
        return int(float(value))
    except ValueError:
        return 0


def _snake(camel: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", camel).lower().replace("udpre", "udp_re")


def records_outcome(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """sip4ai's call records of the run: a call succeeded when it completed because the far
    party hung up; any other ending is a failure named ``status:end_reason``."""
    by_reason: Counter[str] = Counter()
    active = 0
    ok = 0
    for record in records:
        status, reason = record.get("status"), record.get("end_reason")
        if status not in ("completed", "failed"):
            active += 1
        elif status == "completed" and reason == EXPECTED_END:
            ok += 1
        else:
            by_reason[f"{status}:{reason}"] += 1
    return {
        "records": len(records),
        "succeeded": ok,
        "failed": sum(by_reason.values()),
        "still_active": active,
        "failed_by_reason": dict(sorted(by_reason.items())),
    }


def combine_outcomes(
    planned: int,
    placed: Mapping[str, Any],
    sip4ai: Mapping[str, Any],
    api_failures: Mapping[str, int],
) -> dict[str, Any]:
    """One verdict per planned call: a call succeeded only if the traffic generator and sip4ai
    both say so. ``failed`` is ``planned - succeeded``; its reasons come from both sides (one
    broken call can show up on both, so the reasons may add up to more than ``failed``)."""
    succeeded = min(int(placed["succeeded"]), int(sip4ai["succeeded"]))
    reasons: dict[str, int] = {}
    for key, value in placed["failed_by_reason"].items():
        reasons[f"sipp:{key}"] = int(value)
    for key, value in api_failures.items():
        reasons[f"api:{key}"] = int(value)
    for key, value in sip4ai["failed_by_reason"].items():
        reasons[f"sip4ai:{key}"] = int(value)
    if placed.get("not_started"):
        reasons["sipp:not_started"] = int(placed["not_started"])
    if sip4ai.get("still_active"):
        reasons["sip4ai:still_active_at_end"] = int(sip4ai["still_active"])
    missing = int(placed["attempted"]) - int(sip4ai["records"])
    if missing > 0:
        reasons["sip4ai:no_call_record"] = missing
    return {
        "planned": planned,
        "attempted": int(placed["attempted"]),
        "succeeded": succeeded,
        "failed": planned - succeeded,
        "failed_by_reason": dict(sorted(reasons.items())),
    }


def conversation(
    records: Sequence[Mapping[str, Any]], scripted_replies: Sequence[str]
) -> dict[str, Any]:
    """Turns and barge-ins as sip4ai recorded them: the transcripts of the call records.

    sip4ai keeps only what the caller heard of an AI reply, so an AI entry that is a strict
    prefix of one of the scripted replies is a reply cut short by a barge-in."""
    ai = user = cut = 0
    for record in records:
        for entry in record.get("transcript") or ():
            text = str(entry.get("text", "")).strip()
            if entry.get("speaker") == "user":
                user += 1
            elif entry.get("speaker") == "ai":
                ai += 1
                if any(r != text and r.startswith(text) for r in scripted_replies):
                    cut += 1
    return {
        "source": "sip4ai call records' transcripts",
        "user_turns": user,
        "ai_replies": ai,
        "ai_replies_cut_by_barge_in": cut,
    }


# ----- CPU, memory, concurrency ------------------------------------------------------------------


def peak_window(samples: Sequence[Sample]) -> tuple[int, int]:
    """Indices of the first and last sample at the run's highest active-call count."""
    active = [s.active_calls or 0 for s in samples]
    top = max(active, default=0)
    idx = [i for i, a in enumerate(active) if a == top] if top > 0 else []
    if len(idx) >= 2:
        return idx[0], idx[-1]
    return 0, max(0, len(samples) - 1)


def resources(samples: Sequence[Sample], idle_rss_kb: int, cores: int) -> dict[str, Any]:
    """sip4ai CPU (100 = one core) and RSS over the window of peak concurrency, per call."""
    if len(samples) < 2:
        return {"samples": len(samples)}
    first, last = peak_window(samples)
    a, b = samples[first], samples[last]
    if b.t - a.t < 1.0:  # a blip at the top: use the whole run instead
        a, b = samples[0], samples[-1]
    calls = max(s.active_calls or 0 for s in samples)
    cpu = 100.0 * (b.cpu_s - a.cpu_s) / (b.t - a.t)
    machine = (
        100.0 * (b.machine_busy - a.machine_busy) / (b.machine_total - a.machine_total)
        if b.machine_total > a.machine_total
        else None
    )
    kit = 100.0 * (b.kit_cpu_s - a.kit_cpu_s) / (b.t - a.t)
    others = None if machine is None else max(0.0, machine * cores - kit)
    rss = max(s.rss_kb for s in samples)
    per_call = cpu / calls if calls else None
    return {
        "window_s": round(b.t - a.t, 1),
        "window_active_calls": calls,
        "sip4ai_cpu_pct_one_core": round(cpu, 1),
        "sip4ai_cpu_pct_one_core_per_call": None if per_call is None else round(per_call, 3),
        "calls_per_core_at_this_cpu": None if not per_call else int(100.0 / per_call),
        "machine_busy_pct_all_cores": None if machine is None else round(machine, 1),
        "load_kit_cpu_pct_one_core": round(kit, 1),
        "other_processes_cpu_pct_one_core": None if others is None else round(others, 1),
        "cores": cores,
        "sip4ai_rss_idle_mb": round(idle_rss_kb / 1024, 1),
        "sip4ai_rss_peak_mb": round(rss / 1024, 1),
        "sip4ai_rss_per_call_mb": round((rss - idle_rss_kb) / 1024 / calls, 3) if calls else None,
    }


# ----- RTP pacing ---------------------------------------------------------------------------------


def pooled_pacing(streams: Sequence[Sequence[RtpPacket]]) -> dict[str, Any]:
    """|arrival interval - 20 ms| of sip4ai's outgoing RTP, pooled over all streams.

    Only intervals between consecutive RTP sequence numbers count, so a packet the capture
    missed is never taken for a sender gap (``seq_skips`` counts those left out)."""
    deviations: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    intervals: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    skipped = 0
    for packets in streams:
        if len(packets) < 2:
            continue
        t = np.array([p.arrival_s for p in packets], dtype=np.float64)
        seq = np.array([p.sequence for p in packets], dtype=np.int64)
        consecutive = np.mod(np.diff(seq), 65536) == 1
        iv = (np.diff(t) * 1000.0)[consecutive]
        skipped += int(np.count_nonzero(~consecutive))
        intervals.append(iv)
        deviations.append(np.abs(iv - FRAME_MS))
    if not intervals or not sum(i.size for i in intervals):
        return {"streams": 0, "intervals": 0, "seq_skips": skipped}
    iv_all, dev_all = np.concatenate(intervals), np.concatenate(deviations)
    return {
        "streams": len(intervals),
        "intervals": int(iv_all.size),
        "seq_skips": skipped,
        "p50_ms": round(float(np.percentile(dev_all, 50)), 3),
        "p99_ms": round(float(np.percentile(dev_all, 99)), 3),
        "max_interval_ms": round(float(iv_all.max()), 1),
        "gaps_over_60ms": int(np.count_nonzero(iv_all > 60.0)),
    }


# ----- the table ----------------------------------------------------------------------------------


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a two-column text table (what ``make loadtest`` prints)."""
    s, calls = report["settings"], report["calls"]
    res, pace, turns = report["resources"], report["pacing"], report["turn_latency"]
    ticks, talk = report["send_ticks"], report.get("conversation") or {}
    rows: list[tuple[str, object]] = [
        ("profile / AI side", f"{s['profile']} / {s['ai']}"),
        ("calls planned x length", f"{s['calls']} x {s['duration_s']:g} s at {s['rate_cps']:g}/s"),
        ("calls attempted", calls["attempted"]),
        ("calls succeeded", calls["succeeded"]),
        ("calls failed", calls["failed"]),
    ]
    for reason, count in calls["failed_by_reason"].items():
        rows.append((f"  failed: {reason}", count))
    rows += [
        ("peak concurrency (sip4ai)", report["peak_concurrency"]["sip4ai_active_calls"]),
        ("peak concurrency (SIPp)", report["peak_concurrency"]["sipp_current_calls"]),
        ("sip4ai CPU % of one core", res.get("sip4ai_cpu_pct_one_core")),
        ("  per call", res.get("sip4ai_cpu_pct_one_core_per_call")),
        ("  calls per core (sip4ai CPU only)", res.get("calls_per_core_at_this_cpu")),
        ("machine busy % (all cores)", res.get("machine_busy_pct_all_cores")),
        (
            "  of it: kit / others, % of one core",
            f"{_fmt(res.get('load_kit_cpu_pct_one_core'))}"
            f" / {_fmt(res.get('other_processes_cpu_pct_one_core'))}",
        ),
        (
            "sip4ai RSS idle / peak MB",
            f"{_fmt(res.get('sip4ai_rss_idle_mb'))} / {_fmt(res.get('sip4ai_rss_peak_mb'))}",
        ),
        ("  RSS per call MB", res.get("sip4ai_rss_per_call_mb")),
        (
            "pacing |iv-20ms| p50 / p99 ms",
            f"{_fmt(pace.get('p50_ms'))} / {_fmt(pace.get('p99_ms'))}",
        ),
        (
            "  RTP streams / gaps > 60 ms",
            f"{_fmt(pace.get('streams'))} / {_fmt(pace.get('gaps_over_60ms'))}",
        ),
        (
            "sip4ai send ticks p99 / late > 5 ms",
            f"{_fmt(ticks.get('p99_ms'))} / {_fmt(ticks.get('late_over_5ms'))}"
            f" of {_fmt(ticks.get('ticks'))}",
        ),
        ("underruns (sip4ai metric)", report["underruns"]),
        (
            "caller frames lost before sip4ai",
            f"{_fmt(report['frames_lost'])} (~{_fmt(report['frames_lost_pct_of_caller_audio'])} %)",
        ),
        (
            "turn latency p50 / p95 ms",
            f"{_fmt(turns.get('p50_ms'))} / {_fmt(turns.get('p95_ms'))}"
            f"  (buckets {_fmt(turns.get('p50_bucket_ms'))} / {_fmt(turns.get('p95_bucket_ms'))})",
        ),
        ("  turns / mean ms", f"{_fmt(turns.get('turns'))} / {_fmt(turns.get('mean_ms'))}"),
        (
            "user turns / AI replies / barge-ins",
            f"{_fmt(talk.get('user_turns'))} / {_fmt(talk.get('ai_replies'))}"
            f" / {_fmt(talk.get('ai_replies_cut_by_barge_in'))}",
        ),
        ("verdict", report["verdict"]["summary"]),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {_fmt(value)}" for label, value in rows)


def verdict(
    calls: Mapping[str, Any], pacing: Mapping[str, Any], target_pacing_p99_ms: float
) -> dict[str, Any]:
    """Did every planned call succeed, and was outgoing pacing p99 within the target?"""
    all_ok = calls["planned"] > 0 and calls["failed"] == 0
    p99 = pacing.get("p99_ms")
    pacing_ok = None if p99 is None else bool(p99 <= target_pacing_p99_ms)
    parts = ["all calls succeeded" if all_ok else f"{calls['failed']} call(s) failed"]
    if pacing_ok is not None:
        parts.append(
            f"pacing p99 {p99} ms {'<=' if pacing_ok else '>'} {target_pacing_p99_ms:g} ms"
        )
    return {
        "all_calls_succeeded": all_ok,
        "pacing_p99_within_target": pacing_ok,
        "pacing_target_p99_ms": target_pacing_p99_ms,
        "summary": "; ".join(parts),
    }
