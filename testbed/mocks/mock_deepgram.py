"""An offline mock of the Deepgram Voice Agent API (v1) over websockets.

In-process (component tests, benchmarks)::

    script = DeepgramScript(replies=(Reply("Hi there", duration_ms=1500),), think_ms=100)
    async with running_deepgram_mock(script) as mock:
        url = mock.agent_url                       # ws://127.0.0.1:PORT/v1/agent/converse
        conn = await mock.wait_connection()        # a ConnectionRecord
        await mock.wait_for(lambda: conn.replies and conn.replies[0].status == "completed")

``DeepgramScript`` is the OpenAI mock's ``Script`` (replies, transcripts, function_calls,
think_ms, speed, faults, ...) plus Deepgram knobs (client message timeout, KeepAlive counting,
slow ``SettingsApplied``, server-side functions, stale audio after barge-in).
``ConnectionRecord`` holds what one connection saw: JSON messages in and out with monotonic
times, caller audio, KeepAlives, the applied settings, user turns with ``speech_started_at``,
replies with ``first_audio_at``, function requests/responses and injections.

As a process (e2e, benchmarks)::

    python -m testbed.mocks.mock_deepgram --port 0 --any-key [--key K] [--script s.json] \
        [--events-log events.jsonl]

prints ``LISTENING ws://127.0.0.1:PORT`` on one stdout line and stops on SIGTERM/SIGINT.

Wire behaviour imitated (providers.md sections 4 and 6): ``Authorization: Token <key>`` (or
``Bearer``, or the ``token, <key>`` subprotocol), a bad key gets HTTP 401 with Deepgram's JSON
body; ``Welcome`` on open; ``Settings`` first and schema-checked (unknown fields rejected) or
``Error UNPARSABLE_CLIENT_MESSAGE`` and close; ``SettingsApplied``; the greeting spoken as the
first reply (its transcript is the greeting; it takes the tone and duration of ``replies[0]``);
``UserStartedSpeaking`` from an energy VAD; ``ConversationText``, ``AgentThinking``,
``AgentStartedSpeaking``, binary audio in ``audio.output`` format, ``AgentAudioDone``;
``FunctionCallRequest`` (``client_side: true`` waits for ``FunctionCallResponse``);
``InjectUserMessage`` (answered like ``response.create`` with instructions in the OpenAI mock:
``instructions_reply`` if set, else the next reply), ``InjectAgentMessage`` (``message`` or
``content``; spoken literally, ``InjectionRefused`` while someone speaks unless ``behavior`` is
``queue``/``interrupt``), ``UpdatePrompt`` -> ``PromptUpdated``; ``CLIENT_MESSAGE_TIMEOUT`` after
``client_message_timeout_s`` without binary audio or KeepAlive.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import IO, Final, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from testbed.mocks._deepgram_conn import DeepgramConnection
from testbed.mocks._deepgram_script import (
    ConnectionRecord,
    DeepgramScript,
    FunctionRequestRecord,
    FunctionResponseRecord,
    InjectRecord,
    ReplyRecord,
    UserTurn,
)
from testbed.mocks._openai_script import FunctionCallSpec, Reply
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
    "AGENT_PATH",
    "ConnectionRecord",
    "DeepgramMock",
    "DeepgramScript",
    "EventRecord",
    "Faults",
    "FunctionCallSpec",
    "FunctionRequestRecord",
    "FunctionResponseRecord",
    "InjectRecord",
    "Reply",
    "ReplyRecord",
    "UserTurn",
    "dominant_hz",
    "main",
    "running_deepgram_mock",
    "tone",
]

_T = TypeVar("_T")

AGENT_PATH: Final = "/v1/agent/converse"


def presented_key(headers: Headers) -> str | None:
    """The key a client presented: ``Authorization: Token|Bearer K`` or ``token, K`` protocol."""
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    protocols = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(protocols) == 2 and protocols[0].lower() == "token" and protocols[1]:
        return protocols[1]
    return None


class DeepgramMock(RecordingMock[ConnectionRecord]):
    """The mock server; ``connections`` holds one ``ConnectionRecord`` per accepted socket."""

    def __init__(
        self,
        script: DeepgramScript | None = None,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        event_log: IO[str] | None = None,
    ) -> None:
        self.script = script or DeepgramScript()
        super().__init__(host=host, port=port, faults=self.script.faults, event_log=event_log)

    @property
    def agent_url(self) -> str:
        """What a client configures as its Deepgram agent URL."""
        return f"{self.url}{AGENT_PATH}"

    def _key_ok(self, headers: Headers) -> bool:
        key = presented_key(headers)
        return key is not None and (self.script.api_key is None or key == self.script.api_key)

    def check_request(self, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path != AGENT_PATH:
            body = {"err_code": "NOT_FOUND", "err_msg": f"Not found: {path}"}
            return json_response(404, "Not Found", body)
        if self.script.auth_failure == "http" and not self._key_ok(request.headers):
            body = {
                "err_code": "INVALID_AUTH",
                "err_msg": "Invalid credentials.",
                "request_id": str(uuid.uuid4()),
            }
            return json_response(401, "Unauthorized", body)
        return None

    async def handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        record = ConnectionRecord(
            number=len(self.connections) + 1,
            path=request.path,
            headers=dict(request.headers.raw_items()),
            opened_at=time.monotonic(),
        )
        self.connections.append(record)
        self.changed.notify()
        refused = self.script.auth_failure == "ws" and not self._key_ok(request.headers)
        conn = DeepgramConnection(
            ws, self.script, record, self.changed.notify, self._event_log, refused
        )
        try:
            await conn.serve()
        finally:
            record.closed_at = time.monotonic()
            record.close_code = ws.close_code
            self.changed.notify()


@contextlib.asynccontextmanager
async def running_deepgram_mock(
    script: DeepgramScript | None = None, *, port: int = 0, event_log: IO[str] | None = None
) -> AsyncIterator[DeepgramMock]:
    """Start a ``DeepgramMock`` on 127.0.0.1 for the duration of the ``async with`` block."""
    async with DeepgramMock(script, port=port, event_log=event_log) as mock:
        yield mock


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = mock_arg_parser("mock_deepgram", "Offline mock of the Deepgram Voice Agent API (v1).")
    return parser.parse_args(argv)


def script_from_args(args: argparse.Namespace) -> DeepgramScript:
    script = DeepgramScript.load(args.script) if args.script else DeepgramScript()
    return dataclasses.replace(script, **script_overrides(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    script = script_from_args(args)
    return run_mock(
        args, lambda log: DeepgramMock(script, host=args.host, port=args.port, event_log=log)
    )


if __name__ == "__main__":
    sys.exit(main())
