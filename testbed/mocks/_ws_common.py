"""Plumbing shared by the provider mock servers in ``testbed/mocks``.

Everything here is provider-neutral: a websocket server on loopback with an ordered outbox per
connection, fault settings (handshake delay, forced close, malformed frame), a change signal
that tests wait on instead of sleeping, tone synthesis/analysis, and the ``LISTENING`` CLI
contract used by the e2e harness (one stdout line, clean stop on SIGTERM).

Times recorded by the mocks are ``time.monotonic()`` seconds. On Linux that clock is
system-wide, so a harness in another process can compare them with its own monotonic stamps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any, Final, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


logger = logging.getLogger(__name__)

_T = TypeVar("_T")

LOOPBACK: Final = "127.0.0.1"


@dataclass(frozen=True)
class Faults:
    """Misbehaviour a mock injects on every connection (all off by default)."""

    handshake_delay_s: float = 0.0
    """Seconds to hold the HTTP upgrade request before answering it."""
    close_after_s: float | None = None
    """Close the websocket this many seconds after it opened."""
    close_code: int = 1011
    """Close code used by ``close_after_s``."""
    close_reason: str = "mock fault"
    """Close reason used by ``close_after_s``."""
    malformed_after_s: float | None = None
    """Send one frame that is not JSON this many seconds after the connection opened."""
    malformed_frame: str = '{"type": "response.output_audio.delta", "delta": '
    """The text of the malformed frame."""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str = "faults") -> Faults:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        return cls(**dict(raw))


@dataclass(frozen=True)
class CloseFrame:
    """Outbox entry: close the websocket with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True)
class RawFrame:
    """Outbox entry: send this text as-is (used for malformed frames)."""

    text: str


@dataclass(frozen=True)
class Outgoing:
    """Outbox entry: one JSON event plus an optional callback given the send time."""

    event: dict[str, Any]
    on_sent: Callable[[float], None] | None = None


OutboxItem = Outgoing | RawFrame | CloseFrame


class ChangeSignal:
    """Lets tests wait for a condition on recorded state without polling or sleeping."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], _T], timeout_s: float = 5.0) -> _T:
        """Return ``predicate()`` once it is truthy; raise ``TimeoutError`` after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while True:
                result = predicate()
                if result:
                    return result
                await self._event.wait()


class EventLog:
    """Optional JSON-lines trace of every event a mock sent or received (audio left out)."""

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream

    def write(self, direction: str, conn_no: int, event: Mapping[str, Any], at: float) -> None:
        if self._stream is None:
            return
        line = {"t": at, "dir": direction, "conn": conn_no, "type": event.get("type")}
        for key in ("item_id", "response_id", "audio_start_ms", "audio_end_ms"):
            if key in event:
                line[key] = event[key]
        error = event.get("error")
        if isinstance(error, Mapping):
            line["code"] = error.get("code")
        self._stream.write(json.dumps(line) + "\n")
        self._stream.flush()


async def drain_outbox(
    ws: ServerConnection,
    outbox: asyncio.Queue[OutboxItem],
    on_sent: Callable[[dict[str, Any], float], None],
) -> None:
    """Single writer per connection: sends outbox items in order until a close or EOF."""
    while True:
        item = await outbox.get()
        try:
            if isinstance(item, CloseFrame):
                await ws.close(item.code, item.reason)
                return
            if isinstance(item, RawFrame):
                await ws.send(item.text)
                continue
            at = time.monotonic()
            await ws.send(json.dumps(item.event))
            on_sent(item.event, at)
            if item.on_sent is not None:
                item.on_sent(at)
        except ConnectionClosed:
            return


@dataclass
class EventRecord:
    at: float
    """``time.monotonic()`` when the event was received, or written to the socket."""
    type: str
    event: dict[str, Any]


class JsonWsConnection:
    """Base of one mock connection speaking JSON text frames.

    It owns the ordered outbox and its single writer task, the connection's named child tasks
    (cancelled and awaited when the socket ends), the fault timers, and the recording of every
    event in and out. Subclasses implement ``on_open``, ``on_event`` and ``on_bad_frame``; all
    three are synchronous and talk back through ``emit``/``put``.

    A child task (or the writer) that fails aborts the socket at once, and ``serve`` re-raises
    its exception, so a bug in a mock never looks like a silent, hanging provider.
    """

    def __init__(
        self,
        ws: ServerConnection,
        *,
        name: str,
        number: int,
        faults: Faults,
        notify: Callable[[], None],
        event_log: EventLog,
        received: list[EventRecord],
        sent: list[EventRecord],
    ) -> None:
        self.name = name
        self._ws = ws
        self._number = number
        self._faults = faults
        self.notify = notify
        self._log = event_log
        self._received = received
        self._sent = sent
        self._outbox: asyncio.Queue[OutboxItem] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: list[BaseException] = []

    async def serve(self) -> None:
        logger.debug("= %s: open", self.name)
        _ = self.spawn(drain_outbox(self._ws, self._outbox, self._on_sent), "writer")
        try:
            faults = self._faults
            if faults.close_after_s is not None:
                close = CloseFrame(faults.close_code, faults.close_reason)
                self.start_timer(faults.close_after_s, lambda: self.put(close), "fault-close")
            if faults.malformed_after_s is not None:
                raw = RawFrame(faults.malformed_frame)
                self.start_timer(faults.malformed_after_s, lambda: self.put(raw), "fault-frame")
            self.on_open()
            async for message in self._ws:
                self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self.on_close()
            await cancel_and_wait(list(self._tasks))
            logger.debug("x %s: closed", self.name)
        if self._failures:
            raise self._failures[0]

    def on_open(self) -> None:
        raise NotImplementedError

    def on_event(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def on_bad_frame(self, message: str | bytes) -> None:
        raise NotImplementedError

    def on_close(self) -> None:
        """Called once the socket is done, before child tasks are cancelled."""

    def redact(self, event: dict[str, Any]) -> dict[str, Any]:
        """The form of ``event`` kept in records and logs (e.g. without audio payloads)."""
        return event

    def put(self, item: OutboxItem) -> None:
        self._outbox.put_nowait(item)

    def emit(self, event: dict[str, Any], on_sent: Callable[[float], None] | None = None) -> None:
        self.put(Outgoing(event, on_sent))

    def emit_all(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self.emit(event)

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Start a named child task; it is cancelled and awaited when the connection ends."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"{self.name}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._child_done)
        return task

    def _child_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        logger.error("! %s: task %s failed: %r", self.name, task.get_name(), error)
        self._failures.append(error)
        self._ws.transport.abort()

    def start_timer(self, delay_s: float, action: Callable[[], None], what: str) -> None:
        _ = self.spawn(_fire_after(delay_s, action), what)

    def _on_sent(self, event: dict[str, Any], at: float) -> None:
        shown = self.redact(event)
        self._sent.append(EventRecord(at, str(event.get("type")), shown))
        self._log.write("out", self._number, shown, at)
        self.notify()

    def _on_message(self, message: str | bytes) -> None:
        at = time.monotonic()
        try:
            event = json.loads(message)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.on_bad_frame(message)
            self.notify()
            return
        shown = self.redact(event)
        self._received.append(EventRecord(at, str(event.get("type")), shown))
        self._log.write("in", self._number, shown, at)
        self.on_event(event)
        self.notify()


def json_response(status: int, reason: str, body: Mapping[str, Any]) -> Response:
    """An HTTP error answer to the upgrade request, with a JSON body like the real API's."""
    headers = Headers()
    headers["Content-Type"] = "application/json"
    data = json.dumps(body).encode()
    headers["Content-Length"] = str(len(data))
    return Response(status, reason, headers, data)


class WsMockServer:
    """Base class: a websocket server on loopback, started by ``start``/``async with``.

    Subclasses implement ``check_request`` (HTTP-level checks, ``None`` to accept) and
    ``handle`` (one websocket connection). Constructors do no I/O.
    """

    def __init__(
        self, *, host: str = LOOPBACK, port: int = 0, faults: Faults | None = None
    ) -> None:
        self.host = host
        self._requested_port = port
        self.faults = faults or Faults()
        self.changed = ChangeSignal()
        self._server: Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("mock server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` (no path): what the ``LISTENING`` line prints."""
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await serve(
            self.handle,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            max_size=16 * 2**20,
        )

    async def aclose(self) -> None:
        """Stop listening and close open connections with 1001 (going away)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()

    async def __aenter__(self: _SelfT) -> _SelfT:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.faults.handshake_delay_s > 0:
            await asyncio.sleep(self.faults.handshake_delay_s)
        return self.check_request(request)

    def check_request(self, request: Request) -> Response | None:
        return None

    async def handle(self, ws: ServerConnection) -> None:
        raise NotImplementedError


_SelfT = TypeVar("_SelfT", bound=WsMockServer)
_R = TypeVar("_R")


class RecordingMock(WsMockServer, Generic[_R]):
    """A WsMockServer that keeps one record per accepted connection (``connections``) and an
    optional JSON-lines event log; tests wait on it instead of sleeping."""

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        faults: Faults | None = None,
        event_log: IO[str] | None = None,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
        self.connections: list[_R] = []
        self._event_log = EventLog(event_log)

    @property
    def last(self) -> _R:
        """The most recent connection (raises if nobody connected yet)."""
        if not self.connections:
            raise LookupError(f"no connection to the {type(self).__name__} yet")
        return self.connections[-1]

    async def wait_for(self, predicate: Callable[[], _T], timeout_s: float = 5.0) -> _T:
        """Wait until ``predicate()`` is truthy (re-checked on every recorded change)."""
        return await self.changed.wait_for(predicate, timeout_s)

    async def wait_connection(self, count: int = 1, timeout_s: float = 5.0) -> _R:
        """Wait for the ``count``-th connection and return its record."""
        await self.wait_for(lambda: len(self.connections) >= count, timeout_s)
        return self.connections[count - 1]


async def _fire_after(delay_s: float, action: Callable[[], None]) -> None:
    await asyncio.sleep(delay_s)
    action()


async def cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel tasks and wait for them; re-raise if the caller itself is being cancelled."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise


# --- tones -------------------------------------------------------------------------------------


def tone(
    freq_hz: float, duration_ms: int, rate_hz: int, amplitude: float = 0.3
) -> npt.NDArray[np.int16]:
    """A sine tone as int16 samples; ``amplitude`` is a fraction of full scale."""
    n = rate_hz * duration_ms // 1000
    t = np.arange(n, dtype=np.float64) / rate_hz
    samples = amplitude * 32767.0 * np.sin(2.0 * np.pi * freq_hz * t)
    return samples.astype(np.int16)


def dominant_hz(samples: npt.NDArray[np.int16], rate_hz: int) -> float:
    """The frequency of the strongest FFT bin (Hann window), for telling tones apart."""
    if samples.size < 2:
        return 0.0
    x = samples.astype(np.float64) * np.hanning(samples.size)
    spectrum = np.abs(np.fft.rfft(x))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum)) * rate_hz / samples.size


# --- process mode ------------------------------------------------------------------------------


class ServedMock(Protocol):
    """What process mode runs: an async context manager that serves on ``url``."""

    @property
    def url(self) -> str: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, __type: Any, __value: Any, __tb: Any) -> Any: ...


async def serve_until_signalled(server: ServedMock, out: IO[str] = sys.stdout) -> None:
    """Start ``server``, print ``LISTENING <url>`` and run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with server:
            out.write(f"LISTENING {server.url}\n")
            out.flush()
            await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def mock_arg_parser(
    module: str, description: str, *, key: str = "key", modes: bool = True
) -> argparse.ArgumentParser:
    """The command line every mock shares (``python -m testbed.mocks.<module>``); a mock adds
    its own options to it."""
    parser = argparse.ArgumentParser(
        prog=f"python -m testbed.mocks.{module}", description=description
    )
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--key", help=f"accepted {key} (default: the script's, test-key)")
    parser.add_argument("--any-key", action="store_true", help=f"accept any {key}")
    if modes:
        parser.add_argument(
            "--mode", choices=["scripted", "echo"], help="override the script's mode"
        )
    parser.add_argument("--script", type=Path, help="JSON file with the mock's script fields")
    parser.add_argument("--speed", type=float, help="faster-than-real-time factor (0: burst)")
    parser.add_argument("--think-ms", type=int, help="delay before a reply's first audio")
    parser.add_argument("--events-log", type=Path, help="append a JSON line per event (no audio)")
    return parser


def script_overrides(args: argparse.Namespace, *, any_key: bool = True) -> dict[str, Any]:
    """Script fields the shared options set (``any_key``: --any-key sets ``api_key`` None)."""
    overrides: dict[str, Any] = {}
    if args.key is not None:
        overrides["api_key"] = args.key
    if any_key and args.any_key:
        overrides["api_key"] = None
    if getattr(args, "mode", None) is not None:
        overrides["mode"] = args.mode
    if args.speed is not None:
        overrides["speed"] = args.speed
    if args.think_ms is not None:
        overrides["think_ms"] = args.think_ms
    return overrides


def run_mock(args: argparse.Namespace, make: Callable[[IO[str] | None], ServedMock]) -> int:
    """Process mode: build the mock (with the --events-log stream) and serve until signalled."""
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(args.events_log.open("a")) if args.events_log else None

        async def main() -> None:
            await serve_until_signalled(make(log))

        asyncio.run(main())
    return 0
