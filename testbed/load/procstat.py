"""CPU and RSS of the sip4ai process from /proc, and its active calls, sampled in a thread.

The sampler reads ``/proc/PID/stat`` (utime + stime, all threads), ``/proc/PID/status``
(VmRSS) and ``/proc/stat`` (the whole machine) every ``period_s``, and asks a callable for
sip4ai's active call count (GET /status). Readers get plain ``Sample`` values; the window
arithmetic is in ``testbed.load.report``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    t: float
    """time.monotonic() of the reading."""
    cpu_s: float
    """sip4ai utime + stime so far, seconds."""
    rss_kb: int
    machine_busy: int
    """Busy jiffies of all cores so far (/proc/stat)."""
    machine_total: int
    active_calls: int | None
    """sip4ai's /status active_calls (None: it did not answer in time)."""
    kit_cpu_s: float = 0.0
    """utime + stime of this process and all its descendants (sip4ai, the mock, SIPp,
    Kamailio, tcpdump): the CPU the load run itself uses, to tell it from other work."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise OSError(f"no VmRSS for {pid}")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and every live descendant (by /proc PPid links)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total = 0.0
    for pid, seconds in cpu.items():
        node, hops = pid, 0
        while node not in (root, 0, 1) and hops < 64:
            node, hops = parent.get(node, 0), hops + 1
        if node == root:
            total += seconds
    return total


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def read_sample(pid: int, active_calls: Callable[[], int | None]) -> Sample:
    busy, total = machine_jiffies()
    kit = tree_cpu_seconds(os.getpid())
    return Sample(time.monotonic(), cpu_seconds(pid), rss_kb(pid), busy, total, active_calls(), kit)


class Sampler:
    """Samples one PID every ``period_s`` in a daemon thread until ``stop()``."""

    def __init__(
        self, pid: int, active_calls: Callable[[], int | None], period_s: float = 0.5
    ) -> None:
        self.pid = pid
        self.period_s = period_s
        self._active_calls = active_calls
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        return self.snapshot()

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                sample = read_sample(self.pid, self._active_calls)
            except OSError:
                return  # the process is gone
            with self._lock:
                self.samples.append(sample)
            self._stop.wait(max(0.0, self.period_s - (time.monotonic() - started)))


def status_active_calls(api: Callable[..., tuple[int, object]]) -> Callable[[], int | None]:
    """A reader of /status active_calls through ``Sip4ai.api`` (None on any failure)."""

    def read() -> int | None:
        with contextlib.suppress(Exception):
            code, body = api("GET", "/status", timeout_s=2.0)
            if code == 200 and isinstance(body, dict):
                return int(body.get("active_calls", 0))
        return None

    return read
