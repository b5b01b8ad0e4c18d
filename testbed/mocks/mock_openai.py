"""A faithful offline mock of the OpenAI Realtime API (GA interface) over websockets.

In-process (component tests, benchmarks)::

    script = Script(replies=(Reply("Hi there", duration_ms=1500),), speed=4.0, think_ms=100)
    async with running_openai_mock(script) as mock:
        url = mock.realtime_url("gpt-realtime")  # ws://127.0.0.1:PORT/v1/realtime?model=...
        # ... point the code under test at mock.base_url (ws://127.0.0.1:PORT/v1), key test-key
        conn = await mock.wait_connection()        # a ConnectionRecord
        await mock.wait_for(lambda: conn.truncates, timeout_s=2)
        assert conn.truncates[0].accepted

``Script`` scripts replies, transcripts, function calls, pacing, expiry and ``Faults``;
``ConnectionRecord`` holds everything one connection saw (events in and out with monotonic
times, input audio, user turns with ``speech_started_at``, responses with ``first_audio_at``,
truncates, injects, function calls and outputs). ``testbed.mocks.realtime_client`` is a small
client for driving the mock directly.

As a process (e2e, benchmarks)::

    python -m testbed.mocks.mock_openai --port 0 --key K --mode scripted --script s.json \
        [--events-log events.jsonl]

prints ``LISTENING ws://127.0.0.1:PORT`` on one stdout line and stops on SIGTERM/SIGINT.

Wire behaviour imitated (providers.md sections 1 and 6): ``session.created`` first; GA
``session.update`` validated (``session.type`` required, beta fields rejected as unknown
parameters, formats ``audio/pcm`` at 24 kHz, ``audio/pcmu``, ``audio/pcma``); server VAD events
with ``audio_start_ms``/``audio_end_ms`` in session audio time; GA output event names
(``response.output_audio.delta`` ...); barge-in cancels with reason ``turn_detected``; the
truncate error "Audio content of Xms is already shorter than Yms"; ``session_expired`` then
close 1001; a bad key gets HTTP 401 on the upgrade (or, configurable, ``error`` + close 3000);
the beta header gets ``beta_api_shape_disabled`` + close 4000.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import IO, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from testbed.mocks import _openai_events as ev
from testbed.mocks._openai_conn import OpenAIConnection
from testbed.mocks._openai_script import (
    ConnectionRecord,
    FunctionCallRecord,
    FunctionCallSpec,
    FunctionOutputRecord,
    InjectRecord,
    Reply,
    ReplyContext,
    ResponseRecord,
    Script,
    TruncateRecord,
    UserTurn,
)
from testbed.mocks._openai_session import SessionConfig, WireError
from testbed.mocks._ws_common import (
    LOOPBACK,
    EventRecord,
    Faults,
    RecordingMock,
    dominant_hz,
    json_response,
    mock_arg_parser,
    run_mock,
    script_overrides,
    tone,
)


__all__ = [
    "ConnectionRecord",
    "EventRecord",
    "Faults",
    "FunctionCallRecord",
    "FunctionCallSpec",
    "FunctionOutputRecord",
    "InjectRecord",
    "OpenAIMock",
    "Reply",
    "ReplyContext",
    "ResponseRecord",
    "Script",
    "TruncateRecord",
    "UserTurn",
    "dominant_hz",
    "main",
    "running_openai_mock",
    "tone",
]

_T = TypeVar("_T")

REALTIME_PATH: Final = "/v1/realtime"
DEFAULT_MODEL: Final = "gpt-realtime"


class OpenAIMock(RecordingMock[ConnectionRecord]):
    """The mock server; ``connections`` holds one ``ConnectionRecord`` per accepted socket."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        event_log: IO[str] | None = None,
    ) -> None:
        self.script = script or Script()
        super().__init__(host=host, port=port, faults=self.script.faults, event_log=event_log)

    @property
    def base_url(self) -> str:
        """What a client configures as its OpenAI base URL: ``ws://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def realtime_url(self, model: str = DEFAULT_MODEL) -> str:
        return f"{self.url}{REALTIME_PATH}?model={model}"

    def check_request(self, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path != REALTIME_PATH:
            error = WireError(f"Invalid URL (GET {path})")
            return json_response(404, "Not Found", ev.http_error_body(error))
        if self.script.auth_failure == "http":
            error_or_none = ev.auth_error(request.headers.get("Authorization"), self.script.api_key)
            if error_or_none is not None:
                return json_response(401, "Unauthorized", ev.http_error_body(error_or_none))
        return None

    async def handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        model = parse_qs(urlsplit(request.path).query).get("model", [None])[0]
        record = ConnectionRecord(
            number=len(self.connections) + 1,
            path=request.path,
            model=model,
            headers=dict(request.headers.raw_items()),
            opened_at=time.monotonic(),
        )
        self.connections.append(record)
        self.changed.notify()
        session = SessionConfig(
            id=ev.new_id("sess"),
            model=model or DEFAULT_MODEL,
            expires_at=int(time.time()) + self.script.session_limit_minutes * 60,
        )
        conn = OpenAIConnection(
            ws,
            self.script,
            record,
            self.changed.notify,
            self._event_log,
            session,
            self._refusal(request),
        )
        try:
            await conn.serve()
        finally:
            record.closed_at = time.monotonic()
            record.close_code = ws.close_code
            self.changed.notify()

    def _refusal(self, request: Request) -> tuple[WireError, int, str] | None:
        """Refusals made after the upgrade: old-style auth failure, beta header."""
        if self.script.auth_failure == "ws":
            error = ev.auth_error(request.headers.get("Authorization"), self.script.api_key)
            if error is not None:
                return error, 3000, f"invalid_request_error.{error.code or 'missing_api_key'}"
        beta = request.headers.get("OpenAI-Beta", "")
        if self.script.reject_beta_header and beta.lower().startswith("realtime"):
            return ev.BETA_SHAPE_ERROR, 4000, "invalid_request_error.beta_api_shape_disabled"
        return None


@contextlib.asynccontextmanager
async def running_openai_mock(
    script: Script | None = None, *, port: int = 0, event_log: IO[str] | None = None
) -> AsyncIterator[OpenAIMock]:
    """Start an ``OpenAIMock`` on 127.0.0.1 for the duration of the ``async with`` block."""
    async with OpenAIMock(script, port=port, event_log=event_log) as mock:
        yield mock


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = mock_arg_parser(
        "mock_openai", "Offline mock of the OpenAI Realtime API (GA interface).", key="bearer key"
    )
    return parser.parse_args(argv)


def script_from_args(args: argparse.Namespace) -> Script:
    script = Script.load(args.script) if args.script else Script()
    return dataclasses.replace(script, **script_overrides(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    script = script_from_args(args)
    return run_mock(
        args, lambda log: OpenAIMock(script, host=args.host, port=args.port, event_log=log)
    )


if __name__ == "__main__":
    sys.exit(main())
