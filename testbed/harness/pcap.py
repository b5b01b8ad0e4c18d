"""Pure-Python reader for classic libpcap files, down to UDP datagrams.

Handles the link types tcpdump produces on Linux: EN10MB (``-i lo`` on current kernels),
LINUX_SLL / LINUX_SLL2 (``-i any``), NULL/LOOP and RAW; IPv4 and IPv6; 802.1Q tags. pcapng
(``tcpdump`` writes classic pcap unless told otherwise) and IP fragments are not supported:
fragments other than the first are skipped, and loopback's 64 KiB MTU never fragments.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


LINKTYPE_NULL = 0
LINKTYPE_EN10MB = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
_LINKTYPE_RAW_ALIASES = (12, 14)  # DLT_RAW values used by some BSDs / old libpcap

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLAN = (0x8100, 0x88A8)
_IPPROTO_UDP = 17

_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


class PcapError(ValueError):
    """The file is not a classic pcap file or is truncated in its header."""


@dataclass(frozen=True)
class UdpDatagram:
    """One captured UDP datagram."""

    time_s: float
    """Capture timestamp, seconds since the Unix epoch (microsecond or nanosecond resolution)."""
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    payload: bytes


@dataclass(frozen=True)
class PcapRecord:
    time_s: float
    linktype: int
    data: bytes
    """Captured bytes (may be shorter than on the wire if the snap length cut it)."""


def read_records(path: Path) -> Iterator[PcapRecord]:
    """Yield every record of a classic pcap file; a truncated last record is dropped.

    A capture that is still being written (tcpdump -U) can be read: the partial tail is ignored.
    """
    with path.open("rb") as f:
        header = f.read(24)
        if len(header) < 24:
            raise PcapError(f"{path}: {len(header)} bytes, too short for a pcap header")
        if header[:4] not in _MAGIC:
            raise PcapError(f"{path}: unknown magic {header[:4].hex()} (pcapng is not supported)")
        endian, tick_s = _MAGIC[header[:4]]
        linktype = struct.unpack(endian + "I", header[20:24])[0] & 0x0FFFFFFF
        record_header = struct.Struct(endian + "IIII")
        while True:
            rh = f.read(16)
            if len(rh) < 16:
                return
            seconds, fraction, captured_len, _orig_len = record_header.unpack(rh)
            data = f.read(captured_len)
            if len(data) < captured_len:
                return
            yield PcapRecord(seconds + fraction * tick_s, linktype, data)


def read_udp(path: Path) -> list[UdpDatagram]:
    """All UDP datagrams of a pcap file, in capture order; non-UDP packets are skipped."""
    out: list[UdpDatagram] = []
    for record in read_records(path):
        datagram = parse_udp(record)
        if datagram is not None:
            out.append(datagram)
    return out


def parse_udp(record: PcapRecord) -> UdpDatagram | None:
    """Decode link + IP + UDP headers of one record; None if it is not a complete UDP datagram."""
    network = _network_layer(record.linktype, record.data)
    if network is None:
        return None
    version, packet = network
    if version == 4:
        return _udp_in_ipv4(record.time_s, packet)
    return _udp_in_ipv6(record.time_s, packet)


def _network_layer(linktype: int, data: bytes) -> tuple[int, bytes] | None:
    """Strip the link-layer header; return (IP version, IP packet)."""
    ethertype: int | None
    if linktype == LINKTYPE_EN10MB:
        if len(data) < 14:
            return None
        ethertype, offset = struct.unpack("!H", data[12:14])[0], 14
        while ethertype in _ETHERTYPE_VLAN and len(data) >= offset + 4:
            ethertype = struct.unpack("!H", data[offset + 2 : offset + 4])[0]
            offset += 4
        return _by_ethertype(ethertype, data[offset:])
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            return None
        return _by_ethertype(struct.unpack("!H", data[14:16])[0], data[16:])
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            return None
        return _by_ethertype(struct.unpack("!H", data[0:2])[0], data[20:])
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        # 4-byte address family: host byte order for NULL, network order for LOOP; version
        # is read from the IP header itself, so the family value's byte order does not matter.
        return _by_ip_version(data[4:])
    if linktype == LINKTYPE_RAW or linktype in _LINKTYPE_RAW_ALIASES:
        return _by_ip_version(data)
    return None


def _by_ethertype(ethertype: int, packet: bytes) -> tuple[int, bytes] | None:
    if ethertype == _ETHERTYPE_IPV4:
        return 4, packet
    if ethertype == _ETHERTYPE_IPV6:
        return 6, packet
    return None


def _by_ip_version(packet: bytes) -> tuple[int, bytes] | None:
    if not packet:
        return None
    version = packet[0] >> 4
    return (version, packet) if version in (4, 6) else None


def _udp_in_ipv4(time_s: float, packet: bytes) -> UdpDatagram | None:
    if len(packet) < 20:
        return None
    header_len = (packet[0] & 0x0F) * 4
    total_len = struct.unpack("!H", packet[2:4])[0]
    fragment_offset = struct.unpack("!H", packet[6:8])[0] & 0x1FFF
    if packet[9] != _IPPROTO_UDP or fragment_offset != 0:
        return None
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    return _udp(time_s, src, dst, packet[header_len : max(total_len, header_len)])


def _udp_in_ipv6(time_s: float, packet: bytes) -> UdpDatagram | None:
    if len(packet) < 40 or packet[6] != _IPPROTO_UDP:
        return None  # extension headers before UDP are not followed
    payload_len = struct.unpack("!H", packet[4:6])[0]
    src = str(ipaddress.IPv6Address(packet[8:24]))
    dst = str(ipaddress.IPv6Address(packet[24:40]))
    return _udp(time_s, src, dst, packet[40 : 40 + payload_len])


def _udp(time_s: float, src: str, dst: str, segment: bytes) -> UdpDatagram | None:
    if len(segment) < 8:
        return None
    src_port, dst_port, length = struct.unpack("!HHH", segment[:6])
    if length < 8 or length > len(segment):
        return None  # cut by the snap length: the payload would be incomplete
    return UdpDatagram(time_s, src, src_port, dst, dst_port, segment[8:length])
