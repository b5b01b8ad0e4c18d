"""aiohttp websocket plumbing for the Cartesia pipeline mock (TTS and Deepgram STT links).

``AioJsonConnection`` mirrors ``_ws_common.JsonWsConnection`` for aiohttp: one ordered outbox
with a single writer, named child tasks cancelled when the socket ends, fault timers (forced
close, malformed frame), and records of every JSON event in and out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from testbed.mocks._ws_common import (
    CloseFrame,
    EventLog,
    EventRecord,
    Faults,
    RawFrame,
    cancel_and_wait,
)


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Json:
    event: dict[str, Any]
    on_sent: Callable[[float], None] | None = None


_Item = _Json | RawFrame | CloseFrame


def json_error(status: int, body: Mapping[str, Any]) -> web.Response:
    return web.json_response(dict(body), status=status)


class AioJsonConnection:
    """One mock websocket; subclasses implement ``on_open``/``on_event``/``on_binary``."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
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
        self.ws = ws
        self._number = number
        self._faults = faults
        self.notify = notify
        self._log = event_log
        self._received = received
        self._sent = sent
        self._outbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: list[BaseException] = []

    async def serve(self) -> None:
        _ = self.spawn(self._drain(), "writer")
        try:
            if self._faults.close_after_s is not None:
                close = CloseFrame(self._faults.close_code, self._faults.close_reason)
                self.start_timer(self._faults.close_after_s, lambda: self.put(close), "fault")
            if self._faults.malformed_after_s is not None:
                raw = RawFrame(self._faults.malformed_frame)
                self.start_timer(self._faults.malformed_after_s, lambda: self.put(raw), "bad")
            self.on_open()
            async for message in self.ws:
                if message.type == WSMsgType.TEXT:
                    self._on_text(str(message.data))
                elif message.type == WSMsgType.BINARY:
                    self.on_binary(bytes(message.data))
                    self.notify()
                else:
                    break
        finally:
            self.on_close()
            await cancel_and_wait(list(self._tasks))
        if self._failures:
            raise self._failures[0]

    def on_open(self) -> None:
        """Called once the socket is open."""

    def on_event(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def on_binary(self, data: bytes) -> None:
        """Binary frames are ignored unless a subclass wants them."""

    def on_bad_frame(self, text: str) -> None:
        """A text frame that is not a JSON object."""

    def on_close(self) -> None:
        """Called when the socket is done, before child tasks are cancelled."""

    def redact(self, event: dict[str, Any]) -> dict[str, Any]:
        return event

    def put(self, item: _Item) -> None:
        self._outbox.put_nowait(item)

    def emit(self, event: dict[str, Any], on_sent: Callable[[float], None] | None = None) -> None:
        self.put(_Json(event, on_sent))

    def close(self, code: int, reason: str) -> None:
        self.put(CloseFrame(code, reason))

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"{self.name}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._child_done)
        return task

    def start_timer(self, delay_s: float, action: Callable[[], None], what: str) -> None:
        async def fire() -> None:
            await asyncio.sleep(delay_s)
            action()

        _ = self.spawn(fire(), what)

    def _child_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        logger.error("! %s: task %s failed: %r", self.name, task.get_name(), error)
        self._failures.append(error)
        self.put(CloseFrame(1011, "mock failure"))

    async def _drain(self) -> None:
        while True:
            item = await self._outbox.get()
            if self.ws.closed:
                return
            try:
                if isinstance(item, CloseFrame):
                    await self.ws.close(code=item.code, message=item.reason.encode())
                    return
                if isinstance(item, RawFrame):
                    await self.ws.send_str(item.text)
                    continue
                at = time.monotonic()
                await self.ws.send_str(json.dumps(item.event))
            except (ConnectionError, RuntimeError):
                return
            shown = self.redact(item.event)
            self._sent.append(EventRecord(at, str(item.event.get("type")), shown))
            self._log.write("out", self._number, shown, at)
            if item.on_sent is not None:
                item.on_sent(at)
            self.notify()

    def _on_text(self, text: str) -> None:
        at = time.monotonic()
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.on_bad_frame(text)
            self.notify()
            return
        shown = self.redact(event)
        self._received.append(EventRecord(at, str(event.get("type")), shown))
        self._log.write("in", self._number, shown, at)
        self.on_event(event)
        self.notify()
