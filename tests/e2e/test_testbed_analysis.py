"""The testbed's analysis code on synthetic input: pcap link types, RTP, DTMF, G.711, tones,
SIPp statistics. Hermetic (no processes, no sockets), hence marked ``unit``; it lives next to
the e2e tests because it checks the e2e harness itself.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from testbed.harness import g711
from testbed.harness.pcap import (
    LINKTYPE_EN10MB,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PcapError,
    UdpDatagram,
    read_udp,
)
from testbed.harness.rtp import RtpPacket, pacing_stats, parse_rtp, rtp_streams
from testbed.harness.sipp_stats import (
    parse_counts_csv,
    parse_error_codes_csv,
    parse_stat_csv,
    unexpected_status_codes,
)
from testbed.harness.tones import analyse_tone, tone_pcm, tone_shares


pytestmark = pytest.mark.unit


# ----- synthetic packets -----


def rtp_bytes(seq: int, ts: int, ssrc: int = 0x1234, pt: int = 0, payload: bytes = b"") -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + payload


def udp_ipv4(payload: bytes, sport: int = 4000, dport: int = 5000) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2]))  # fmt: skip
    return header + udp


def udp_ipv6(payload: bytes, sport: int = 4000, dport: int = 5000) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    loopback = bytes(15) + b"\x01"  # ::1
    return struct.pack("!IHBB", 0x60000000, len(udp), 17, 64) + loopback + loopback + udp


def datagram(t: float, payload: bytes) -> UdpDatagram:
    return UdpDatagram(t, "127.0.0.1", 4000, "127.0.0.1", 5000, payload)


def link_frame(linktype: int, ip: bytes) -> bytes:
    v6 = ip[0] >> 4 == 6
    ethertype = 0x86DD if v6 else 0x0800
    if linktype == LINKTYPE_EN10MB:
        return bytes(12) + struct.pack("!H", ethertype) + ip
    if linktype == LINKTYPE_LINUX_SLL:
        return bytes(14) + struct.pack("!H", ethertype) + ip
    if linktype == LINKTYPE_LINUX_SLL2:
        return struct.pack("!H", ethertype) + bytes(18) + ip
    if linktype == LINKTYPE_NULL:
        return struct.pack("<I", 30 if v6 else 2) + ip
    return ip


def write_pcap(
    path: Path, linktype: int, frames: list[tuple[float, bytes]], nanos: bool = False
) -> None:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for t, frame in frames:
        frac = round((t % 1) * (1e9 if nanos else 1e6))
        out += struct.pack("<IIII", int(t), frac, len(frame), len(frame)) + frame
    path.write_bytes(out)


# ----- pcap -----


@pytest.mark.parametrize(
    "linktype",
    [LINKTYPE_EN10MB, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW],
)
@pytest.mark.parametrize("ip_version", [4, 6])
def test_pcap_reader_link_types(tmp_path: Path, linktype: int, ip_version: int) -> None:
    payload = rtp_bytes(1, 160, payload=b"\xff" * 160)
    ip = udp_ipv4(payload) if ip_version == 4 else udp_ipv6(payload)
    write_pcap(tmp_path / "x.pcap", linktype, [(1000.25, link_frame(linktype, ip))])

    (d,) = read_udp(tmp_path / "x.pcap")

    assert (d.src_port, d.dst_port, d.payload) == (4000, 5000, payload)
    assert d.time_s == pytest.approx(1000.25)
    assert d.src_ip == ("127.0.0.1" if ip_version == 4 else "::1")


def test_pcap_reader_nanosecond_magic_and_truncated_tail(tmp_path: Path) -> None:
    frame = link_frame(LINKTYPE_EN10MB, udp_ipv4(b"abc"))
    write_pcap(tmp_path / "x.pcap", LINKTYPE_EN10MB, [(5.000000123, frame), (6.0, frame)], True)
    data = (tmp_path / "x.pcap").read_bytes()
    (tmp_path / "x.pcap").write_bytes(data[:-3])  # a capture still being written

    datagrams = read_udp(tmp_path / "x.pcap")

    assert len(datagrams) == 1
    assert datagrams[0].time_s == pytest.approx(5.000000123, abs=1e-9)


def test_pcap_reader_rejects_pcapng(tmp_path: Path) -> None:
    (tmp_path / "x.pcapng").write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))
    with pytest.raises(PcapError, match="pcapng"):
        read_udp(tmp_path / "x.pcapng")


# ----- RTP -----


def test_rtp_header_with_csrc_extension_and_padding() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 1, 0x80 | 8, 7, 99, 0xABCD)
    data = header + b"CSRC" + struct.pack("!HH", 0xBEDE, 1) + b"EXT!" + b"\xd5" * 4 + b"\x00\x02"

    p = parse_rtp(data, 1.5)

    assert (p.payload_type, p.marker, p.sequence, p.timestamp, p.ssrc) == (8, True, 7, 99, 0xABCD)
    assert p.payload == b"\xd5" * 4


@pytest.mark.parametrize(
    "data", [b"INVITE sip:x SIP/2.0\r\n", struct.pack("!BBH", 0x80, 200, 6) + bytes(24), b"\x80"]
)
def test_non_rtp_is_rejected(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_rtp(data)


def test_pacing_counts_gaps_losses_and_wraparound() -> None:
    seqs = [65533, 65534, 65535, 0, 4, 5, 5, 3]  # 1..3 lost, then 3 late, one duplicate
    times = [0.00, 0.02, 0.04, 0.06, 0.14, 0.16, 0.16, 0.18]
    packets = [RtpPacket(t, 0, False, s, 0, 1, b"") for s, t in zip(seqs, times, strict=True)]

    stats = pacing_stats(packets)

    assert stats.packets == 8
    assert stats.gaps_over_60ms == 1  # the 80 ms interval
    assert stats.max_interval_ms == pytest.approx(80.0)
    assert stats.sequence_lost == 2  # 65533..5 minus {1, 2}: 3 arrived late
    assert stats.duplicates == 1
    assert stats.reordered == 1  # 3 after 5
    assert stats.interval_p50_ms == pytest.approx(20.0)


def test_dtmf_events_split_repeated_digit_with_reused_timestamp() -> None:
    def event(seq: int, code: int, end: bool, duration: int) -> bytes:
        return rtp_bytes(
            seq, 8000, pt=101, payload=struct.pack("!BBH", code, 0x80 * end | 10, duration)
        )

    frames = [event(1, 5, False, 160), event(2, 5, True, 800), event(3, 5, True, 800),
              event(4, 5, False, 160), event(5, 5, True, 480), event(6, 11, True, 320)]  # fmt: skip
    datagrams = [datagram(i * 0.02, f) for i, f in enumerate(frames)]

    (stream,) = rtp_streams(datagrams)

    assert stream.dtmf_digits() == "55#"
    assert [e.duration_samples for e in stream.dtmf_events()] == [800, 480, 320]


# ----- G.711 and tones -----


def test_g711_known_vectors() -> None:
    assert not g711.decode(b"\xff" * 160, "ulaw").any()
    assert g711.encode(np.zeros(160, np.int16), "ulaw") == b"\xff" * 160
    assert g711.encode(np.zeros(160, np.int16), "alaw") == b"\xd5" * 160
    assert set(g711.decode(b"\xd5\x55", "alaw").tolist()) == {8, -8}
    assert g711.decode(b"\x80\x00", "ulaw").tolist() == [32124, -32124]


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_round_trip_keeps_a_tone(law: g711.Law) -> None:
    pcm = tone_pcm(1000, 1.0)
    decoded = g711.decode(g711.encode(pcm, law), law)
    noise = (decoded.astype(np.float64) - pcm) ** 2
    snr_db = 10 * np.log10(np.mean(pcm.astype(np.float64) ** 2) / np.mean(noise))
    assert snr_db > 30


def test_tone_analysis_finds_the_frequency() -> None:
    tone = analyse_tone(tone_pcm(440, 1.0))
    assert tone.dominant_hz == pytest.approx(440, abs=0.5)
    assert tone.band_energy_share > 0.99
    assert tone.rms_dbfs == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.1)
    shares = tone_shares(tone_pcm(1000, 0.5), (440.0, 1000.0))
    assert shares[1000.0] > 0.99


def test_tone_analysis_of_noise_has_low_band_share() -> None:
    noise = np.random.default_rng(1).normal(0, 3000, 8000).astype(np.int16)
    assert analyse_tone(noise).band_energy_share < 0.2


# ----- SIPp statistics -----


STAT_CSV = (
    "StartTime;CurrentTime;ElapsedTime(C);TotalCallCreated;CurrentCall;SuccessfulCall(C);"
    "FailedCall(C);FailedUnexpectedMessage(C);Retransmissions(C);\n"
    "2026-11-26\t00:00:00.0;x;00:00:01:000000;1;1;0;0;0;0;\n"
    "2026-11-26\t00:00:01.0;x;00:00:02:000000;3;0;2;1;1;4;\n"
)


def test_sipp_stat_csv_uses_the_last_row() -> None:
    stats = parse_stat_csv(STAT_CSV)
    assert (stats.total_calls_created, stats.successful_calls, stats.failed_calls) == (3, 2, 1)
    assert (stats.failed_unexpected_message, stats.retransmissions) == (1, 4)
    assert stats.current_calls == 0
    assert stats.elapsed == "00:00:02:000000"
    with pytest.raises(ValueError):
        parse_stat_csv(STAT_CSV.splitlines()[0])


def test_sipp_counts_and_error_codes() -> None:
    counts = "CurrentTime;ElapsedTime;1_401_Recv;3_200_Unexp;\na;b;1;0;\nc;d;1;1;\n"
    assert parse_counts_csv(counts) == {"1_401_Recv": 1, "3_200_Unexp": 1}
    codes = "2026-11-26\t00:52:15.468174\t1.0;00:00:00:001000;\nx\ty;00:00:00:103000;401,486,\n"
    assert parse_error_codes_csv(codes) == [401, 486]
    err = "...while expecting '200' (index 3), received 'SIP/2.0 403 Forbidden\nVia: ..."
    assert unexpected_status_codes(err) == [403]
