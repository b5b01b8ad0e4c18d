"""Packet capture with tcpdump on loopback, read back with the pure-Python pcap reader.

``start()`` returns once tcpdump reports it is listening, so packets sent afterwards are in
the file; ``stop()`` sends SIGINT (tcpdump flushes and prints its counters) and parses the
pcap. tcpdump runs with ``-U`` (flush per packet) and ``--immediate-mode`` (no kernel
batching, so arrival times are real), and ``-Z root`` so that it can write into a root-owned
run dir (Debian's tcpdump otherwise drops to the ``tcpdump`` user before opening the file).
Needs root or CAP_NET_RAW.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from testbed.harness import procs
from testbed.harness.pcap import UdpDatagram, read_udp
from testbed.harness.rtp import DEFAULT_TELEPHONE_EVENT_PT, RtpStream, rtp_streams


_LISTENING = re.compile(rb"listening on \S+, link-type (\S+)")
_DROPPED = re.compile(rb"(\d+) packets? dropped by kernel")


class CaptureError(RuntimeError):
    """tcpdump could not start or exited early; the message carries its stderr."""


@dataclass(frozen=True)
class CaptureResult:
    """A finished capture."""

    pcap_path: Path
    datagrams: tuple[UdpDatagram, ...]
    """All UDP datagrams in capture order."""
    link_type: str
    """tcpdump's link type name, e.g. ``EN10MB``."""
    dropped_by_kernel: int | None
    """tcpdump's 'packets dropped by kernel' (None if it did not say); non-zero means the
    capture, not necessarily the traffic, lost packets."""

    def rtp_streams(
        self,
        ports: Iterable[int] | None = None,
        telephone_event_pt: int = DEFAULT_TELEPHONE_EVENT_PT,
    ) -> list[RtpStream]:
        """RTP streams among the datagrams (optionally only those touching ``ports``)."""
        return rtp_streams(self.datagrams, ports=ports, telephone_event_pt=telephone_event_pt)

    def stream(self, *, src_port: int | None = None, dst_port: int | None = None) -> RtpStream:
        """The single RTP stream with the given source and/or destination port.

        Raises AssertionError listing all streams if there is not exactly one; when a port
        sends several SSRCs, pick from :meth:`rtp_streams` instead.
        """
        ports = [p for p in (src_port, dst_port) if p is not None]
        matches = [
            s
            for s in self.rtp_streams(ports or None)
            if (src_port is None or s.key.src_port == src_port)
            and (dst_port is None or s.key.dst_port == dst_port)
        ]
        if len(matches) != 1:
            listing = "\n  ".join(str(s) for s in self.rtp_streams()) or "(no RTP at all)"
            raise AssertionError(
                f"expected one RTP stream src_port={src_port} dst_port={dst_port}, "
                f"found {len(matches)}; streams in {self.pcap_path}:\n  {listing}"
            )
        return matches[0]

    def sip_first_lines(self, port: int) -> list[str]:
        """First lines of the SIP messages sent to or from ``port``, in order (UDP only)."""
        lines = []
        for d in self.datagrams:
            if port in (d.src_port, d.dst_port) and d.payload[:1].isalpha():
                lines.append(d.payload.split(b"\r\n", 1)[0].decode("utf-8", "replace"))
        return lines


class PacketCapture:
    """tcpdump of UDP traffic touching ``ports`` on ``interface`` into ``pcap_path``."""

    def __init__(
        self,
        pcap_path: Path,
        ports: Sequence[int],
        *,
        interface: str = "lo",
        port_span: int = 1,
        binary: str = "tcpdump",
        bulk: bool = False,
    ) -> None:
        """``port_span``: also capture the next ``port_span - 1`` ports after each one (4 for
        SIPp media ports, whose video/RTCP ports follow).

        ``bulk``: for 10-20k packets/s (load runs): a 256 MiB kernel buffer, a 256-byte snap
        length (a G.711 RTP packet on lo is 214 bytes) and no per-packet flush. The default
        (immediate mode, whole packets) dropped a third of the packets at 100 calls."""
        if not ports:
            raise ValueError("give at least one port: a capture of all of lo is never wanted")
        self.pcap_path = pcap_path
        self.ports = tuple(ports)
        self.interface = interface
        self.port_span = port_span
        self.binary = binary
        self.bulk = bulk
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = b""
        self._link_type = ""
        self.result: CaptureResult | None = None

    @property
    def bpf_filter(self) -> str:
        clauses = [
            f"portrange {p}-{p + self.port_span - 1}" if self.port_span > 1 else f"port {p}"
            for p in self.ports
        ]
        return f"udp and ({' or '.join(clauses)})"

    def start(self, timeout_s: float = 5.0) -> None:
        """Start tcpdump and wait until it is listening; CaptureError if it fails."""
        if self._proc is not None:
            raise RuntimeError("capture already started")
        self.pcap_path.parent.mkdir(parents=True, exist_ok=True)
        buffering = (
            ["-B", "262144", "-s", "256"] if self.bulk else ["-U", "--immediate-mode", "-s", "0"]
        )
        cmd = [
            self.binary, "-i", self.interface, "-n", *buffering, "-Z", "root",
            "-w", str(self.pcap_path), self.bpf_filter,
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert self._proc.stderr is not None
        os.set_blocking(self._proc.stderr.fileno(), False)
        deadline = time.monotonic() + timeout_s
        while True:
            self._read_stderr(max(0.0, deadline - time.monotonic()))
            match = _LISTENING.search(self._stderr)
            if match:
                self._link_type = match.group(1).decode()
                return
            if self._proc.poll() is not None or time.monotonic() >= deadline:
                self._proc.kill()
                self._proc.wait()
                self._read_stderr(0.0)
                self._close_stderr()
                raise CaptureError(
                    f"tcpdump did not start listening (exit {self._proc.returncode}): "
                    f"{' '.join(cmd)}\n{self._stderr.decode(errors='replace')}"
                )

    def stop(self, timeout_s: float = 5.0) -> CaptureResult:
        """SIGINT tcpdump (bounded wait, then SIGKILL) and parse the pcap; idempotent."""
        if self.result is not None:
            return self.result
        if self._proc is None:
            raise RuntimeError("capture was never started")
        procs.stop_popen(self._proc, timeout_s, signal.SIGINT)
        self._read_stderr(0.0)
        self._close_stderr()
        dropped = _DROPPED.search(self._stderr)
        self.result = CaptureResult(
            pcap_path=self.pcap_path,
            datagrams=tuple(read_udp(self.pcap_path)),
            link_type=self._link_type,
            dropped_by_kernel=int(dropped.group(1)) if dropped else None,
        )
        return self.result

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    def _close_stderr(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def _read_stderr(self, timeout_s: float) -> None:
        """Append what tcpdump wrote to stderr, waiting up to ``timeout_s`` for the first bytes."""
        assert self._proc is not None and self._proc.stderr is not None
        fd = self._proc.stderr.fileno()
        ready, _, _ = select.select([fd], [], [], timeout_s)
        while ready:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._stderr += chunk

    def __enter__(self) -> PacketCapture:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self.result is None:
            self.stop()


class CaptureFactory:
    """Starts captures into one run directory; ``close()`` stops those still running."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._captures: list[PacketCapture] = []

    def start(
        self, ports: Sequence[int], *, port_span: int = 1, name: str = "capture"
    ) -> PacketCapture:
        """Start capturing UDP on loopback for ``ports`` into ``<run_dir>/<name>-<n>.pcap``."""
        path = self.run_dir / f"{name}-{len(self._captures) + 1}.pcap"
        capture = PacketCapture(path, ports, port_span=port_span)
        capture.start()
        self._captures.append(capture)
        return capture

    def close(self) -> None:
        for capture in self._captures:
            if capture.result is None:
                capture.stop()
        self._captures.clear()
