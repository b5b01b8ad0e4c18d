"""RTP analysis of captured UDP: streams, G.711 audio, RFC 4733 DTMF events and pacing statistics.

Everything here is pure (no I/O): feed it :class:`testbed.harness.pcap.UdpDatagram` lists, e.g.
from :meth:`testbed.harness.capture.CaptureResult.datagrams`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from testbed.harness import g711
from testbed.harness.pcap import UdpDatagram


RTP_VERSION = 2
RTP_HEADER_LEN = 12
#: telephone-event payload type the testbed's SDP offers (a=rtpmap:101 telephone-event/8000)
DEFAULT_TELEPHONE_EVENT_PT = 101
#: 20 ms packetization (ptime) used by SIPp and the testbed scenarios
DEFAULT_FRAME_MS = 20.0
#: RFC 4733 section 3.2 event codes 0-15 as DTMF characters
DTMF_EVENT_CHARS = "0123456789*#ABCD"


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet (RFC 3550 section 5.1) with its capture time."""

    arrival_s: float
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


@dataclass(frozen=True, order=True)
class StreamKey:
    """An RTP stream as seen on the wire: one 5-tuple direction plus the SSRC."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    ssrc: int

    def __str__(self) -> str:
        return (
            f"{self.src_ip}:{self.src_port} -> {self.dst_ip}:{self.dst_port} ssrc=0x{self.ssrc:08x}"
        )


@dataclass(frozen=True)
class DtmfEvent:
    """One RFC 4733 telephone event, merged over its packets (same RTP timestamp)."""

    digit: str
    """'0'-'9', '*', '#', 'A'-'D', or 'event<N>' for non-DTMF event codes."""
    start_timestamp: int
    duration_samples: int
    """Largest duration field seen for this event (8 kHz units: 8 samples per ms)."""
    ended: bool
    """True if a packet with the E (end) bit arrived."""
    packets: int


@dataclass(frozen=True)
class PacingStats:
    """Inter-arrival statistics of one stream, in arrival (capture) order."""

    packets: int
    duration_s: float
    """Capture time from the first to the last packet."""
    interval_p50_ms: float
    deviation_p50_ms: float
    """Median of |interval - frame_ms|."""
    deviation_p99_ms: float
    """99th percentile of |interval - frame_ms| (linear interpolation)."""
    max_interval_ms: float
    gaps_over_60ms: int
    """Intervals longer than 60 ms (three 20 ms frames: an audible gap)."""
    sequence_lost: int
    """Sequence numbers missing between the first and the last (after 16-bit unwrap)."""
    duplicates: int
    reordered: int
    """Packets whose sequence number is below one that arrived earlier."""


def parse_rtp(payload: bytes, arrival_s: float = 0.0) -> RtpPacket:
    """Parse an RTP packet, honouring CSRCs, the header extension and padding.

    Raises ValueError if ``payload`` is not RTP version 2 or is an RTCP packet (PT 72-76 once
    the marker bit is masked, i.e. packet types 200-204 of RFC 3550 section 12.1).
    """
    if len(payload) < RTP_HEADER_LEN:
        raise ValueError(f"{len(payload)} bytes, shorter than an RTP header")
    b0, b1, sequence, timestamp, ssrc = struct.unpack("!BBHII", payload[:RTP_HEADER_LEN])
    if b0 >> 6 != RTP_VERSION:
        raise ValueError(f"RTP version {b0 >> 6}, expected 2")
    payload_type = b1 & 0x7F
    if 72 <= payload_type <= 76:
        raise ValueError(f"RTCP packet type {payload_type | 0x80}")
    offset = RTP_HEADER_LEN + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if len(payload) < offset + 4:
            raise ValueError("truncated RTP header extension")
        offset += 4 + 4 * struct.unpack("!H", payload[offset + 2 : offset + 4])[0]
    end = len(payload)
    if b0 & 0x20 and end > offset:
        end -= payload[-1]
    if end < offset:
        raise ValueError("RTP header longer than the packet")
    return RtpPacket(
        arrival_s, payload_type, bool(b1 & 0x80), sequence, timestamp, ssrc, payload[offset:end]
    )


def _try_parse(datagram: UdpDatagram) -> RtpPacket | None:
    try:
        return parse_rtp(datagram.payload, datagram.time_s)
    except ValueError:
        return None


@dataclass
class RtpStream:
    """Packets of one stream in arrival order, with analysis helpers."""

    key: StreamKey
    packets: list[RtpPacket] = field(default_factory=list)
    telephone_event_pt: int = DEFAULT_TELEPHONE_EVENT_PT

    @property
    def payload_types(self) -> set[int]:
        return {p.payload_type for p in self.packets}

    def audio_packets(self) -> list[RtpPacket]:
        """G.711 packets (PT 0 or 8) in sequence order (unwrapped), duplicates dropped."""
        audio = [
            p
            for p in self.packets
            if p.payload_type in (g711.PAYLOAD_TYPE_PCMU, g711.PAYLOAD_TYPE_PCMA)
        ]
        by_seq: dict[int, RtpPacket] = {}
        for ext, packet in zip(_unwrap([p.sequence for p in audio]), audio, strict=True):
            by_seq.setdefault(ext, packet)
        return [by_seq[k] for k in sorted(by_seq)]

    def pcm(self) -> npt.NDArray[np.int16]:
        """Decoded G.711 audio of the stream (8 kHz PCM16); lost packets leave no filler."""
        chunks = [
            g711.decode(p.payload, g711.law_for_payload_type(p.payload_type))
            for p in self.audio_packets()
        ]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def dtmf_events(self) -> list[DtmfEvent]:
        """RFC 4733 events carried with ``telephone_event_pt``, in arrival order.

        Packets belong to one event while the RTP timestamp and event code stay the same
        (RFC 4733 section 2.5.1.1); a packet without the end bit after the event has ended
        starts a new one (the same digit pressed again with a reused timestamp).
        """
        events: list[DtmfEvent] = []
        for p in self.packets:
            if p.payload_type != self.telephone_event_pt or len(p.payload) < 4:
                continue
            code, flags, duration = struct.unpack("!BBH", p.payload[:4])
            end = bool(flags & 0x80)
            last = events[-1] if events else None
            same = (
                last is not None
                and last.start_timestamp == p.timestamp
                and last.digit == _event_char(code)
                and not (last.ended and not end)
            )
            if last is not None and same:
                events[-1] = DtmfEvent(
                    last.digit,
                    last.start_timestamp,
                    max(last.duration_samples, duration),
                    last.ended or end,
                    last.packets + 1,
                )
            else:
                events.append(DtmfEvent(_event_char(code), p.timestamp, duration, end, 1))
        return events

    def dtmf_digits(self) -> str:
        return "".join(e.digit for e in self.dtmf_events())

    def pacing(self, frame_ms: float = DEFAULT_FRAME_MS) -> PacingStats:
        """Inter-arrival statistics; needs at least 2 packets (ValueError otherwise)."""
        if len(self.packets) < 2:
            raise ValueError(f"stream {self.key} has {len(self.packets)} packet(s), need 2")
        return pacing_stats(self.packets, frame_ms)

    def __str__(self) -> str:
        return f"{self.key} PT={sorted(self.payload_types)} packets={len(self.packets)}"


def pacing_stats(packets: list[RtpPacket], frame_ms: float = DEFAULT_FRAME_MS) -> PacingStats:
    """Compute :class:`PacingStats` over ``packets`` in the given (arrival) order."""
    arrival = np.array([p.arrival_s for p in packets], dtype=np.float64)
    intervals_ms = np.diff(arrival) * 1000.0
    deviation = np.abs(intervals_ms - frame_ms)
    seq = _unwrap([p.sequence for p in packets])
    unique = set(seq)
    reordered = 0
    highest = seq[0]
    for s in seq[1:]:
        if s < highest:
            reordered += 1
        highest = max(highest, s)
    return PacingStats(
        packets=len(packets),
        duration_s=float(arrival[-1] - arrival[0]),
        interval_p50_ms=float(np.percentile(intervals_ms, 50)),
        deviation_p50_ms=float(np.percentile(deviation, 50)),
        deviation_p99_ms=float(np.percentile(deviation, 99)),
        max_interval_ms=float(intervals_ms.max()),
        gaps_over_60ms=int(np.count_nonzero(intervals_ms > 60.0)),
        sequence_lost=(max(unique) - min(unique) + 1) - len(unique),
        duplicates=len(seq) - len(unique),
        reordered=reordered,
    )


def rtp_streams(
    datagrams: Iterable[UdpDatagram],
    *,
    ports: Iterable[int] | None = None,
    telephone_event_pt: int = DEFAULT_TELEPHONE_EVENT_PT,
) -> list[RtpStream]:
    """Group the RTP packets among ``datagrams`` into streams, sorted by key.

    ``ports``: keep only datagrams whose source or destination port is listed (use the media
    ports, so SIP or other UDP traffic in the capture is never mistaken for RTP).
    """
    wanted = set(ports) if ports is not None else None
    streams: dict[StreamKey, RtpStream] = {}
    for d in datagrams:
        if wanted is not None and d.src_port not in wanted and d.dst_port not in wanted:
            continue
        packet = _try_parse(d)
        if packet is None:
            continue
        key = StreamKey(d.src_ip, d.src_port, d.dst_ip, d.dst_port, packet.ssrc)
        stream = streams.get(key)
        if stream is None:
            stream = streams[key] = RtpStream(key, telephone_event_pt=telephone_event_pt)
        stream.packets.append(packet)
    return [streams[k] for k in sorted(streams)]


def _unwrap(sequence_numbers: list[int]) -> list[int]:
    """Extend 16-bit sequence numbers across wrap-around (RFC 3550 appendix A.1 idea)."""
    out: list[int] = []
    cycles = 0
    previous: int | None = None
    for s in sequence_numbers:
        if previous is not None:
            delta = s - previous
            if delta < -0x8000:
                cycles += 0x10000
            elif delta > 0x8000:
                cycles -= 0x10000
        out.append(s + cycles)
        previous = s
    return out


def _event_char(code: int) -> str:
    return DTMF_EVENT_CHARS[code] if code < len(DTMF_EVENT_CHARS) else f"event{code}"
