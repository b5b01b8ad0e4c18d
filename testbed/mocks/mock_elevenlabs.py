"""An offline mock of the ElevenLabs Agents (Conversational AI) websocket API.

In-process (component tests, benchmarks)::

    script = Script(replies=(Reply("Hi there", duration_ms=1500),), transcripts=("Hello",))
    async with running_elevenlabs_mock(script, AgentSettings(output_format="pcm_16000")) as mock:
        # point the code under test at mock.base_url (ws://127.0.0.1:PORT/v1/convai/conversation)
        conn = await mock.wait_connection()          # a ConnectionRecord
        await mock.wait_for(lambda: conn.replies and conn.replies[0].first_audio_at)

``Script`` is the OpenAI mock's (same JSON shape); ``AgentSettings`` is the agent's dashboard
configuration (formats, allowed overrides, private agent, ping interval ...), given in a script
file under the key ``"elevenlabs"``.

As a process (e2e, benchmarks)::

    python -m testbed.mocks.mock_elevenlabs --port 0 --any-key [--key K] [--script s.json] \
        [--events-log events.jsonl] [--private] [--output-format pcm_16000]

prints ``LISTENING ws://127.0.0.1:PORT`` on one stdout line and stops on SIGTERM/SIGINT.

Served on that port: the conversation websocket at ``/v1/convai/conversation?agent_id=...``
and ``GET /v1/convai/conversation/get-signed-url?agent_id=...`` (requires ``xi-api-key``; the
returned URL carries a token the websocket then accepts, for 15 minutes by default). Handshake
refusals are HTTP errors: 400 without ``agent_id``, 404 for another agent, 401 for a bad token,
403 for a private agent without a token.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from testbed.mocks._elevenlabs_conn import ElevenLabsConnection
from testbed.mocks._elevenlabs_script import (
    ALL_OVERRIDES,
    AgentSettings,
    ConnectionRecord,
    PingRecord,
    ReplyRecord,
    ToolCallRecord,
    ToolResultRecord,
    UserTurn,
    load_script,
    script_from_json,
)
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
    "ALL_OVERRIDES",
    "AgentSettings",
    "ConnectionRecord",
    "ElevenLabsMock",
    "Faults",
    "FunctionCallSpec",
    "PingRecord",
    "Reply",
    "ReplyRecord",
    "Script",
    "SignedUrlRequest",
    "ToolCallRecord",
    "ToolResultRecord",
    "UserTurn",
    "dominant_hz",
    "load_script",
    "main",
    "running_elevenlabs_mock",
    "script_from_json",
    "tone",
]

_T = TypeVar("_T")

CONVERSATION_PATH: Final = "/v1/convai/conversation"
SIGNED_URL_PATH: Final = f"{CONVERSATION_PATH}/get-signed-url"


@dataclass
class SignedUrlRequest:
    agent_id: str | None
    accepted: bool
    at: float


class ElevenLabsMock(RecordingMock[ConnectionRecord]):
    """The mock server; ``connections`` holds one ``ConnectionRecord`` per accepted socket."""

    def __init__(
        self,
        script: Script | None = None,
        agent: AgentSettings | None = None,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        event_log: IO[str] | None = None,
    ) -> None:
        self.script = script or Script()
        self.agent = agent or AgentSettings()
        super().__init__(host=host, port=port, faults=self.script.faults, event_log=event_log)
        self.signed_url_requests: list[SignedUrlRequest] = []
        self._tokens: dict[str, tuple[str, float]] = {}
        """token -> (agent_id, monotonic expiry)."""

    @property
    def base_url(self) -> str:
        """What a client configures as its base URL: ``ws://127.0.0.1:PORT/v1/convai/...``."""
        return f"{self.url}{CONVERSATION_PATH}"

    def issue_token(self, agent_id: str, ttl_s: float | None = None) -> str:
        token = secrets.token_urlsafe(24)
        ttl = self.agent.signed_url_ttl_s if ttl_s is None else ttl_s
        self._tokens[token] = (agent_id, time.monotonic() + ttl)
        return token

    def _key_ok(self, request: Request) -> bool:
        key = request.headers.get("xi-api-key")
        if not key:
            return False
        return self.script.api_key is None or key == self.script.api_key

    def _agent_known(self, agent_id: str) -> bool:
        return self.agent.agent_id is None or agent_id == self.agent.agent_id

    def check_request(self, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        agent_id = query.get("agent_id")
        if parts.path == SIGNED_URL_PATH:
            return self._signed_url(request, agent_id)
        if parts.path != CONVERSATION_PATH:
            return json_response(404, "Not Found", {"detail": "Not Found"})
        if not agent_id:
            return _detail(400, "Bad Request", "missing_agent_id", "agent_id is required")
        if not self._agent_known(agent_id):
            return _detail(404, "Not Found", "agent_not_found", "Agent not found")
        token = query.get("token")
        if token is not None:
            issued = self._tokens.get(token)
            if issued is None or issued[0] != agent_id or issued[1] < time.monotonic():
                return _detail(401, "Unauthorized", "invalid_token", "Invalid or expired token")
        elif self.agent.private and not self._key_ok(request):
            return _detail(403, "Forbidden", "auth_required", "This agent requires auth")
        return None

    def _signed_url(self, request: Request, agent_id: str | None) -> Response:
        accepted = self._key_ok(request) and bool(agent_id)
        self.signed_url_requests.append(SignedUrlRequest(agent_id, accepted, time.monotonic()))
        self.changed.notify()
        status = self.agent.signed_url_status
        if status is not None:
            return _detail(status, "Mock Fault", "mock_fault", "Injected failure")
        if not self._key_ok(request):
            return _detail(401, "Unauthorized", "invalid_api_key", "Invalid API key")
        if not agent_id:
            return _detail(422, "Unprocessable Entity", "missing_agent_id", "agent_id required")
        if not self._agent_known(agent_id):
            return _detail(404, "Not Found", "agent_not_found", "Agent not found")
        query = urlencode({"agent_id": agent_id, "token": self.issue_token(agent_id)})
        return json_response(200, "OK", {"signed_url": f"{self.base_url}?{query}"})

    async def handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}
        record = ConnectionRecord(
            number=len(self.connections) + 1,
            path=request.path,
            agent_id=query.get("agent_id"),
            token=query.get("token"),
            headers=dict(request.headers.raw_items()),
            opened_at=time.monotonic(),
        )
        self.connections.append(record)
        self.changed.notify()
        conn = ElevenLabsConnection(
            ws, self.script, self.agent, record, self.changed.notify, self._event_log
        )
        try:
            await conn.serve()
        finally:
            record.closed_at = time.monotonic()
            record.close_code = ws.close_code
            record.close_reason = ws.close_reason
            self.changed.notify()


def _detail(status: int, reason: str, code: str, message: str) -> Response:
    return json_response(status, reason, {"detail": {"status": code, "message": message}})


@contextlib.asynccontextmanager
async def running_elevenlabs_mock(
    script: Script | None = None,
    agent: AgentSettings | None = None,
    *,
    port: int = 0,
    event_log: IO[str] | None = None,
) -> AsyncIterator[ElevenLabsMock]:
    """Start an ``ElevenLabsMock`` on 127.0.0.1 for the duration of the ``async with`` block."""
    async with ElevenLabsMock(script, agent, port=port, event_log=event_log) as mock:
        yield mock


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = mock_arg_parser(
        "mock_elevenlabs",
        "Offline mock of the ElevenLabs Agents (Conversational AI) websocket API.",
        key="xi-api-key",
        modes=False,
    )
    parser.add_argument("--private", action="store_true", help="require a signed-URL token")
    parser.add_argument("--agent-id", help="the only agent that exists (default: any)")
    parser.add_argument("--output-format", help="agent_output_audio_format, e.g. pcm_16000")
    parser.add_argument("--input-format", help="user_input_audio_format, e.g. pcm_16000")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> tuple[Script, AgentSettings]:
    script, agent = load_script(args.script) if args.script else (Script(), AgentSettings())
    agent_overrides: dict[str, Any] = {}
    if args.private:
        agent_overrides["private"] = True
    if args.agent_id is not None:
        agent_overrides["agent_id"] = args.agent_id
    if args.output_format is not None:
        agent_overrides["output_format"] = args.output_format
    if args.input_format is not None:
        agent_overrides["input_format"] = args.input_format
    return (
        dataclasses.replace(script, **script_overrides(args)),
        dataclasses.replace(agent, **agent_overrides),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    script, agent = settings_from_args(args)
    return run_mock(
        args,
        lambda log: ElevenLabsMock(script, agent, host=args.host, port=args.port, event_log=log),
    )


if __name__ == "__main__":
    sys.exit(main())
