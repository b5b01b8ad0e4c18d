"""Kamailio registrar + record-routing proxy as a native process (testbed/kamailio/kamailio.cfg).

Lifecycle: ``start()`` launches ``kamailio -DD -E`` (no daemonizing, log to stderr, kept in
``<run_dir>/kamailio.log``), waits until it answers OPTIONS (bounded), then loads the extra
users and the static routes over JSON-RPC. ``stop()`` sends SIGTERM, waits (bounded), then
SIGKILLs the process group. ``restart()`` is stop + start on the same ports; registrations are
lost (usrloc is memory only), users and static routes are restored.

Typical use (see tests/e2e/conftest.py for the fixture)::

    with Kamailio(run_dir) as kam:
        kam.set_static_route("uas", uas.uri)       # SIPp UAS that never registers
        sipp.run(SippOptions("uac_invite_rtp", remote=kam.address, service="uas", ...))
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from testbed.harness import procs
from testbed.harness.paths import KAMAILIO_CFG
from testbed.harness.ports import free_port
from testbed.harness.sip_probe import Transport, wait_for_sip


#: Users and passwords built into kamailio.cfg (event_route[htable:mod-init]).
DEFAULT_USERS: Mapping[str, str] = {"alice": "alicepw", "bob": "bobpw", "aibot": "aibotpw"}

_RPC_SOCKET = "kamailio_rpc.sock"
_MAX_UNIX_PATH = 100  # sun_path is 108 bytes; keep room for the client socket names


class KamailioError(RuntimeError):
    """Kamailio failed to start, died, or refused an RPC; the message carries the log tail."""


class Kamailio:
    """One Kamailio instance on loopback with its own ports and run dir.

    Ports default to free ones chosen at the first ``start()`` and are kept for ``restart()``.
    The constructor does no I/O.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        host: str = "127.0.0.1",
        sip_port: int | None = None,
        tls: bool = False,
        tls_port: int | None = None,
        users: Mapping[str, str] | None = None,
        static_routes: Mapping[str, str] | None = None,
        no_answer_timeout_s: float = 60.0,
        binary: str = "kamailio",
        cfg: Path = KAMAILIO_CFG,
    ) -> None:
        """``users``: extra user -> password on top of :data:`DEFAULT_USERS`.
        ``static_routes``: R-URI user -> destination URI (e.g. ``sip:127.0.0.1:23456``).
        ``no_answer_timeout_s``: the proxy's fr_inv_timer; after it an unanswered INVITE is
        cancelled towards the callee and answered 408 towards the caller.
        """
        self.run_dir = run_dir
        self.host = host
        self._sip_port = sip_port
        self.tls = tls
        self._tls_port = tls_port
        self._users = dict(DEFAULT_USERS) | dict(users or {})
        self._extra_users = dict(users or {})
        self._static_routes = dict(static_routes or {})
        self.no_answer_timeout_s = no_answer_timeout_s
        self.binary = binary
        self.cfg = cfg
        self.log_path = run_dir / "kamailio.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl_dir: Path | None = None
        self._own_ctl_dir = False
        self._rpc_ids = itertools.count(1)
        self.starts = 0
        """How many times start() succeeded (restart() counts)."""

    # ----- addresses -----

    @property
    def sip_port(self) -> int:
        """UDP and TCP port (the same number). Valid after the first start()."""
        if self._sip_port is None:
            raise RuntimeError("Kamailio.start() has not chosen the ports yet")
        return self._sip_port

    @property
    def tls_port(self) -> int:
        if not self.tls or self._tls_port is None:
            raise RuntimeError("TLS is not enabled or Kamailio was not started")
        return self._tls_port

    @property
    def address(self) -> str:
        """``host:port`` for SIPp's remote-host argument and for SIP_SERVER-style settings."""
        return f"{self.host}:{self.sip_port}"

    def uri(self, user: str | None = None, transport: str | None = None) -> str:
        """SIP URI of the proxy, or of ``user`` there; ``transport="tls"`` uses the TLS port."""
        port = self.tls_port if transport == "tls" else self.sip_port
        userinfo = f"{user}@" if user else ""
        params = f";transport={transport}" if transport else ""
        return f"sip:{userinfo}{self.host}:{port}{params}"

    @property
    def users(self) -> Mapping[str, str]:
        return dict(self._users)

    @property
    def static_routes(self) -> Mapping[str, str]:
        return dict(self._static_routes)

    @property
    def tls_cert_path(self) -> Path:
        """Self-signed certificate (PEM) of the TLS listener, usable as a CA file by clients."""
        return self.run_dir / "tls" / "cert.pem"

    # ----- lifecycle -----

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Launch and wait until OPTIONS over UDP (and TLS if enabled) gets 200.

        Raises KamailioError with the log tail if the process exits or does not answer.
        """
        if self.running:
            raise RuntimeError("Kamailio is already running")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._sip_port is None:
            self._sip_port = free_port(self.host, udp=True, tcp=True)
        if self.tls and self._tls_port is None:
            self._tls_port = free_port(self.host, udp=False, tcp=True)
        ctl_dir = self._control_dir()
        if self.tls:
            self._write_tls_files(ctl_dir)
        with self.log_path.open("ab") as log:
            log.write(f"==== harness: start #{self.starts + 1} at {time.ctime()}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(ctl_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        try:
            self._wait_answering("udp", self.sip_port, deadline)
            if self.tls:
                self._wait_answering("tls", self.tls_port, deadline)
        except KamailioError:
            self.stop()
            raise
        for user, password in self._extra_users.items():
            self.rpc("htable.sets", "users", user, password)
        for user, target in self._static_routes.items():
            self.rpc("htable.sets", "static", user, target)
        self.starts += 1

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the group; return the exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        return procs.stop_popen(proc, timeout_s, kill_group=True)

    def restart(self, timeout_s: float = 10.0, *, down_s: float = 0.0) -> None:
        """Stop, stay down for ``down_s`` seconds, start again on the same ports."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)  # a deliberate outage, not a wait for a condition
        self.start(timeout_s)

    def close(self) -> None:
        """Stop and remove the control-socket directory if it was created outside run_dir."""
        self.stop()
        if self._own_ctl_dir and self._ctl_dir is not None:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
            self._ctl_dir = None

    def __enter__(self) -> Kamailio:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----- runtime configuration and state -----

    def set_static_route(self, user: str, target_uri: str) -> None:
        """Route INVITEs for ``user`` (who never registers) to ``target_uri``; kept on restart."""
        self._static_routes[user] = target_uri
        if self.running:
            self.rpc("htable.sets", "static", user, target_uri)

    def add_user(self, user: str, password: str) -> None:
        """Add or change a local user (digest auth); kept on restart."""
        self._users[user] = password
        self._extra_users[user] = password
        if self.running:
            self.rpc("htable.sets", "users", user, password)

    def contacts(self, aor: str) -> list[str]:
        """Contact URIs registered for ``aor`` (a user name); [] if none."""
        try:
            result = self.rpc("ul.lookup", "location", aor)
        except KamailioError as e:
            if "not found" in str(e).lower():
                return []
            raise
        return _contact_uris(result)

    def wait_registered(self, aor: str, timeout_s: float = 10.0) -> list[str]:
        """Poll until ``aor`` has a contact; return them. TimeoutError after ``timeout_s``."""
        found: list[str] = []

        def registered() -> bool:
            found[:] = self.contacts(aor)
            return bool(found)

        if not procs.wait_until(registered, timeout_s):
            raise TimeoutError(f"{aor} did not register within {timeout_s} s")
        return found

    def rpc(self, method: str, *params: str | int, timeout_s: float = 2.0) -> Any:
        """Call a Kamailio RPC (JSON-RPC over its Unix datagram socket); return ``result``.

        Raises KamailioError for an RPC error reply (e.g. ``AOR not found in location table``)
        and TimeoutError when no reply comes within ``timeout_s``.
        """
        if not self.running:
            raise KamailioError(f"rpc {method}: Kamailio is not running\n{self.log_tail()}")
        ctl_dir = self._control_dir()
        request_id = next(self._rpc_ids)
        client_path = ctl_dir / f"rpc-client-{os.getpid()}-{request_id}.sock"
        request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": request_id}
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(client_path))
            try:
                s.settimeout(timeout_s)
                s.sendto(json.dumps(request).encode(), str(ctl_dir / _RPC_SOCKET))
                try:
                    reply = json.loads(s.recv(1 << 20))
                except TimeoutError:
                    raise TimeoutError(f"no reply to rpc {method} in {timeout_s} s") from None
            finally:
                client_path.unlink(missing_ok=True)
        if "error" in reply:
            raise KamailioError(f"rpc {method}{list(params)}: {reply['error']}")
        return reply.get("result")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """Last ``lines`` of the Kamailio log, for assertion and error messages."""
        tail = self.log_text().splitlines()[-lines:]
        return f"--- {self.log_path} (last {len(tail)} lines) ---\n" + "\n".join(tail)

    # ----- internals -----

    def _command(self, ctl_dir: Path) -> list[str]:
        defines = [
            f'LISTEN_IP="{self.host}"',
            f"LISTEN_PORT={self.sip_port}",
            f"FR_INV_TIMEOUT_MS={round(self.no_answer_timeout_s * 1000)}",
            "RUN_DIR_SET",
        ]
        if self.tls:
            defines += ["WITH_TLS", f"TLS_PORT={self.tls_port}"]
        cmd = [self.binary, "-f", str(self.cfg), "-DD", "-E", "-m", "64", "-M", "8"]
        for d in defines:
            cmd += ["-A", d]
        cmd += ["--substdef", f"!RUN_DIR!{ctl_dir}!g", "-Y", str(ctl_dir)]
        cmd += ["-P", str(self.run_dir / "kamailio.pid")]
        return cmd

    def _control_dir(self) -> Path:
        """Directory for the RPC/ctl sockets and tls.cfg: run_dir/ctl if its paths fit in a
        Unix socket address, else a short private directory under the system temp dir."""
        if self._ctl_dir is None:
            candidate = self.run_dir / "ctl"
            longest = len(str(candidate / f"rpc-client-{os.getpid()}-000000.sock"))
            if longest <= _MAX_UNIX_PATH:
                candidate.mkdir(parents=True, exist_ok=True)
                self._ctl_dir = candidate
            else:
                self._ctl_dir = Path(tempfile.mkdtemp(prefix="kam-"))
                self._own_ctl_dir = True
        return self._ctl_dir

    def _write_tls_files(self, ctl_dir: Path) -> None:
        cert = self.tls_cert_path
        key = cert.with_name("key.pem")
        if not cert.exists():
            cert.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    "openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "7",
                    "-subj", f"/CN={self.host}", "-addext", f"subjectAltName=IP:{self.host}",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )  # fmt: skip
        (ctl_dir / "tls.cfg").write_text(
            "[server:default]\n"
            "method = TLSv1.2+\n"
            "verify_certificate = no\n"
            "require_certificate = no\n"
            f"private_key = {key}\n"
            f"certificate = {cert}\n\n"
            "[client:default]\n"
            "method = TLSv1.2+\n"
            "verify_certificate = no\n"
            "require_certificate = no\n"
        )

    def _wait_answering(self, transport: Transport, port: int, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise KamailioError(
                    f"kamailio exited with {self._proc.returncode} during startup\n"
                    f"{self.log_tail()}"
                )
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise KamailioError(
                    f"kamailio did not answer OPTIONS on {transport}:{self.host}:{port}\n"
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(TimeoutError):
                wait_for_sip(self.host, port, transport, min(0.5, remaining_s))
                return


def _contact_uris(result: Any) -> list[str]:
    """Pull the Address fields out of a ul.lookup reply (shape varies slightly by version)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "Address" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(result)
    return found
