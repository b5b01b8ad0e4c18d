"""A paced G.711 RTP sender on its own UDP socket: the "stray RTP" of fault tests (a second
source aiming at a call's RTP port) and raw datagram helpers for malformed-input tests."""

from __future__ import annotations

import socket
import struct
import threading
import time
from types import TracebackType

from testbed.harness import g711
from testbed.harness.tones import tone_pcm


FRAME_SAMPLES = 160  # 20 ms at 8 kHz


def rtp_packet(payload: bytes, *, sequence: int, timestamp: int, ssrc: int, pt: int = 0) -> bytes:
    """RTP version 2, no padding/extension/CSRC, marker clear."""
    header = struct.pack(
        "!BBHII", 0x80, pt & 0x7F, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF
    )
    return header + payload


class ToneRtpSender:
    """Sends a mu-law tone as RTP (PT 0, 20 ms packets) to ``target`` from a free local port,
    in a background thread, until ``stop()`` or ``duration_s``."""

    def __init__(
        self,
        target: tuple[str, int],
        freq_hz: float,
        *,
        duration_s: float = 10.0,
        ssrc: int = 0x5712A7,
        bind_host: str = "127.0.0.1",
    ) -> None:
        self.target = target
        self._payload = g711.encode(tone_pcm(freq_hz, 1.0, amplitude=0.5), "ulaw")
        self._duration_s = duration_s
        self._ssrc = ssrc
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((bind_host, 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stray-rtp", daemon=True)
        self.sent = 0

    @property
    def local_port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> ToneRtpSender:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sending; returns the number of packets sent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._sock.close()
        return self.sent

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        frames = len(self._payload) // FRAME_SAMPLES
        while not self._stop.is_set() and time.monotonic() - start < self._duration_s:
            offset = (n % frames) * FRAME_SAMPLES
            packet = rtp_packet(
                self._payload[offset : offset + FRAME_SAMPLES],
                sequence=1000 + n,
                timestamp=n * FRAME_SAMPLES,
                ssrc=self._ssrc,
            )
            try:
                self._sock.sendto(packet, self.target)
            except OSError:
                return
            self.sent += 1
            n += 1
            self._stop.wait(max(0.0, start + n * 0.02 - time.monotonic()))

    def __enter__(self) -> ToneRtpSender:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def send_datagrams(target: tuple[str, int], datagrams: list[bytes]) -> None:
    """Fire-and-forget UDP datagrams from one throwaway socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for datagram in datagrams:
            sock.sendto(datagram, target)
