"""P7: turn latency per provider, with each provider's mock at zero think time.

For every provider: its mock (testbed/harness/providers.py) answers at once (``think_ms`` 0);
sip4ai is registered at Kamailio; SIPp places ``--calls`` calls one after another. Each caller
listens to a short greeting, speaks (300 Hz) for SPEECH_S, then listens. From a capture of the
caller's media port: the caller's end of speech (the last loud sample it sent) to the first
loud sample of the reply it hears. That wire figure includes the mock's end-of-speech
detection (the silence its VAD, or the STT's endpointing, waits for: ``hangover_ms``);
``bridge_ms`` = wire - hangover is sip4ai's own share of the turn (both directions through
the bridge, resampling where the provider needs it, the session's protocol handling, and for
the Cartesia pipeline the STT -> LLM -> TTS hand-offs).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import (
    RUNS_DIR,
    SILENCE_PEAK,
    host_info,
    onset_offset,
    raise_on_sigterm,
    stats,
    table,
    tone,
    write_json,
)
from bench._lab import lab
from sip4ai.providers.deepgram_stt_wire import ENDPOINTING_MS
from testbed.harness import g711
from testbed.harness.appliance import Sip4ai
from testbed.harness.capture import PacketCapture
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from testbed.harness.providers import ENV, PROVIDERS, merge, provider_mock
from testbed.harness.rtp import RtpPacket
from testbed.harness.scenario import sip_config
from testbed.harness.sipp import SippFactory, SippOptions
from testbed.harness.tones import G711File
from testbed.mocks.vad import VadConfig


SPEECH_AT_S = 2.0
SPEECH_S = 0.8
CALL_S = 5.0
HANGOVER_MS: dict[str, float] = {
    **{name: float(VadConfig().silence_duration_ms) for name in PROVIDERS},
    "cartesia": float(ENDPOINTING_MS),
}
"""The silence each mock waits for before it treats the caller's turn as over: the realtime
mocks share testbed.mocks.vad's default; the Cartesia pipeline's Deepgram STT mock ends an
utterance after the ``endpointing`` silence sip4ai asks for."""


def turn_file(path: Path) -> G711File:
    pcm = np.zeros(round(CALL_S * 8000) + 8000, np.int16)
    speech = tone(300.0, SPEECH_S, 8000, 0.5)
    start = round(SPEECH_AT_S * 8000)
    pcm[start : start + len(speech)] = speech
    path.write_bytes(g711.encode(pcm, "ulaw"))
    return G711File(path, "ulaw")


def last_loud_s(packets: Sequence[RtpPacket]) -> float | None:
    """Wire time of the last loud sample among ``packets`` (arrival + sample offset)."""
    for packet in reversed(packets):
        if packet.payload_type not in (0, 8) or not packet.payload:
            continue
        pcm = g711.decode(packet.payload, g711.law_for_payload_type(packet.payload_type))
        loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > SILENCE_PEAK)
        if loud.size:
            return packet.arrival_s + (int(loud[-1]) + 1) / 8000
    return None


def first_loud_after(packets: Sequence[RtpPacket], after_s: float) -> float | None:
    for packet in packets:
        if packet.arrival_s < after_s:
            continue
        offset = onset_offset(packet)
        if offset is not None:
            return packet.arrival_s + offset / 8000
    return None


def turn_latencies(sent: Sequence[RtpPacket], heard: Sequence[RtpPacket]) -> list[float]:
    """Per call (calls are CALL_S apart, one at a time): end of speech -> first reply sample."""
    out: list[float] = []
    if not sent:
        return out
    # Split the caller's packets into calls at gaps of more than a second.
    calls: list[list[RtpPacket]] = [[sent[0]]]
    for packet in sent[1:]:
        if packet.arrival_s - calls[-1][-1].arrival_s > 1.0:
            calls.append([])
        calls[-1].append(packet)
    for call in calls:
        end = last_loud_s(call)
        if end is None:
            continue
        reply = first_loud_after(heard, end)
        if reply is not None and reply - end < 5.0:
            out.append(1000 * (reply - end))
    return out


def measure(
    run_dir: Path, kamailio: Kamailio, sipp: SippFactory, provider: str, calls: int
) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    script = {
        "replies": [
            {"text": "Hi there", "duration_ms": 600},
            {"text": "Sure, I can help with that", "duration_ms": 1200},
        ],
        "transcripts": ["I need some help"],
        "think_ms": 0,
    }
    with contextlib.ExitStack() as stack:
        mock = stack.enter_context(provider_mock(run_dir, provider, script))
        config = merge(sip_config(kamailio), {"provider": provider}, mock.config("Hi there"))
        app = stack.enter_context(
            Sip4ai(run_dir / "sip4ai", config=config, env=dict(ENV[provider]))
        )
        app.wait_registered()
        media = free_port(udp=True, tcp=False, span=4)
        capture = stack.enter_context(PacketCapture(run_dir / "rtp.pcap", [media]))
        result = sipp.run(
            SippOptions(
                "uac_invite_rtp",
                remote=kamailio.address,
                service="aibot",
                audio=turn_file(run_dir / "turn.ulaw"),
                calls=calls,
                rate_cps=1.0,
                max_concurrent=1,
                call_duration_ms=round(CALL_S * 1000),
                media_port=media,
                name=f"{provider}-caller",
                timeout_s=calls * (CALL_S + 3) + 30,
            )
        )
        wire = capture.stop()
    streams = wire.rtp_streams([media])
    sent = [p for s in streams if s.key.src_port == media for p in s.audio_packets()]
    heard = [p for s in streams if s.key.dst_port == media for p in s.audio_packets()]
    sent.sort(key=lambda p: p.arrival_s)
    heard.sort(key=lambda p: p.arrival_s)
    wire_ms = turn_latencies(sent, heard)
    hangover = HANGOVER_MS[provider]
    return {
        "provider": provider,
        "sipp_ok": result.ok,
        "sipp": None if result.ok else result.describe(),
        "hangover_ms": hangover,
        "wire_ms": stats(wire_ms),
        "bridge_ms": stats([w - hangover for w in wire_ms]),
    }


def measure_all(
    run_dir: Path, kamailio: Kamailio, sipp: SippFactory, calls: int
) -> list[dict[str, Any]]:
    return [measure(run_dir / name, kamailio, sipp, name, calls) for name in PROVIDERS]


def report(rows: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            r["provider"],
            r["wire_ms"]["n"],
            r["wire_ms"]["p50"],
            r["wire_ms"]["p95"],
            r["hangover_ms"],
            r["bridge_ms"]["p50"],
            r["bridge_ms"]["p95"],
        ]
        for r in rows
    ]
    header = ["provider", "n", "wire p50", "wire p95", "VAD hangover", "bridge p50", "bridge p95"]
    return "P7 end of speech -> first reply sample, mocks at zero think time (ms)\n" + table(
        header, body
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.provider_turns", description=__doc__)
    parser.add_argument("--calls", type=int, default=5, help="calls per provider")
    parser.add_argument("--run-dir", type=Path, default=RUNS_DIR / "provider_turns")
    parser.add_argument("--output", default="provider_turns.json")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    run_dir = args.run_dir / time.strftime("%Y%m%d-%H%M%S")
    with lab(run_dir) as lb:
        rows = measure_all(run_dir, lb.kamailio, lb.sipp, args.calls)
    out = {"benchmark": "provider_turns", "host": host_info(), "p7": rows}
    path = write_json(args.output, out)
    print(report(rows))
    print(f"\nwrote {path}")
    return 0 if all(r["sipp_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
