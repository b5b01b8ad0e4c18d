"""An offline mock of the Gemini Live API (BidiGenerateContent) over websockets.

In-process (component tests, benchmarks)::

    script = GeminiScript(Script(replies=(Reply("Hi there", duration_ms=1500),), think_ms=100))
    async with running_gemini_mock(script) as mock:
        url = mock.live_url  # ws://127.0.0.1:PORT/ws/google.ai...BidiGenerateContent
        conn = await mock.wait_connection()          # a GeminiConnectionRecord
        await mock.wait_for(lambda: conn.responses, timeout_s=2)

``GeminiScript`` is the OpenAI mock's ``Script`` (same JSON shape: replies, transcripts,
function_calls, think_ms, speed, faults ...) plus Gemini knobs: binary/text frames,
``connection_lifetime_s`` (``goAway`` before it), resumption handles, close codes on demand.

As a process (e2e, benchmarks)::

    python -m testbed.mocks.mock_gemini --port 0 --any-key [--key K] [--script s.json] \
        [--events-log events.jsonl]

prints ``LISTENING ws://127.0.0.1:PORT`` on one stdout line and stops on SIGTERM/SIGINT.

Wire behaviour imitated (providers.md sections 3 and 6): key in ``?key=`` or ``x-goog-api-key``
(a bad key: accepted, then close 1007 "API key not valid"); ``setup`` (or ``config``) must come
first, else close 1007; ``setupComplete``; snake_case and camelCase accepted; energy VAD on the
PCM16 input at the rate of its mime type; replies as 24 kHz PCM16 ``inlineData`` parts with
``outputTranscription`` pieces, ``generationComplete``, ``turnComplete`` + ``usageMetadata``;
``inputTranscription`` from the script's transcripts; barge-in ``interrupted`` then
``turnComplete``; ``toolCall`` with ids, blocking until ``toolResponse``;
``toolCallCancellation`` on barge-in; ``goAway``; ``sessionResumptionUpdate`` handles and
resumption of the conversation on a new connection; all server frames binary JSON by default.
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

from testbed.mocks._gemini_conn import GeminiConnection
from testbed.mocks._gemini_script import (
    Conversation,
    GeminiConnectionRecord,
    GeminiFunctionCall,
    GeminiScript,
)
from testbed.mocks._gemini_wire import CloseRequest
from testbed.mocks._openai_script import FunctionCallSpec, Reply, Script
from testbed.mocks._ws_common import (
    LOOPBACK,
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
    "LIVE_PATH",
    "Faults",
    "FunctionCallSpec",
    "GeminiConnectionRecord",
    "GeminiFunctionCall",
    "GeminiMock",
    "GeminiScript",
    "Reply",
    "Script",
    "dominant_hz",
    "main",
    "running_gemini_mock",
    "tone",
]

_T = TypeVar("_T")

LIVE_PATH: Final = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
ALPHA_PATH: Final = LIVE_PATH.replace("v1beta", "v1alpha")


class GeminiMock(RecordingMock[GeminiConnectionRecord]):
    """The mock server; ``connections`` holds one record per accepted socket."""

    def __init__(
        self,
        script: GeminiScript | None = None,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        event_log: IO[str] | None = None,
    ) -> None:
        self.script = script or GeminiScript()
        super().__init__(host=host, port=port, faults=self.script.base.faults, event_log=event_log)
        self.live: list[GeminiConnection] = []
        """Connections still open (newest last)."""
        self.conversations: dict[str, Conversation] = {}
        """Resumption handle -> the conversation it continues."""

    @property
    def live_url(self) -> str:
        """What a client configures as ``gemini.base_url`` (no key in it)."""
        return f"{self.url}{LIVE_PATH}"

    def drop_connection(self, code: int = 1011, reason: str = "Internal error occurred.") -> None:
        """Close the newest open connection with ``code`` (a link failing mid-call)."""
        self.live[-1].drop(code, reason)

    def check_request(self, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path not in (LIVE_PATH, ALPHA_PATH):
            body = {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}}
            return json_response(404, "Not Found", body)
        return None

    @staticmethod
    def _key(request: Request) -> tuple[str | None, str | None]:
        query = parse_qs(urlsplit(request.path).query).get("key", [None])[0]
        if query:
            return query, "query"
        header = request.headers.get("x-goog-api-key")
        return (header, "header") if header else (None, None)

    async def handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        key, source = self._key(request)
        headers = dict(request.headers.raw_items())
        if "x-goog-api-key" in {h.lower() for h in headers}:
            headers = {
                h: ("<redacted>" if h.lower() == "x-goog-api-key" else v)
                for h, v in headers.items()
            }
        record = GeminiConnectionRecord(
            number=len(self.connections) + 1,
            path=urlsplit(request.path).path,
            headers=headers,
            key_source=source,
            opened_at=time.monotonic(),
        )
        self.connections.append(record)
        self.changed.notify()
        wanted = self.script.api_key
        refusal = None
        if key is None or (wanted is not None and key != wanted):
            refusal = CloseRequest(self.script.auth_close_code, self.script.auth_close_reason)
        conn = GeminiConnection(
            ws,
            self.script,
            record,
            self.changed.notify,
            self._event_log,
            self.conversations,
            refusal,
        )
        self.live.append(conn)
        try:
            await conn.serve()
        finally:
            self.live.remove(conn)
            record.closed_at = time.monotonic()
            record.close_code = ws.close_code
            self.changed.notify()


@contextlib.asynccontextmanager
async def running_gemini_mock(
    script: GeminiScript | None = None, *, port: int = 0, event_log: IO[str] | None = None
) -> AsyncIterator[GeminiMock]:
    """Start a ``GeminiMock`` on 127.0.0.1 for the duration of the ``async with`` block."""
    async with GeminiMock(script, port=port, event_log=event_log) as mock:
        yield mock


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = mock_arg_parser(
        "mock_gemini", "Offline mock of the Gemini Live API (BidiGenerateContent).", key="API key"
    )
    parser.add_argument("--text-frames", action="store_true", help="send text, not binary")
    return parser.parse_args(argv)


def script_from_args(args: argparse.Namespace) -> GeminiScript:
    script = GeminiScript.load(args.script) if args.script else GeminiScript()
    script = script.with_base(**script_overrides(args))
    if args.text_frames:
        script = dataclasses.replace(script, binary_frames=False)
    return script


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    script = script_from_args(args)
    return run_mock(
        args, lambda log: GeminiMock(script, host=args.host, port=args.port, event_log=log)
    )


if __name__ == "__main__":
    sys.exit(main())
