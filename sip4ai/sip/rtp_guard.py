"""Stray-RTP guard: a kernel socket filter that lets a call's RTP socket accept packets only
from the address the peer's SDP names.

baresip 4.10 has no RTP source check and no latching: any datagram that reaches a call's RTP
port is decoded into the call's audio, and a second source (an RTP scanner, a stale or hostile
peer) even replaces the caller's voice for the AI (measured in tests/e2e/test_faults.py: a
sprayed tone took 99.7 % of what the AI heard). Python never sees RTP packets (only decoded
PCM), so the guard works on the socket itself: it finds the stack's RTP socket by its local port
in this process's descriptor table and attaches a classic BPF filter (``SO_ATTACH_FILTER``)
that accepts only the peer's ``ip:port`` from the SDP. The stack sends to exactly that address
(no symmetric-RTP latching), so a peer that works with it is not affected. A new SDP (re-INVITE)
re-attaches the filter for the new address.

The SDP pair comes from the SIP trace: for inbound calls the received INVITE (peer) and our
2xx (local port); a peer re-INVITE and its 2xx likewise. Outbound calls are not guarded: the
trace tap does not keep the INVITE we send, which holds our port. IPv4 only.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass

from sip4ai.sip.sipmsg import TraceRecord


__all__ = ["RtpGuard", "sdp_audio_endpoint", "source_filter"]

logger = logging.getLogger(__name__)

SO_ATTACH_FILTER = 26
_SKF_NET_OFF = -0x100000
_BPF_LD_W_ABS = 0x20
_BPF_LD_H_ABS = 0x28
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_MAX_CALLS_TRACKED = 1024


@dataclass(slots=True)
class _Pending:
    remote: tuple[str, int] | None = None
    local_port: int | None = None
    applied: tuple[int, str, int] | None = None


def sdp_audio_endpoint(body: str) -> tuple[str, int] | None:
    """``(ip, port)`` of the first audio stream of an SDP body; None when absent, on hold by
    address (0.0.0.0), disabled (port 0) or not IPv4."""
    session_addr: str | None = None
    media_addr: str | None = None
    port: int | None = None
    in_audio = False
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if port is not None:
                break  # only the first audio stream
            fields = line[2:].split()
            in_audio = len(fields) > 1 and fields[0] == "audio" and fields[1].isdigit()
            if in_audio:
                port = int(fields[1])
        elif line.startswith("c="):
            fields = line[2:].split()
            addr = fields[2].split("/")[0] if len(fields) >= 3 and fields[1] == "IP4" else ""
            if port is None and not in_audio:
                session_addr = addr
            elif in_audio:
                media_addr = addr
    address = media_addr or session_addr
    if not port or not address:
        return None
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return None
    if ip.is_unspecified:
        return None
    return str(ip), port


def source_filter(ip: str, port: int) -> bytes:
    """Classic BPF for a UDP socket: accept datagrams from ``ip:port`` only.

    On a UDP socket the filter sees the packet from the UDP header on (source port at offset
    0); the IPv4 source address is read through the network-header base (SKF_NET_OFF + 12).
    """
    net_src = (_SKF_NET_OFF + 12) & 0xFFFFFFFF
    ip_value = int(ipaddress.IPv4Address(ip))
    program = [
        (_BPF_LD_W_ABS, 0, 0, net_src),
        (_BPF_JEQ_K, 0, 3, ip_value),  # not the peer's address: drop
        (_BPF_LD_H_ABS, 0, 0, 0),
        (_BPF_JEQ_K, 0, 1, port),  # not the peer's port: drop
        (_BPF_RET_K, 0, 0, 0xFFFFFFFF),
        (_BPF_RET_K, 0, 0, 0),
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def attach_source_filter(fd: int, ip: str, port: int) -> None:
    """Attach the filter to the socket behind ``fd`` (shared with the stack: a dup is used)."""
    program = source_filter(ip, port)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buffer))
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    finally:
        sock.close()


def udp_socket_fd(local_port: int) -> int | None:
    """This process's descriptor of the UDP socket bound to ``local_port`` (IPv4 or IPv6)."""
    inodes: set[str] = set()
    wanted = f":{local_port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[1].endswith(wanted):
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") in inodes:
                return int(name)
        except OSError:
            continue
    return None


class RtpGuard:
    """Feeds on SIP trace records; guards each inbound call's RTP socket once both ends are
    known, and again whenever the peer's SDP address changes."""

    def __init__(self) -> None:
        self._calls: OrderedDict[str, _Pending] = OrderedDict()

    def on_trace(self, record: TraceRecord) -> None:
        if not record.body or "application/sdp" not in record.content_type.lower():
            return
        endpoint = sdp_audio_endpoint(record.body)
        if endpoint is None:
            return
        pending = self._pending(record.call_id)
        if record.received and record.method == "INVITE":
            pending.remote = endpoint
        elif not record.received and 200 <= record.status < 300:
            pending.local_port = endpoint[1]
        elif record.received and 200 <= record.status < 300 and pending.local_port is not None:
            pending.remote = endpoint  # the answer to our own re-INVITE
        else:
            return
        self._apply(record.call_id, pending)

    def _pending(self, call_id: str) -> _Pending:
        pending = self._calls.get(call_id)
        if pending is None:
            pending = self._calls[call_id] = _Pending()
            while len(self._calls) > _MAX_CALLS_TRACKED:
                self._calls.popitem(last=False)
        else:
            self._calls.move_to_end(call_id)
        return pending

    def _apply(self, call_id: str, pending: _Pending) -> None:
        if pending.remote is None or pending.local_port is None:
            return
        wanted = (pending.local_port, *pending.remote)
        if pending.applied == wanted:
            return
        fd = udp_socket_fd(pending.local_port)
        if fd is None:
            logger.debug("rtp guard: no socket on port %d", pending.local_port)
            return
        try:
            attach_source_filter(fd, *pending.remote)
        except OSError as exc:
            logger.warning("! RTP source filter on port %d failed: %s", pending.local_port, exc)
            return
        pending.applied = wanted
        logger.debug("= RTP port %d accepts only %s:%d", pending.local_port, *pending.remote)
