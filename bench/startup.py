"""Start-up of the one-file binary: exec -> READY=1 (sd_notify), --version, SIGTERM -> exit,
and the binary's size. Target: READY=1 within 1.0 s.

Run: ``make binary && .venv/bin/python -m bench.startup [--binary dist/sip4ai] [--runs 7]``.
Prints a table and writes ``bench/results/startup.json``.

"cold" runs first evict the binary from the page cache (posix_fadvise DONTNEED, no system-wide
drop_caches); "warm" runs follow right after. Every one-file start unpacks the whole archive
into a fresh $TMPDIR/_MEIxxxxxx, so cold and warm differ little. The binary runs API-only
(no SIP credentials), the way systemd starts it: NOTIFY_SOCKET on a unix datagram socket.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parent.parent
RESULTS_PATH = REPO / "bench" / "results" / "startup.json"
DEFAULT_BINARY = REPO / "dist" / "sip4ai"
TARGET_READY_S = 1.0
READY_TIMEOUT_S = 30.0


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache so the next start reads it from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def clean_env() -> dict[str, str]:
    prefixes = ("SIP", "NOTIFY_SOCKET", "WATCHDOG", "CONFIG_FILE", "API_", "AUDIO_FILE")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def one_start(binary: Path, workdir: Path) -> dict[str, float]:
    """One exec -> READY=1 -> SIGTERM -> exit cycle; seconds, bytes."""
    sock_path = workdir / "notify.sock"
    unpack = workdir / "tmp"
    unpack.mkdir()
    env = clean_env() | {
        "NOTIFY_SOCKET": str(sock_path),
        "API_PORT": str(free_tcp_port()),
        "TMPDIR": str(unpack),
        "STATE_DIRECTORY": str(workdir),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(READY_TIMEOUT_S)
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(binary)],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
            ready_s = time.monotonic() - started
            result = {"ready_s": ready_s}
            if sys.platform.startswith("linux"):
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                result["rss_bootloader_bytes"] = rss_bytes(proc.pid)
                result["rss_python_bytes"] = sum(rss_bytes(int(c)) for c in children)
            result["unpacked_bytes"] = dir_size(unpack)
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            result["exit_code"] = proc.wait(timeout=30)
            result["stop_s"] = time.monotonic() - stopping
            return result
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def version_time(binary: Path, workdir: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        [str(binary), "--version"],
        env=clean_env() | {"TMPDIR": str(workdir)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def measure(binary: Path, runs: int) -> dict[str, Any]:
    ready: dict[str, list[float]] = {"cold": [], "warm": []}
    version: dict[str, list[float]] = {"cold": [], "warm": []}
    stop: list[float] = []
    last: dict[str, float] = {}
    for _ in range(runs):
        for kind in ("cold", "warm"):
            if kind == "cold":
                evict(binary)
            with tempfile.TemporaryDirectory(prefix="sip4ai-bench-") as tmp:
                last = one_start(binary, Path(tmp))
            if last["exit_code"] != 0:
                raise RuntimeError(f"sip4ai exited {last['exit_code']} after SIGTERM")
            ready[kind].append(last["ready_s"])
            stop.append(last["stop_s"])
    for _ in range(runs):
        for kind in ("cold", "warm"):
            if kind == "cold":
                evict(binary)
            with tempfile.TemporaryDirectory(prefix="sip4ai-bench-") as tmp:
                version[kind].append(version_time(binary, Path(tmp)))
    size = binary.stat().st_size
    ready_cold = statistics.median(ready["cold"])
    return {
        "binary": str(binary.relative_to(REPO) if binary.is_relative_to(REPO) else binary),
        "size_bytes": size,
        "size_mb": round(size / 1e6, 1),
        "unpacked_mb": round(last.get("unpacked_bytes", 0) / 1e6, 1),
        "runs": runs,
        "ready_s": {kind: summary(values) for kind, values in ready.items()},
        "version_s": {kind: summary(values) for kind, values in version.items()},
        "stop_s": summary(stop),
        "rss_mb": {
            "bootloader": round(last.get("rss_bootloader_bytes", 0) / 1e6, 1),
            "python": round(last.get("rss_python_bytes", 0) / 1e6, 1),
        },
        "target_ready_s": TARGET_READY_S,
        "meets_target": ready_cold <= TARGET_READY_S,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--binary", type=Path, default=DEFAULT_BINARY)
    parser.add_argument("--runs", type=int, default=7, help="starts per kind (cold, warm)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    binary: Path = args.binary.resolve()
    if not binary.is_file() or shutil.which(str(binary)) is None:
        print(f"{binary}: no executable one-file binary; run `make binary` first", file=sys.stderr)
        return 2
    result = measure(binary, args.runs)
    size, unpacked = result["size_mb"], result["unpacked_mb"]
    print(f"binary       {result['binary']}: {size} MB, unpacks {unpacked} MB")
    for name in ("ready_s", "version_s"):
        for kind in ("cold", "warm"):
            s = result[name][kind]
            print(
                f"{name:<12} {kind:<5} median {s['median']:.3f} s  "
                f"(min {s['min']:.3f}, max {s['max']:.3f}, {args.runs} runs)"
            )
    print(f"stop_s       median {result['stop_s']['median']:.3f} s (SIGTERM -> exit 0)")
    rss = result["rss_mb"]
    print(f"rss          bootloader {rss['bootloader']} MB, python {rss['python']} MB")
    verdict = "meets" if result["meets_target"] else "MISSES"
    cold = result["ready_s"]["cold"]["median"]
    print(f"READY=1 cold median {cold:.3f} s {verdict} the {TARGET_READY_S} s target")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
