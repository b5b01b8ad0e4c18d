"""Latency of the audio path through the real sip4ai process, side by side in one run.

Run: ``.venv/bin/python -m bench.latency`` (root: tcpdump on lo). Prints a table and writes
``bench/results/latency.json``. One Kamailio serves every part; each part starts its own
callee side (sip4ai + OpenAI mock, SIPp -rtp_echo, or a bare baresip-python loopback UA).

* P1 echo-loop round trip. The caller (SIPp uac_invite_rtp) plays 100 ms 1 kHz bursts every
  400 ms. From a capture of the caller's media port: the onset of a burst in the caller's
  outgoing RTP (packet time + sample offset) to the same onset in the RTP coming back, for
  caller -> Kamailio -> sip4ai -> OpenAI mock (echo) -> sip4ai -> caller, and for the same
  caller against (a) SIPp's -rtp_echo (the wire floor) and (b) a baresip-python UA that writes
  back every frame it reads (polled every 2 ms): the SIP library's own loopback without
  sip4ai's bridge, the baseline of the target (<= 20 ms extra at p50).
* P2 barge-in. The mock (scripted) plays a 4 s greeting; the caller starts talking (300 Hz)
  1.2 s into the call. From the mock's ``input_audio_buffer.speech_started`` (its events log,
  CLOCK_MONOTONIC, converted to wall time with time.time() - time.monotonic() read in this
  process; CLOCK_MONOTONIC is system-wide) to the first silent RTP packet towards the caller.
* P3 outgoing pacing at one call: |interval - 20 ms| of sip4ai's RTP to the caller while the
  greeting is buffered (first greeting packet to speech_started); underruns as silent packets
  inside that stretch on the wire and as sip4ai_audio_underruns_total (None: not exposed).
* P7 turn latency per provider (bench/provider_turns.py): caller end of speech -> first reply
  sample, each provider's mock at zero think time, minus the mock's VAD hangover.
* P6 call set-up, from a capture of Kamailio's and sip4ai's SIP ports, a TCP SYN capture of
  the mock's port and the mock's events log: INVITE (arriving at sip4ai) -> 180 and -> 200;
  the provider handshake = TCP SYN to the mock -> the mock's ``session.updated``; answer ->
  first greeting packet, minus the mock's first audio delta when it came after the answer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import provider_turns
from bench._common import (
    RUNS_DIR,
    SILENCE_PEAK,
    FilteredCapture,
    LoopbackUA,
    MockProcess,
    SipMessage,
    echo_uas_scenario,
    fmt,
    host_info,
    onset_offset,
    peak,
    pooled_pacing,
    prometheus_value,
    raise_on_sigterm,
    record_times,
    sdp_audio_port,
    sip_config,
    sip_messages,
    sip_port_of,
    stats,
    table,
    tcp_syn_filter,
    timed,
    tone,
    wall_minus_monotonic,
    write_json,
)
from bench._lab import Lab, lab
from bench.provider_turns import measure_all
from testbed.harness import g711
from testbed.harness.appliance import Sip4ai
from testbed.harness.capture import CaptureResult, PacketCapture
from testbed.harness.ports import free_port
from testbed.harness.rtp import RtpPacket
from testbed.harness.sipp import SippOptions, SippResult
from testbed.harness.tones import G711File


BURST_PERIOD_S = 0.4
BURST_S = 0.1
MATCH_WINDOW_S = 0.3
GREETING_MS = 4000
SPEECH_AT_S = 1.2
SPEECH_S = 0.8
CALL_S = 4.5
TARGETS = {
    "p1_extra_p50_ms": 20.0,
    "p2_p95_ms": 40.0,
    "p3_deviation_p99_ms": 2.0,
    "p3_underruns": 0,
    "p6_invite_to_180_ms": 20.0,
    "p6_invite_to_200_minus_handshake_ms": 30.0,
    "p6_answer_to_greeting_minus_mock_ms": 40.0,
}


def burst_file(path: Path) -> G711File:
    """8 s of mu-law: a 1 kHz burst of BURST_S every BURST_PERIOD_S, starting on a frame."""
    period = np.zeros(round(BURST_PERIOD_S * 8000), np.int16)
    burst = tone(1000.0, BURST_S, 8000, 0.5)
    period[: len(burst)] = burst
    path.write_bytes(g711.encode(np.tile(period, round(8.0 / BURST_PERIOD_S)), "ulaw"))
    return G711File(path, "ulaw")


def turn_file(path: Path) -> G711File:
    """Silence, SPEECH_S of 300 Hz at SPEECH_AT_S (the barge-in), silence to the end."""
    pcm = np.zeros(round(CALL_S * 8000) + 8000, np.int16)
    speech = tone(300.0, SPEECH_S, 8000, 0.5)
    start = round(SPEECH_AT_S * 8000)
    pcm[start : start + len(speech)] = speech
    path.write_bytes(g711.encode(pcm, "ulaw"))
    return G711File(path, "ulaw")


def onsets(packets: Sequence[RtpPacket]) -> list[float]:
    """Times of silent -> loud transitions: packet arrival + offset of the first loud sample."""
    out: list[float] = []
    previous_loud = False
    for p in packets:
        offset = onset_offset(p)
        if offset is not None and not previous_loud:
            out.append(p.arrival_s + offset / 8000.0)
        previous_loud = offset is not None
    return out


def round_trips(sent: Sequence[float], back: Sequence[float]) -> list[float]:
    """For each sent onset the first returned onset within MATCH_WINDOW_S, in ms."""
    back_arr = np.asarray(back)
    out: list[float] = []
    for t in sent:
        later = back_arr[(back_arr > t) & (back_arr < t + MATCH_WINDOW_S)]
        if later.size:
            out.append(round(float(later[0] - t) * 1000.0, 3))
    return out


def call_with_bursts(lab: Lab, label: str, service: str, seconds: float) -> dict[str, Any]:
    """One SIPp call playing bursts to ``service``; onset round trips from the capture."""
    media = free_port(udp=True, tcp=False, span=4)
    capture = FilteredCapture(lab.run_dir / f"p1-{label}.pcap", f"udp and port {media}")
    with capture:
        result = lab.sipp.run(
            SippOptions(
                "uac_invite_rtp",
                remote=lab.kamailio.address,
                service=service,
                audio=burst_file(lab.run_dir / "bursts.ulaw"),
                call_duration_ms=round(seconds * 1000),
                media_port=media,
                name=f"p1-{label}",
                timeout_s=seconds + 20,
            )
        )
    wire = capture.stop()
    streams = wire.rtp_streams([media])
    sent = [p for s in streams if s.key.src_port == media for p in s.packets]
    back = [p for s in streams if s.key.dst_port == media for p in s.packets]
    trips = round_trips(onsets(sent), onsets(back))
    return {
        "path": label,
        "sipp_ok": result.ok,
        "sipp": None if result.ok else result.describe(),
        "bursts_sent": len(onsets(sent)),
        "round_trip_ms": stats(trips),
        "return_pacing": pooled_pacing([s.packets for s in streams if s.key.dst_port == media]),
        "samples_ms": trips,
    }


def p1_sip4ai(lab: Lab, seconds: float) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        mock = stack.enter_context(MockProcess(lab.run_dir / "p1-mock", "--mode", "echo"))
        config = sip_config(lab.kamailio) | {"openai": {"base_url": mock.base_url}}
        env = lab.env | {"OPENAI_API_KEY": "sk-bench"}
        app = stack.enter_context(Sip4ai(lab.run_dir / "p1-sip4ai", config=config, env=env))
        app.wait_registered()
        return call_with_bursts(lab, "sip4ai+echo-mock", "aibot", seconds)


def p1_sipp_echo(lab: Lab, seconds: float) -> dict[str, Any]:
    scenario = echo_uas_scenario(lab.run_dir / "scenarios")
    uas = lab.sipp.start(
        SippOptions(scenario, rtp_echo=True, name="p1-uas-echo", timeout_s=seconds + 30)
    )
    try:
        lab.kamailio.set_static_route("echo", uas.uri)
        return call_with_bursts(lab, "sipp-rtp_echo", "echo", seconds)
    finally:
        uas.stop()


def p1_baresip(lab: Lab, seconds: float) -> dict[str, Any]:
    with LoopbackUA(lab.run_dir, lab.kamailio, "bob", "bobpw"):
        lab.kamailio.wait_registered("bob")
        return call_with_bursts(lab, "baresip-loopback", "bob", seconds)


# ----- P2 / P3 / P6 --------------------------------------------------------------------------


@dataclass
class MockConn:
    created: float
    updated: float | None = None
    first_audio: float | None = None
    speech_started: list[float] = field(default_factory=list)


def mock_connections(path: Path, offset: float) -> list[MockConn]:
    """The mock's events log per connection, times converted to wall clock (+ offset)."""
    conns: dict[int, MockConn] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event.get("dir") != "out":
            continue
        kind, t, number = event["type"], float(event["t"]) + offset, int(event["conn"])
        if kind == "session.created":
            conns[number] = MockConn(t)
        conn = conns.get(number)
        if conn is None:
            continue
        if kind == "session.updated" and conn.updated is None:
            conn.updated = t
        elif kind == "response.output_audio.delta" and conn.first_audio is None:
            conn.first_audio = t
        elif kind == "input_audio_buffer.speech_started":
            conn.speech_started.append(t)
    return [conns[k] for k in sorted(conns)]


def first(messages: Sequence[SipMessage], test: Callable[[SipMessage], bool]) -> SipMessage | None:
    return next((m for m in messages if test(m)), None)


def ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000.0, 3)


def analyse_call(
    msgs: Sequence[SipMessage],
    sip4ai_port: int,
    caller_port: int,
    media: int,
    wire: CaptureResult,
    conns: Sequence[MockConn],
    syns: Sequence[float],
    until: float,
) -> dict[str, Any]:
    """One call (``msgs`` share its Call-ID) of the scripted run."""
    inv = first(msgs, lambda m: m.dst_port == sip4ai_port and m.first_line.startswith("INVITE"))
    assert inv is not None

    def reply(code: str) -> SipMessage | None:
        return first(
            msgs,
            lambda m: (
                m.src_port == sip4ai_port
                and m.first_line.startswith(f"SIP/2.0 {code}")
                and "INVITE" in m.cseq
            ),
        )

    ringing, ok = reply("180"), reply("200")
    caller_inv = first(msgs, lambda m: m.src_port == caller_port and "INVITE" in m.first_line)
    caller_ok = first(
        msgs, lambda m: m.dst_port == caller_port and m.first_line.startswith("SIP/2.0 200")
    )
    answer = ok.time_s if ok else None
    conn = next((c for c in conns if inv.time_s <= c.created <= (answer or until)), None)
    syn = next((s for s in syns if inv.time_s <= s <= (conn.created if conn else until)), None)
    handshake = ms(syn, conn.updated if conn else None)
    rtp_port = sdp_audio_port(ok.body) if ok else None
    packets = [
        p
        for s in wire.rtp_streams([media])
        if s.key.src_port == rtp_port and s.key.dst_port == media
        for p in s.packets
        if inv.time_s <= p.arrival_s <= until
    ]
    loud = [peak(p) > SILENCE_PEAK for p in packets]
    greet = next((i for i, v in enumerate(loud) if v), None)
    out: dict[str, Any] = {
        "call_id": inv.call_id,
        "invite_to_180_ms": ms(inv.time_s, ringing.time_s if ringing else None),
        "invite_to_200_ms": ms(inv.time_s, answer),
        "caller_invite_to_200_ms": ms(
            caller_inv.time_s if caller_inv else None, caller_ok.time_s if caller_ok else None
        ),
        "invite_to_syn_ms": ms(inv.time_s, syn),
        "handshake_ms": handshake,
        "mock_first_audio_after_answer_ms": ms(answer, conn.first_audio if conn else None),
        "packets_to_caller": len(packets),
    }
    i200 = out["invite_to_200_ms"]
    out["invite_to_200_minus_handshake_ms"] = (
        round(i200 - handshake, 3) if i200 is not None and handshake is not None else None
    )
    if greet is None or answer is None:
        return out | {"error": "no greeting audio reached the caller"}
    t_greet = packets[greet].arrival_s
    out["answer_to_greeting_ms"] = ms(answer, t_greet)
    mock_audio = conn.first_audio if conn and conn.first_audio else answer
    out["answer_to_greeting_minus_mock_ms"] = ms(max(answer, mock_audio), t_greet)
    speech = [t for t in (conn.speech_started if conn else []) if t > t_greet]
    if not speech:
        return out | {"error": "no speech_started during the greeting"}
    ss = speech[0]
    before = [i for i, p in enumerate(packets) if p.arrival_s <= ss]
    if not before or not loud[before[-1]]:
        return out | {"error": "the greeting had already ended at speech_started"}
    silent = next((i for i in range(before[-1] + 1, len(packets)) if not loud[i]), None)
    out["bargein_ms"] = ms(ss, packets[silent].arrival_s) if silent is not None else None
    segment = packets[greet : before[-1] + 1]
    out["greeting_segment"] = {
        "packets": len(segment),
        "underrun_frames": sum(1 for v in loud[greet : before[-1] + 1] if not v),
    }
    out["_segment"] = segment
    return out


def p2_p3_p6(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = lab.run_dir / "scripted"
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "script.json"
    replies = [
        {"text": "Hello and welcome, how can I help", "duration_ms": GREETING_MS, "tone_hz": 600},
        {"text": "Sure.", "duration_ms": 1000, "tone_hz": 800},
    ]
    script.write_text(json.dumps({"replies": replies}))
    events = run_dir / "mock-events.jsonl"
    offset_before = wall_minus_monotonic()
    with contextlib.ExitStack() as stack:
        mock = MockProcess(
            run_dir, "--script", str(script), "--think-ms", str(args.think_ms),
            "--speed", str(args.speed), events_log=events,
        )  # fmt: skip
        stack.enter_context(mock)
        config = sip_config(lab.kamailio)
        config["openai"] = {"base_url": mock.base_url, "greeting": "Hello and welcome"}
        env = lab.env | {"OPENAI_API_KEY": "sk-bench"}
        app = stack.enter_context(Sip4ai(run_dir / "sip4ai", config=config, env=env))
        app.wait_registered()
        sip4ai_port, media = sip_port_of(config), free_port(udp=True, tcp=False, span=4)
        caller_port = free_port(udp=True, tcp=True)
        ports = [lab.kamailio.sip_port, sip4ai_port, caller_port, media]
        capture = stack.enter_context(PacketCapture(run_dir / "sip-rtp.pcap", ports))
        syn_capture = FilteredCapture(run_dir / "syn.pcap", tcp_syn_filter(mock.port))
        stack.enter_context(syn_capture)
        result: SippResult = lab.sipp.run(
            SippOptions(
                "uac_invite_rtp",
                remote=lab.kamailio.address,
                service="aibot",
                audio=turn_file(run_dir / "turn.ulaw"),
                calls=args.calls,
                rate_cps=1.0,
                max_concurrent=1,
                call_duration_ms=round(CALL_S * 1000),
                local_port=caller_port,
                media_port=media,
                name="scripted-caller",
                timeout_s=args.calls * (CALL_S + 2) + 30,
            )
        )
        wire = capture.stop()
        syn_capture.stop()
        metrics = app.metrics()
    offset_after = wall_minus_monotonic()
    offset = (offset_before + offset_after) / 2
    conns = mock_connections(events, offset)
    syns = record_times(syn_capture.pcap_path)
    msgs = sip_messages(wire.datagrams)
    by_call: dict[str, list[SipMessage]] = {}
    for m in msgs:
        by_call.setdefault(m.call_id, []).append(m)
    starts = sorted(
        (m.time_s, cid)
        for cid, ms_ in by_call.items()
        for m in ms_[:1]
        if m.first_line.startswith("INVITE")
    )
    calls = []
    for k, (_, cid) in enumerate(starts):
        until = starts[k + 1][0] if k + 1 < len(starts) else float("inf")
        calls.append(
            analyse_call(by_call[cid], sip4ai_port, caller_port, media, wire, conns, syns, until)
        )
    segments = [c.pop("_segment") for c in calls if "_segment" in c]

    def col(key: str) -> list[float]:
        return [c[key] for c in calls if c.get(key) is not None]

    return {
        "sipp_ok": result.ok,
        "sipp": None if result.ok else result.describe(),
        "clock": {
            "wall_minus_monotonic_before_s": offset_before,
            "drift_ms": round((offset_after - offset_before) * 1000, 3),
        },
        "mock": {"think_ms": args.think_ms, "speed": args.speed, "greeting_ms": GREETING_MS},
        "p2_bargein_ms": stats(col("bargein_ms")),
        "p3": {
            "pacing_greeting": pooled_pacing(segments),
            "underrun_frames_in_greeting": sum(
                c["greeting_segment"]["underrun_frames"] for c in calls if "greeting_segment" in c
            ),
            "underrun_metric": prometheus_value(metrics, "sip4ai_audio_underruns_total"),
        },
        "p6": {
            key: stats(col(key))
            for key in (
                "invite_to_180_ms",
                "invite_to_200_ms",
                "caller_invite_to_200_ms",
                "invite_to_syn_ms",
                "handshake_ms",
                "invite_to_200_minus_handshake_ms",
                "answer_to_greeting_ms",
                "mock_first_audio_after_answer_ms",
                "answer_to_greeting_minus_mock_ms",
            )
        },
        "provider_connect_metric_mean_ms": _mean_ms(metrics, "sip4ai_provider_connect_seconds"),
        "calls": calls,
    }


def _mean_ms(metrics: str, histogram: str) -> float | None:
    total = prometheus_value(metrics, f"{histogram}_sum")
    count = prometheus_value(metrics, f"{histogram}_count")
    return round(1000 * total / count, 3) if total is not None and count else None


# ----- report ----------------------------------------------------------------------------------


def verdict(value: float | None, limit: float) -> str:
    return "-" if value is None else ("ok" if value <= limit else "MISSED")


def report(out: dict[str, Any]) -> str:
    p1 = {r["path"]: r for r in out["p1"]}
    lines = ["P1 echo-loop round trip (ms)"]
    rows = []
    for name, r in p1.items():
        rt, pace = r["round_trip_ms"], r["return_pacing"]
        rows.append([name, rt["n"], rt["p50"], rt["p95"], rt["max"], pace.get("deviation_p99_ms")])
    lines.append(table(["path", "n", "p50", "p95", "max", "return |iv-20| p99"], rows))
    for base, extra in out["p1_extra"].items():
        lines.append(
            f"sip4ai extra vs {base}: p50 {fmt(extra['extra_p50_ms'])} ms, "
            f"p95 {fmt(extra['extra_p95_ms'])} ms, ratio p50 {fmt(extra['ratio_p50'], 2)}"
        )
    s = out.get("scripted", {})
    if s:
        p6, p3 = s["p6"], s["p3"]
        pacing = p3["pacing_greeting"]
        rows = [
            ["P1 extra p50 vs baresip loopback", out["p1_extra"]["baresip-loopback"].get(
                "extra_p50_ms"), TARGETS["p1_extra_p50_ms"]],
            ["P2 speech_started -> silence p95", s["p2_bargein_ms"]["p95"], TARGETS["p2_p95_ms"]],
            ["P3 pacing |iv-20| p99 (1 call)", pacing.get("deviation_p99_ms"),
             TARGETS["p3_deviation_p99_ms"]],
            ["P3 silent frames in greeting (wire)", p3["underrun_frames_in_greeting"], 0],
            ["P3 sip4ai_audio_underruns_total", p3["underrun_metric"], 0],
            ["P6 INVITE -> 180 p95", p6["invite_to_180_ms"]["p95"],
             TARGETS["p6_invite_to_180_ms"]],
            ["P6 INVITE -> 200 - handshake p95", p6["invite_to_200_minus_handshake_ms"]["p95"],
             TARGETS["p6_invite_to_200_minus_handshake_ms"]],
            ["P6 answer -> greeting - mock p95", p6["answer_to_greeting_minus_mock_ms"]["p95"],
             TARGETS["p6_answer_to_greeting_minus_mock_ms"]],
        ]  # fmt: skip
        lines += ["", "Targets"]
        lines.append(
            table(
                ["measure", "value", "target", "verdict"],
                [[r[0], r[1], r[2], verdict(r[1], float(r[2]))] for r in rows],
            )
        )
        lines += ["", "P2 / P6 distributions (ms)"]
        dist = [["P2 barge-in", *_dist(s["p2_bargein_ms"])]]
        dist += [[k, *_dist(v)] for k, v in p6.items()]
        lines.append(table(["measure", "n", "p50", "p95", "max"], dist))
        lines.append(
            f"P3 greeting pacing: {pacing.get('intervals')} intervals, |iv-20| p50 "
            f"{pacing.get('deviation_p50_ms')} p99 {pacing.get('deviation_p99_ms')} ms, max "
            f"interval {pacing.get('max_interval_ms')} ms, gaps > 60 ms "
            f"{pacing.get('gaps_over_60ms')}; underrun metric: "
            f"{'not exposed' if p3['underrun_metric'] is None else p3['underrun_metric']}"
        )
    return "\n".join(lines)


def _dist(s: dict[str, Any]) -> list[object]:
    return [s["n"], s["p50"], s["p95"], s["max"]]


def extras(p1: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    by = {r["path"]: r["round_trip_ms"] for r in p1}
    own = by.get("sip4ai+echo-mock", {})
    out: dict[str, dict[str, float | None]] = {}
    for base in ("baresip-loopback", "sipp-rtp_echo"):
        b = by.get(base, {})
        ok = own.get("p50") is not None and b.get("p50")
        out[base] = {
            "extra_p50_ms": round(own["p50"] - b["p50"], 3) if ok else None,
            "extra_p95_ms": round(own["p95"] - b["p95"], 3) if ok else None,
            "ratio_p50": round(own["p50"] / b["p50"], 3) if ok else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--echo-seconds", type=float, default=20.0, help="P1 call length")
    parser.add_argument("--calls", type=int, default=10, help="P2/P6 calls (one at a time)")
    parser.add_argument("--think-ms", type=int, default=200, help="the mock's think time")
    parser.add_argument("--speed", type=float, default=4.0, help="the mock's streaming speed")
    parser.add_argument("--turn-calls", type=int, default=5, help="P7 calls per provider")
    parser.add_argument("--log-level", default="INFO", help="sip4ai's SIP4AI_LOG_LEVEL")
    parser.add_argument("--run-dir", type=Path, default=RUNS_DIR / "latency")
    parser.add_argument("--output", default="latency.json")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    run_dir = args.run_dir / time.strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    out: dict[str, Any] = {
        "benchmark": "latency",
        "command": "python -m bench.latency " + " ".join(sys.argv[1:] if argv is None else argv),
        "host": host_info(),
        "targets": TARGETS,
        "p1": [],
        "errors": [],
    }
    parts: list[tuple[str, Callable[[Lab], dict[str, Any]]]] = [
        ("P1 sip4ai + echo mock", lambda lb: p1_sip4ai(lb, args.echo_seconds)),
        ("P1 SIPp -rtp_echo", lambda lb: p1_sipp_echo(lb, args.echo_seconds)),
        ("P1 baresip loopback", lambda lb: p1_baresip(lb, args.echo_seconds)),
        ("P2/P3/P6 scripted mock", lambda lb: p2_p3_p6(lb, args)),
        ("P7 per provider", lambda lb: {"rows": measure_all(lb.run_dir / "p7", lb.kamailio,
                                                             lb.sipp, args.turn_calls)}),
    ]  # fmt: skip
    try:
        with lab(run_dir, args.log_level) as lb:
            for label, part in parts:
                try:
                    with timed(label):
                        result = part(lb)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # the other parts still measure
                    out["errors"].append({"part": label, "error": f"{type(exc).__name__}: {exc}"})
                    print(traceback.format_exc(), file=sys.stderr, flush=True)
                    continue
                if label.startswith("P1"):
                    out["p1"].append(result)
                elif label.startswith("P7"):
                    out["p7"] = result["rows"]
                else:
                    out["scripted"] = result
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    out["p1_extra"] = extras(out["p1"])
    out["wall_s"] = round(time.monotonic() - started, 1)
    out["run_dir"] = str(run_dir)
    path = write_json(args.output, out)
    print()
    print(report(out))
    if out.get("p7"):
        print("\n" + provider_turns.report(out["p7"]))
    for e in out["errors"]:
        print(f"FAILED {e['part']}: {e['error']}")
    print(f"\nwrote {path} ({out['wall_s']} s)")
    return 0 if not out["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
