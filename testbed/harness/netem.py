"""Userspace netem: forwards IP packets between two TUN devices (one per network namespace, see
``netns.NetnsPair``) with a fixed delay, uniform jitter and independent random loss, each
direction on its own, like ``tc qdisc add dev X root netem delay D J loss L%`` on both sides'
egress. Jitter never reorders packets (a packet leaves no earlier than the one before it), as
netem with a rate or a pfifo child behaves; pass ``reorder=True`` to allow it.

The forwarder is a separate process (``python -m testbed.harness.netem``) so that its timing
does not share the test process's GIL. It prints ``READY`` once both devices are open and, on
SIGTERM/SIGINT or after ``--duration``, one JSON line of counters per direction::

    {"a_to_b": {"rx": 412, "dropped": 13, "tx": 399}, "b_to_a": {...}}

Linux only, root (setns + /dev/net/tun).
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import itertools
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from testbed.harness.netns import NetnsPair, setns_path


TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
_REPO = Path(__file__).resolve().parents[2]
_DRAIN_PER_WAKEUP = 256


@dataclass(frozen=True)
class Impairment:
    delay_ms: float = 40.0
    jitter_ms: float = 10.0
    """Uniform +/- around ``delay_ms``."""
    loss_percent: float = 3.0
    reorder: bool = False
    seed: int | None = None


@dataclass
class _Direction:
    name: str
    rx: int = 0
    dropped: int = 0
    tx: int = 0
    last_due: float = 0.0

    def summary(self) -> dict[str, int]:
        return {"rx": self.rx, "dropped": self.dropped, "tx": self.tx}


def open_tun(netns_path: str, device: str) -> int:
    """Attach to the existing TUN ``device`` in the namespace at ``netns_path``; the returned
    (non-blocking) descriptor stays bound to it after the thread leaves that namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns_path(netns_path)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI))
    finally:
        setns_path(f"/proc/self/fd/{own}")
        os.close(own)
    return fd


def forward(fd_a: int, fd_b: int, imp: Impairment, duration_s: float, out: IO[str]) -> None:
    """The forwarding loop; returns after ``duration_s`` or on SIGTERM/SIGINT."""
    rnd = random.Random(imp.seed)
    peer = {fd_a: fd_b, fd_b: fd_a}
    stats = {fd_a: _Direction("a_to_b"), fd_b: _Direction("b_to_a")}
    queue: list[tuple[float, int, int, bytes]] = []
    order = itertools.count()
    stopping = [False]

    def stop(*_: object) -> None:
        stopping[0] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    end = time.monotonic() + duration_s
    while not stopping[0] and time.monotonic() < end:
        now = time.monotonic()
        wait = min(0.05, max(0.0, queue[0][0] - now)) if queue else 0.05
        try:
            readable, _, _ = select.select([fd_a, fd_b], [], [], wait)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            direction = stats[fd]
            for _ in range(_DRAIN_PER_WAKEUP):
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                direction.rx += 1
                if rnd.random() * 100 < imp.loss_percent:
                    direction.dropped += 1
                    continue
                due = (
                    now + max(0.0, imp.delay_ms + rnd.uniform(-imp.jitter_ms, imp.jitter_ms)) / 1000
                )
                if not imp.reorder:
                    due = max(due, direction.last_due)
                direction.last_due = due
                heapq.heappush(queue, (due, next(order), fd, packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, source, packet = heapq.heappop(queue)
            try:
                os.write(peer[source], packet)
                stats[source].tx += 1
            except OSError:
                pass
    out.write(json.dumps({d.name: d.summary() for d in stats.values()}) + "\n")
    out.flush()


class Netem:
    """The forwarder process between the two sides of ``pair``."""

    def __init__(
        self,
        pair: NetnsPair,
        impairment: Impairment,
        *,
        duration_s: float = 120.0,
        log_path: Path | None = None,
    ) -> None:
        self.pair = pair
        self.impairment = impairment
        self.duration_s = duration_s
        self.log_path = log_path
        self._proc: subprocess.Popen[str] | None = None
        self.counters: dict[str, dict[str, int]] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        imp = self.impairment
        cmd = [
            sys.executable, "-m", "testbed.harness.netem",
            "--ns-a", self.pair.a.path, "--dev-a", self.pair.a.device,
            "--ns-b", self.pair.b.path, "--dev-b", self.pair.b.device,
            "--delay-ms", str(imp.delay_ms), "--jitter-ms", str(imp.jitter_ms),
            "--loss", str(imp.loss_percent), "--duration", str(self.duration_s),
        ]  # fmt: skip
        if imp.reorder:
            cmd.append("--reorder")
        if imp.seed is not None:
            cmd += ["--seed", str(imp.seed)]
        stderr = self.log_path.open("w") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            cmd, cwd=_REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
            text=True,
        )  # fmt: skip
        if self.log_path:
            stderr.close()  # type: ignore[union-attr]
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline().strip() if ready else ""
        if line != "READY":
            self.stop()
            raise RuntimeError(f"netem forwarder did not start (got {line!r})")

    def stop(self, timeout_s: float = 5.0) -> dict[str, dict[str, int]] | None:
        """Stop the forwarder; returns its counters (None if it printed none)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return self.counters
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for line in out.splitlines():
            if line.startswith("{"):
                self.counters = json.loads(line)
        return self.counters

    def __enter__(self) -> Netem:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns-a", required=True, help="netns path, e.g. /var/run/netns/x")
    parser.add_argument("--dev-a", required=True)
    parser.add_argument("--ns-b", required=True)
    parser.add_argument("--dev-b", required=True)
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--jitter-ms", type=float, default=10.0)
    parser.add_argument("--loss", type=float, default=3.0, help="percent per packet")
    parser.add_argument("--reorder", action="store_true")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--duration", type=float, default=120.0)
    args = parser.parse_args()
    fd_a = open_tun(args.ns_a, args.dev_a)
    fd_b = open_tun(args.ns_b, args.dev_b)
    print("READY", flush=True)
    impairment = Impairment(args.delay_ms, args.jitter_ms, args.loss, args.reorder, args.seed)
    forward(fd_a, fd_b, impairment, args.duration, sys.stdout)


if __name__ == "__main__":
    main()
