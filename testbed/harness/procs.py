"""Process and socket helpers shared by the Kamailio, SIPp and tcpdump wrappers.

Waits here are bounded polls of a process or a kernel table with a deadline: the conditions
(a port bound by another process, a process gone) have no event to wait on. Processes are
only ever signalled by the PID (or process group) the harness itself started.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal


POLL_INTERVAL_S = 0.02
_PR_SET_CHILD_SUBREAPER = 36


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` every 20 ms until it is true (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)


def port_bound(port: int, proto: Literal["udp", "tcp"] = "udp") -> bool:
    """True if some socket on this host is bound to ``port`` (TCP: listening), IPv4 or IPv6.

    Reads /proc/net/{udp,tcp}{,6} instead of trying to bind, which could steal the port from
    the process that is about to bind it.
    """
    wanted = f":{port:04X}"
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or not fields[1].endswith(wanted):
                continue
            if proto == "udp" or fields[3] == "0A":  # 0A = TCP_LISTEN
                return True
    return False


def stop_popen(
    proc: subprocess.Popen[bytes],
    timeout_s: float,
    first_signal: signal.Signals = signal.SIGTERM,
    *,
    kill_group: bool = False,
) -> int:
    """Send ``first_signal``, wait up to ``timeout_s``, then SIGKILL; return the exit code.

    ``kill_group``: the process was started with ``start_new_session=True`` and its whole
    process group (its own children) gets the SIGKILL too.
    """
    if proc.poll() is None:
        proc.send_signal(first_signal)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if kill_group:
                _killpg(proc.pid)
            else:
                proc.kill()
    returncode = proc.wait(timeout=5.0)
    if kill_group:
        _killpg(proc.pid)  # children that outlived their parent (same group id as its PID)
    return returncode


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def become_child_subreaper() -> bool:
    """Make this process adopt orphaned descendants (Linux prctl PR_SET_CHILD_SUBREAPER).

    SIPp's -bg mode forks and its parent exits at once; the orphan is re-parented to the
    nearest subreaper. Being that subreaper lets :class:`DetachedProcess` collect its exit code
    and reap it (on the CI machine PID 1 does not reap: detached SIPps stayed ``<defunct>``).
    Side effect for the whole test process: other orphaned descendants are re-parented to it
    too. Returns False where prctl is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class DetachedProcess:
    """A process that is not (necessarily) our child, tracked through a pidfd.

    The pidfd makes ``send_signal`` safe against PID reuse and ``wait`` race-free. If the process
    is our child (e.g. adopted as subreaper) its exit code is collected; otherwise
    ``returncode`` stays None after it ends.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pidfd: int | None = None
        self.returncode: int | None = None
        self._done = False

    def open(self) -> None:
        """Open the pidfd. A PID that no longer exists (already reaped) counts as ended."""
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._done = True

    def running(self) -> bool:
        return not self.wait(0.0)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the process to end; True if it has ended."""
        if self._done:
            return True
        if self._pidfd is None:
            raise RuntimeError("DetachedProcess.open() was not called")
        ready, _, _ = select.select([self._pidfd], [], [], max(0.0, timeout_s))
        if not ready:
            return False
        self._reap()
        return True

    def _reap(self) -> None:
        self._done = True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0  # not our child: the exit code is not ours to read
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig``; a process that has already ended is ignored."""
        if self._done or self._pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float, first_signal: signal.Signals = signal.SIGTERM) -> None:
        """``first_signal``, wait up to ``timeout_s``, then SIGKILL and wait up to 5 s more."""
        if self.wait(0.0):
            return
        self.send_signal(first_signal)
        if not self.wait(timeout_s):
            self.send_signal(signal.SIGKILL)
            self.wait(5.0)
