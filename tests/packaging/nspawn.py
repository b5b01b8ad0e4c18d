"""A Debian root booted with systemd-nspawn, for tests that need systemd as PID 1.

The root is made once with debootstrap (about 40 s, 260 MB) and cached outside the
repository, keyed by suite and package list: $SIP4AI_ROOTFS_CACHE, default
/var/cache/sip4ai-test/rootfs-<suite>-<key>. Every boot is ``--ephemeral`` (a throwaway copy,
removed when the container stops), so the cache is never modified.

Without a host systemd or D-Bus, nspawn needs ``--register=no --keep-unit`` (else "Failed to
open system bus"). The container shares the host's network namespace, so it reaches a server
on the host's 127.0.0.1. machinectl and ``systemd-run --machine`` need machined, which is not
there; commands run inside with ``nsenter -t <container PID 1> -a``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.packaging.helpers import require, require_tools


SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "curl", "ca-certificates")
DEFAULT_CACHE = Path("/var/cache/sip4ai-test")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
STAMP = ".sip4ai-rootfs-complete"
BOOT_TIMEOUT_S = 60.0


def host_mirror() -> str:
    """The host's Debian mirror (deb822 sources or sources.list), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb" and "security" not in fields[1]:
                return fields[1]
    return DEFAULT_MIRROR


def rootfs(suite: str = SUITE) -> tuple[Path, float]:
    """The cached root for ``suite`` and the seconds spent building it now (0.0 if cached)."""
    require(os.geteuid() == 0, "systemd-nspawn and debootstrap need root")
    require_tools("debootstrap", "systemd-nspawn", "nsenter", apt="debootstrap systemd-container")
    cache = Path(os.environ.get("SIP4AI_ROOTFS_CACHE", str(DEFAULT_CACHE)))
    key = hashlib.sha256(",".join(PACKAGES).encode()).hexdigest()[:8]
    target = cache / f"rootfs-{suite}-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".rootfs-{suite}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / STAMP).is_file():
            return target, 0.0
        started = time.monotonic()
        partial = cache / f"{target.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                suite,
                str(partial),
                host_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr}")
        # Hostname lookups of the container's own name must not wait on DNS.
        (partial / "etc" / "hostname").write_text("sip4ai-test\n")
        (partial / STAMP).write_text(f"{suite} {' '.join(PACKAGES)}\n")
        partial.rename(target)
        return target, time.monotonic() - started


class Container:
    """One booted, ephemeral container. Commands run as root inside via nsenter."""

    def __init__(self, root: Path, log_path: Path, *, noexec_tmp: bool = True) -> None:
        self.root = root
        self.log_path = log_path
        self.noexec_tmp = noexec_tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        self.boot_s = 0.0

    def start(self) -> None:
        args = [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--boot",
            "--ephemeral",
            "--quiet",
            "--console=pipe",
            f"--directory={self.root}",
            f"--machine=sip4ai-test-{os.getpid()}",
        ]
        if self.noexec_tmp:
            # The one-file binary must not depend on an exec-able /tmp (see the unit's TMPDIR).
            args.append("--tmpfs=/tmp:mode=1777,noexec")
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._boot(started + BOOT_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.boot_s = time.monotonic() - started

    def _boot(self, deadline: float) -> None:
        self.pid1 = self._wait_for_pid1(deadline)
        # Until systemd has bound its private bus socket, systemctl says "Failed to connect to
        # bus"; after that, --wait blocks until start-up is complete.
        while True:
            state = self.run(
                "systemctl is-system-running --wait",
                timeout_s=max(1.0, deadline - time.monotonic()),
                check=False,
            )
            if state.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"container did not boot: {state.stdout}{state.stderr}{self.log_tail()}"
                )
            time.sleep(0.1)

    def _wait_for_pid1(self, deadline: float) -> int:
        """The container's systemd as seen from the host: a descendant of our nspawn."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"systemd-nspawn exited {self.proc.returncode}\n{self.log_tail()}"
                )
            for pid in _descendants(self.proc.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return pid
            time.sleep(0.05)
        raise RuntimeError(
            f"no systemd in the container after {BOOT_TIMEOUT_S} s\n{self.log_tail()}"
        )

    def run(
        self, script: str, *, timeout_s: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash script as root inside the container (all its namespaces)."""
        result = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.pid1),
                "-a",
                "--",
                "/usr/bin/env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "/bin/bash",
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in container, exit {result.returncode}: {script}\n{result.stdout}{result.stderr}"
            )
        return result

    def out(self, script: str, timeout_s: float = 60.0) -> str:
        return self.run(script, timeout_s=timeout_s).stdout.strip()

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file into the running container (through its root as seen from the host)."""
        target = Path(f"/proc/{self.pid1}/root") / path.lstrip("/")
        target.write_bytes(data)
        target.chmod(mode)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM makes nspawn halt the container cleanly; SIGKILL if it does not."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            tasks = Path(f"/proc/{current}/task").iterdir()
            for task in tasks:
                children = (task / "children").read_text().split()
                found += [int(c) for c in children]
                pending += [int(c) for c in children]
        except OSError:
            continue
    return found
