"""Offline mock of the Cartesia pipeline's three services on ONE port (aiohttp).

- ``/tts/websocket``: Cartesia Sonic TTS (``Cartesia-Version`` + ``X-API-Key``/Bearer required);
- ``/v1/listen``: Deepgram streaming STT (``Authorization: Token K``);
- ``/v1/chat/completions``: OpenAI Chat Completions, streamed as SSE (Bearer key).

In-process (component tests, benchmarks)::

    script = PipelineScript(Script(replies=(Reply("Hi there", duration_ms=800),)))
    async with running_cartesia_mock(script) as mock:
        mock.tts_url      # ws://127.0.0.1:PORT/tts/websocket   -> cartesia.base_url
        mock.stt_url      # ws://127.0.0.1:PORT/v1/listen       -> deepgram.stt_base_url
        mock.llm_base_url # http://127.0.0.1:PORT/v1             -> cartesia.llm_base_url
        call = await mock.wait_connection()   # CallRecord: .stt and .tts connection records
        await mock.wait_for(lambda: call.tts.contexts)

``running_cartesia_mock`` also takes a plain OpenAI-mock ``Script``. As a process::

    python -m testbed.mocks.mock_cartesia --port 0 [--key K | --any-key] [--script s.json] \
        [--events-log f.jsonl]

prints ``LISTENING ws://127.0.0.1:PORT`` and stops on SIGTERM/SIGINT. Behaviour: see the
modules ``_cartesia_tts``, ``_dgstt_conn`` and ``_chat_sse``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import IO, TypeVar
from urllib.parse import urlsplit

from aiohttp import web

from testbed.mocks._cartesia_script import (
    ChatRequestRecord,
    ContextRecord,
    PipelineScript,
    SttConnectionRecord,
    SttTurn,
    TtsConnectionRecord,
)
from testbed.mocks._cartesia_tts import TtsConnection
from testbed.mocks._cartesia_ws import json_error
from testbed.mocks._chat_sse import ChatEndpoint
from testbed.mocks._dgstt_conn import SttConnection, listen_params_problem
from testbed.mocks._openai_script import FunctionCallSpec, Reply, Script
from testbed.mocks._ws_common import (
    LOOPBACK,
    ChangeSignal,
    EventLog,
    Faults,
    mock_arg_parser,
    run_mock,
    script_overrides,
)


__all__ = [
    "CallRecord",
    "CartesiaMock",
    "ChatRequestRecord",
    "ContextRecord",
    "Faults",
    "FunctionCallSpec",
    "PipelineScript",
    "Reply",
    "Script",
    "SttConnectionRecord",
    "SttTurn",
    "TtsConnectionRecord",
    "main",
    "running_cartesia_mock",
]

_T = TypeVar("_T")

TTS_PATH = "/tts/websocket"
STT_PATH = "/v1/listen"
CHAT_PATH = "/v1/chat/completions"
NO_FAULTS = Faults()


@dataclass
class CallRecord:
    """The n-th STT and n-th TTS connection: one pipeline session, as the mock saw it."""

    stt: SttConnectionRecord
    tts: TtsConnectionRecord


class CartesiaMock:
    def __init__(
        self,
        script: PipelineScript | Script | None = None,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        event_log: IO[str] | None = None,
    ) -> None:
        if isinstance(script, Script):
            script = PipelineScript(script)
        self.script = script or PipelineScript()
        self.host = host
        self._requested_port = port
        self.changed = ChangeSignal()
        self.tts: list[TtsConnectionRecord] = []
        self.stt: list[SttConnectionRecord] = []
        self.chat: list[ChatRequestRecord] = []
        self.planned: list[Reply] = []
        """Every reply the chat endpoint chose (the TTS matches text to find durations)."""
        self._event_log = EventLog(event_log)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._chat = ChatEndpoint(
            self.script, self.chat, self.planned, self.changed.notify, self._event_log
        )

    # ---- addresses ----

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("mock server is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def tts_url(self) -> str:
        return f"{self.url}{TTS_PATH}"

    @property
    def stt_url(self) -> str:
        return f"{self.url}{STT_PATH}"

    @property
    def llm_base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ---- lifecycle ----

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(TTS_PATH, self._tts_handler)
        app.router.add_get(STT_PATH, self._stt_handler)
        app.router.add_post(CHAT_PATH, self._chat.handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio server here
        assert server is not None and isinstance(server, asyncio.Server)
        self._port = int(server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> CartesiaMock:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- waiting ----

    async def wait_for(self, predicate: Callable[[], _T], timeout_s: float = 5.0) -> _T:
        return await self.changed.wait_for(predicate, timeout_s)

    async def wait_connection(self, count: int = 1, timeout_s: float = 5.0) -> CallRecord:
        """Wait until the ``count``-th STT and TTS connections are both open."""
        await self.wait_for(lambda: len(self.stt) >= count and len(self.tts) >= count, timeout_s)
        return CallRecord(self.stt[count - 1], self.tts[count - 1])

    # ---- handlers ----

    def _faults(self, link: str) -> Faults:
        number = len(self.tts if link == "tts" else self.stt) + 1
        limit = self.script.faulty_connections
        if link not in self.script.fault_links or (limit and number > limit):
            return NO_FAULTS
        return self.script.script.faults

    async def _tts_handler(self, request: web.Request) -> web.StreamResponse:
        faults = self._faults("tts")
        if faults.handshake_delay_s > 0:
            await asyncio.sleep(faults.handshake_delay_s)
        version = request.headers.get("Cartesia-Version") or request.query.get("cartesia_version")
        if not version:
            return json_error(400, {"error": "Cartesia-Version header is required"})
        bearer = request.headers.get("Authorization", "")
        key = (
            request.query.get("api_key")
            or request.headers.get("X-API-Key")
            or (bearer[7:] if bearer.startswith("Bearer ") else "")
        )
        wanted = self.script.tts_key
        if not key or (wanted is not None and key != wanted):
            return json_error(401, {"error": "Invalid API key"})
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        record = TtsConnectionRecord(
            len(self.tts) + 1, request.path_qs, dict(request.headers), time.monotonic()
        )
        self.tts.append(record)
        self.changed.notify()
        conn = TtsConnection(
            ws,
            name=f"tts-{record.number}",
            number=record.number,
            faults=faults,
            notify=self.changed.notify,
            event_log=self._event_log,
            received=record.received,
            sent=record.sent,
            script=self.script,
            record=record,
            planned=self.planned,
        )
        try:
            await conn.serve()
        finally:
            record.closed_at = time.monotonic()
            record.close_code = ws.close_code
            self.changed.notify()
        return ws

    async def _stt_handler(self, request: web.Request) -> web.StreamResponse:
        faults = self._faults("stt")
        if faults.handshake_delay_s > 0:
            await asyncio.sleep(faults.handshake_delay_s)
        auth = request.headers.get("Authorization", "")
        wanted = self.script.stt_key
        key = auth[6:] if auth.startswith("Token ") else ""
        if not key or (wanted is not None and key != wanted):
            body = {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": ""}
            return json_error(401, body)
        query = dict(request.query)
        problem = listen_params_problem(query)
        if problem is not None:
            return json_error(400, {"err_code": "Bad Request", "err_msg": problem})
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        record = SttConnectionRecord(
            len(self.stt) + 1,
            urlsplit(request.path_qs).path,
            query,
            dict(request.headers),
            time.monotonic(),
        )
        self.stt.append(record)
        self.changed.notify()
        conn = SttConnection(
            ws,
            name=f"stt-{record.number}",
            number=record.number,
            faults=faults,
            notify=self.changed.notify,
            event_log=self._event_log,
            received=record.received,
            sent=record.sent,
            script=self.script,
            record=record,
        )
        try:
            await conn.serve()
        finally:
            record.closed_at = time.monotonic()
            record.close_code = ws.close_code
            self.changed.notify()
        return ws


@contextlib.asynccontextmanager
async def running_cartesia_mock(
    script: PipelineScript | Script | None = None,
    *,
    port: int = 0,
    event_log: IO[str] | None = None,
) -> AsyncIterator[CartesiaMock]:
    """Start a ``CartesiaMock`` on 127.0.0.1 for the duration of the ``async with`` block."""
    async with CartesiaMock(script, port=port, event_log=event_log) as mock:
        yield mock


# ---- process mode -----------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = mock_arg_parser(
        "mock_cartesia",
        "Offline mock of Cartesia TTS + Deepgram STT + OpenAI Chat Completions.",
        key="key for all three services",
        modes=False,
    )
    return parser.parse_args(argv)


def script_from_args(args: argparse.Namespace) -> PipelineScript:
    pipeline = PipelineScript.load(args.script) if args.script else PipelineScript()
    overrides = script_overrides(args, any_key=False)
    if overrides:
        pipeline = dataclasses.replace(
            pipeline, script=dataclasses.replace(pipeline.script, **overrides)
        )
    return pipeline.with_any_key() if args.any_key else pipeline


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    script = script_from_args(args)
    return run_mock(
        args, lambda log: CartesiaMock(script, host=args.host, port=args.port, event_log=log)
    )


if __name__ == "__main__":
    sys.exit(main())
