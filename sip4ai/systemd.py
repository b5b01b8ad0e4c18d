"""sd_notify: READY, STOPPING, STATUS and the watchdog, silent when NOTIFY_SOCKET is unset.

A one-file PyInstaller binary runs the app as a child of its bootloader, so systemd's
``WATCHDOG_PID`` names the parent: both our own PID and our parent's are accepted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

import sdnotify


logger = logging.getLogger(__name__)


def watchdog_interval_s(environ: Mapping[str, str], pid: int, ppid: int) -> float | None:
    """Half of WATCHDOG_USEC when the watchdog is meant for this process, else None."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        interval_us = int(usec)
    except ValueError:
        logger.warning("! ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if interval_us <= 0:
        return None
    wd_pid = environ.get("WATCHDOG_PID")
    if wd_pid:
        try:
            if int(wd_pid) not in (pid, ppid):
                return None
        except ValueError:
            return None
    return interval_us / 2_000_000


class Notifier:
    """Sends sd_notify messages. Every method is a no-op without NOTIFY_SOCKET."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdog_s = watchdog_interval_s(env, os.getpid(), os.getppid())

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    async def watchdog(self) -> None:
        """Ping WATCHDOG=1 at half the interval until cancelled; returns at once if not asked."""
        if self._notifier is None or self.watchdog_s is None:
            return
        while True:
            self._send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s)
