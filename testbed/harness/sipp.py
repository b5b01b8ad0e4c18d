"""SIPp 3.6 as a native process: build the command line, run it, collect its result files.

Every SIPp run gets its own directory ``<run_dir>/sipp/<NN>-<name>/`` (its working directory)
holding ``stdout.log``, ``stat.csv`` (-trace_stat, one row per second), ``errors.log``
(-trace_err), ``messages.log`` (-trace_msg), ``logs.log`` (<log> actions), ``screen.log``
(final screens) and SIPp's ``*_counts.csv`` / ``*_error_codes.csv``.

Two ways to run in the background:

* default: SIPp is our child process (no -bg). Exit code known, stop by signal.
* ``detach=True``: SIPp's own ``-bg`` mode; the PID comes from its ``Background mode -
  PID=[n]`` line and is tracked through a pidfd. Its exit code is known only because the
  harness makes the test process a child subreaper (see procs.become_child_subreaper).

Stopping uses SIGUSR1 first (SIPp's soft exit: no new calls, write the final statistics),
then SIGKILL after a bounded wait.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from testbed.harness import procs
from testbed.harness.paths import scenario_path
from testbed.harness.ports import free_port
from testbed.harness.sipp_stats import (
    SippStats,
    parse_counts_csv,
    parse_error_codes_csv,
    parse_stat_csv,
    unexpected_status_codes,
)
from testbed.harness.tones import G711File


SippTransport = Literal["u1", "un", "t1", "tn"]
_BG_PID = re.compile(rb"Background mode - PID=\[(\d+)\]")
_STOP_GRACE_S = 10.0


class SippError(RuntimeError):
    """SIPp could not be started or did not become ready; the message has its output."""


@dataclass(frozen=True)
class SippOptions:
    """One SIPp invocation. Ports left as None are chosen free at start."""

    scenario: str | Path
    """Name in testbed/sipp/ (``"uac_invite_rtp"``) or a path to a scenario XML."""
    _: KW_ONLY
    remote: str | None = None
    """``host:port`` to send to (Kamailio's ``address``); None for a UAS that only answers."""
    service: str | None = None
    """-s: the R-URI user a UAC calls, or the user register_auth.xml registers."""
    auth_user: str | None = None
    """-au (defaults to ``service`` inside SIPp)."""
    auth_password: str | None = None
    """-ap: digest password for [authentication]."""
    calls: int = 1
    """-m: stop after this many calls (UAS: after answering this many)."""
    rate_cps: float | None = None
    """-r: new calls per second (SIPp default 10)."""
    max_concurrent: int | None = None
    """-l: cap on simultaneous calls."""
    call_duration_ms: int | None = None
    """-d: length of a bare <pause/> in the scenario (call hold time, ring time ...)."""
    recv_timeout_ms: int | None = None
    """-recv_timeout: default bound for every <recv> of the scenario."""
    transport: SippTransport = "u1"
    """-t: u1/un = UDP one socket / one per call, t1/tn = TCP likewise."""
    audio: G711File | None = None
    """Sets -key audio "FILE,-1,PT" for scenarios with rtp_stream="[audio]" (looped)."""
    keys: dict[str, str] = field(default_factory=dict)
    """More -key NAME VALUE pairs (e.g. refer_to for uas_answer_refer.xml)."""
    host: str = "127.0.0.1"
    """-i and -mi: local SIP and media address."""
    local_port: int | None = None
    """-p: local SIP port."""
    media_port: int | None = None
    """-mp: local RTP port (audio on it, video on +2)."""
    rtp_echo: bool = False
    """-rtp_echo: send every RTP packet received on the media port back to its sender."""
    timeout_s: float = 30.0
    """-timeout (global, with -timeout_error: hitting it fails the run, exit 255)."""
    trace_messages: bool = True
    """-trace_msg: log every SIP message (turn off for load runs)."""
    name: str | None = None
    """Label for the run directory; defaults to the scenario's file name."""
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class SippResult:
    """What one SIPp run left behind. Read ``describe()`` in assertion messages."""

    name: str
    directory: Path
    command: tuple[str, ...]
    returncode: int | None
    """0 all calls OK, 1 some failed, 97 exit by internal command, 99 no call processed,
    255 fatal (including the global -timeout). None if unknown (detached, not adopted)."""
    timed_out: bool
    """True if the harness had to stop SIPp because it outlived its own timeout."""
    stats: SippStats | None
    """None if SIPp wrote no statistics row (e.g. it failed before starting any call)."""
    counts: dict[str, int]
    """-trace_counts per-message counters, e.g. ``{"1_401_Recv": 1, "3_200_Unexp": 1}``."""
    unexpected_codes: tuple[int, ...]
    """Status codes of responses the scenario did not expect (e.g. (401,) for a bad password)."""
    sip_port: int
    media_port: int

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def _read(self, file_name: str) -> str:
        try:
            return (self.directory / file_name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def error_log(self) -> str:
        return self._read("errors.log")

    def message_log(self) -> str:
        return self._read("messages.log")

    def stdout(self) -> str:
        return self._read("stdout.log")

    def log_lines(self) -> list[str]:
        """Lines written by the scenario's <log> actions (e.g. ``REFER to <sip:...>``)."""
        return [line for line in self._read("logs.log").splitlines() if line.strip()]

    def describe(self, tail_lines: int = 30) -> str:
        """Multi-line summary for assertion messages: command, exit, counters, log tails."""
        stopped = " (stopped by the harness)" if self.timed_out else ""
        parts = [
            f"SIPp run {self.name!r} in {self.directory}",
            f"  exit code: {self.returncode}{stopped}",
            f"  command: {' '.join(self.command)}",
            f"  stats: {self.stats.summary() if self.stats else 'no statistics row'}",
            f"  unexpected status codes: {list(self.unexpected_codes)}",
        ]
        for label, text in (("errors.log", self.error_log()), ("stdout.log", self.stdout())):
            lines = [line for line in text.splitlines() if line.strip()][-tail_lines:]
            if lines:
                parts.append(f"  --- {label} (last {len(lines)} lines) ---")
                parts += [f"  {line}" for line in lines]
        return "\n".join(parts)


class _Handle(Protocol):
    pid: int

    @property
    def returncode(self) -> int | None: ...

    def wait(self, timeout_s: float) -> bool: ...

    def send_signal(self, sig: signal.Signals) -> None: ...


class _ChildHandle:
    """Adapter giving a Popen child the DetachedProcess interface."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def wait(self, timeout_s: float) -> bool:
        try:
            self._proc.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            return False
        return True

    def send_signal(self, sig: signal.Signals) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(sig)


class SippProcess:
    """A running SIPp. ``uri``/``address`` point at its SIP socket (for Kamailio static routes)."""

    def __init__(
        self,
        options: SippOptions,
        name: str,
        directory: Path,
        command: list[str],
        handle: _Handle,
        sip_port: int,
        media_port: int,
    ) -> None:
        self.options = options
        self.name = name
        self.directory = directory
        self.command = tuple(command)
        self._handle = handle
        self.sip_port = sip_port
        self.media_port = media_port
        self._result: SippResult | None = None

    @property
    def pid(self) -> int:
        return self._handle.pid

    @property
    def host(self) -> str:
        return self.options.host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.sip_port}"

    @property
    def uri(self) -> str:
        """``sip:host:port`` of this SIPp, with ``;transport=tcp`` for TCP."""
        tcp = ";transport=tcp" if self.options.transport.startswith("t") else ""
        return f"sip:{self.host}:{self.sip_port}{tcp}"

    def running(self) -> bool:
        return not self._handle.wait(0.0)

    def wait(self, timeout_s: float) -> SippResult:
        """Wait for SIPp to exit by itself; TimeoutError (still running) after ``timeout_s``."""
        if not self._handle.wait(timeout_s):
            raise TimeoutError(f"SIPp {self.name!r} still running after {timeout_s} s")
        return self._collect(timed_out=False)

    def stop(self, timeout_s: float = 5.0) -> SippResult:
        """SIGUSR1 (soft exit, final statistics written), then SIGKILL after ``timeout_s``."""
        if self._result is not None:
            return self._result
        forced = False
        if not self._handle.wait(0.0):
            self._handle.send_signal(signal.SIGUSR1)
            if not self._handle.wait(timeout_s):
                forced = True
                self._handle.send_signal(signal.SIGKILL)
                self._handle.wait(5.0)
        return self._collect(timed_out=forced)

    def _collect(self, timed_out: bool) -> SippResult:
        if self._result is None:
            self._result = collect_result(
                self.name,
                self.directory,
                self.command,
                self._handle.returncode,
                timed_out,
                self.sip_port,
                self.media_port,
            )
        return self._result


def collect_result(
    name: str,
    directory: Path,
    command: tuple[str, ...],
    returncode: int | None,
    timed_out: bool,
    sip_port: int,
    media_port: int,
) -> SippResult:
    """Read a finished run's files into a SippResult (missing files give empty values)."""

    def first(pattern: str) -> str:
        found = sorted(directory.glob(pattern))
        return found[0].read_text(errors="replace") if found else ""

    stats: SippStats | None = None
    stat_text = first("stat.csv")
    if stat_text:
        try:
            stats = parse_stat_csv(stat_text)
        except ValueError:
            stats = None
    counts_text = first("*_counts.csv")
    codes = parse_error_codes_csv(first("*_error_codes.csv"))
    if not codes:
        codes = unexpected_status_codes(first("errors.log"))
    return SippResult(
        name=name,
        directory=directory,
        command=command,
        returncode=returncode,
        timed_out=timed_out,
        stats=stats,
        counts=parse_counts_csv(counts_text) if counts_text else {},
        unexpected_codes=tuple(codes),
        sip_port=sip_port,
        media_port=media_port,
    )


def build_command(
    options: SippOptions, directory: Path, sip_port: int, media_port: int, binary: str = "sipp"
) -> list[str]:
    """The SIPp argument list for ``options`` with all trace files inside ``directory``."""
    o = options
    cmd = [binary]
    if o.remote:
        cmd.append(o.remote)
    cmd += ["-sf", str(scenario_path(o.scenario))]
    cmd += ["-i", o.host, "-p", str(sip_port), "-mi", o.host, "-mp", str(media_port)]
    cmd += ["-t", o.transport, "-m", str(o.calls), "-nostdin"]
    cmd += ["-timeout", f"{o.timeout_s:g}s", "-timeout_error"]
    if o.service is not None:
        cmd += ["-s", o.service]
    if o.auth_user is not None:
        cmd += ["-au", o.auth_user]
    if o.auth_password is not None:
        cmd += ["-ap", o.auth_password]
    if o.rate_cps is not None:
        cmd += ["-r", f"{o.rate_cps:g}"]
    if o.max_concurrent is not None:
        cmd += ["-l", str(o.max_concurrent)]
    if o.call_duration_ms is not None:
        cmd += ["-d", str(o.call_duration_ms)]
    if o.recv_timeout_ms is not None:
        cmd += ["-recv_timeout", str(o.recv_timeout_ms)]
    if o.rtp_echo:
        cmd.append("-rtp_echo")
    keys = dict(o.keys)
    if o.audio is not None:
        keys.setdefault("audio", o.audio.sipp_audio_key())
    for key, value in keys.items():
        cmd += ["-key", key, value]
    cmd += ["-trace_stat", "-stf", str(directory / "stat.csv"), "-fd", "1"]
    cmd += ["-trace_err", "-error_file", str(directory / "errors.log")]
    cmd += ["-trace_logs", "-log_file", str(directory / "logs.log")]
    cmd += ["-trace_screen", "-screen_file", str(directory / "screen.log")]
    cmd += ["-trace_counts", "-trace_error_codes"]
    if o.trace_messages:
        cmd += ["-trace_msg", "-message_file", str(directory / "messages.log")]
    cmd += list(o.extra_args)
    return cmd


class SippFactory:
    """Starts SIPp runs under one run directory and stops leftovers on ``close()``."""

    def __init__(self, run_dir: Path, *, binary: str = "sipp") -> None:
        self.run_dir = run_dir
        self.binary = binary
        self._counter = itertools.count(1)
        self._started: list[SippProcess] = []

    def run(self, options: SippOptions) -> SippResult:
        """Run in the foreground until SIPp exits; bounded by options.timeout_s + 10 s.

        Never raises for a failing scenario: check ``result.ok`` / ``result.returncode``.
        """
        process = self.start(options, wait_ready=False)
        try:
            return process.wait(options.timeout_s + _STOP_GRACE_S)
        except TimeoutError:
            return process.stop()

    def start(
        self,
        options: SippOptions,
        *,
        detach: bool = False,
        wait_ready: bool = True,
        ready_timeout_s: float = 5.0,
    ) -> SippProcess:
        """Start SIPp in the background and (by default) wait until its SIP socket is bound.

        ``detach``: use SIPp's -bg mode (see the module docstring). Raises SippError if SIPp
        exits or is not listening within ``ready_timeout_s``.
        """
        name = options.name or scenario_path(options.scenario).stem
        directory = self.run_dir / "sipp" / f"{next(self._counter):02d}-{name}"
        directory.mkdir(parents=True, exist_ok=True)
        sip_port = options.local_port or free_port(options.host, udp=True, tcp=True)
        media_port = options.media_port or free_port(options.host, udp=True, tcp=False, span=4)
        command = build_command(options, directory, sip_port, media_port, self.binary)
        handle = (
            self._launch_detached(command, directory)
            if detach
            else self._launch_child(command, directory)
        )
        process = SippProcess(options, name, directory, command, handle, sip_port, media_port)
        self._started.append(process)
        if wait_ready:
            self._wait_ready(process, ready_timeout_s)
        return process

    def close(self, timeout_s: float = 5.0) -> list[SippResult]:
        """Stop every SIPp this factory started that is still running; return their results."""
        results = [p.stop(timeout_s) for p in self._started if p.running()]
        self._started.clear()
        return results

    def _launch_child(self, command: list[str], directory: Path) -> _Handle:
        with (directory / "stdout.log").open("wb") as out:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=directory,
            )  # fmt: skip
        return _ChildHandle(proc)

    def _launch_detached(self, command: list[str], directory: Path) -> _Handle:
        procs.become_child_subreaper()
        stdout_path = directory / "stdout.log"
        with stdout_path.open("wb") as out:
            parent = subprocess.Popen(
                [*command, "-bg"], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=directory,
            )  # fmt: skip
        try:
            parent.wait(timeout=10.0)  # the -bg parent prints the PID and exits (code 99)
        except subprocess.TimeoutExpired:
            parent.kill()
            parent.wait()
        match = _BG_PID.search(stdout_path.read_bytes())
        if match is None:
            raise SippError(
                f"SIPp -bg printed no 'Background mode - PID=[n]' (exit {parent.returncode}):\n"
                f"{stdout_path.read_text(errors='replace')[-2000:]}"
            )
        handle = procs.DetachedProcess(int(match.group(1)))
        handle.open()
        return handle

    def _wait_ready(self, process: SippProcess, timeout_s: float) -> None:
        proto: Literal["udp", "tcp"] = "tcp" if process.options.transport[0] == "t" else "udp"
        if proto == "tcp" and process.options.remote is not None:
            return  # a TCP client does not listen
        bound = procs.wait_until(
            lambda: procs.port_bound(process.sip_port, proto) or not process.running(),
            timeout_s,
        )
        if process.running() and bound:
            return
        why = "exited" if not process.running() else f"had no {proto} socket after {timeout_s} s"
        result = process.stop()
        raise SippError(f"SIPp {process.name!r} {why} before it was ready\n{result.describe()}")
