"""Two network namespaces joined only by a pair of TUN devices (for ``netem.py``), and a way to
run harness code inside one of them.

The CI kernel has no sch_netem (``tc qdisc ... netem`` fails with "Specified qdisc kind is
unknown"), so the link between the namespaces is a userspace forwarder (``netem.Netem``) that
reads IP packets from one TUN device and writes them into the other, with delay and loss.

``NetnsPair.inside(side)`` switches the *calling thread* into a namespace for the duration of a
``with`` block: sockets created and processes started there (Popen forks from this thread)
live in that namespace. The thread's own namespace is restored on exit. Needs root, ``ip``
(iproute2) and /dev/net/tun.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType


CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


def netns_available() -> str | None:
    """None if namespaces with TUN links can be built here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def setns_path(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextmanager
def thread_in_netns(path: str) -> Iterator[None]:
    """Run the block in the namespace at ``path``; the thread's own one is restored after."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns_path(path)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the original netns")
    finally:
        os.close(own)


@dataclass(frozen=True)
class Side:
    netns: str
    device: str
    address: str
    """This side's IPv4 address on the point-to-point TUN link."""

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.netns}"


class NetnsPair:
    """Namespaces ``a`` and ``b`` (names unique per test process), each with loopback up and
    a TUN device; ``a`` is 10.213.N.1, ``b`` is 10.213.N.2 (N from the PID)."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid())
        subnet = 1 + os.getpid() % 250
        self.a = Side(f"s4ai-{tag}-a", "s4aiA", f"10.213.{subnet}.1")
        self.b = Side(f"s4ai-{tag}-b", "s4aiB", f"10.213.{subnet}.2")
        self._created: list[str] = []

    def create(self) -> None:
        try:
            for side, peer in ((self.a, self.b), (self.b, self.a)):
                _ip("netns", "add", side.netns)
                self._created.append(side.netns)
                _ip("-n", side.netns, "link", "set", "lo", "up")
                _ip("-n", side.netns, "tuntap", "add", "dev", side.device, "mode", "tun")
                _ip(
                    "-n", side.netns, "addr", "add", side.address, "peer", peer.address,
                    "dev", side.device,
                )  # fmt: skip
                _ip("-n", side.netns, "link", "set", side.device, "up")
        except NetnsError:
            self.delete()
            raise

    def delete(self) -> None:
        """Remove the namespaces (their TUN devices go with them); idempotent."""
        while self._created:
            subprocess.run(
                ["ip", "netns", "del", self._created.pop()], capture_output=True, timeout=10
            )

    @contextmanager
    def inside(self, side: Side) -> Iterator[None]:
        with thread_in_netns(side.path):
            yield

    def __enter__(self) -> NetnsPair:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
