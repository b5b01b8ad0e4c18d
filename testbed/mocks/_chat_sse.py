"""Mock OpenAI Chat Completions streaming endpoint (``POST /v1/chat/completions``), 5d.

The answer is chosen from the request's messages alone (HTTP is stateless): a trailing
``tool`` message -> ``function_reply``; a trailing system message named ``instructions`` ->
``instructions_reply`` or the next scripted reply; other trailing system messages (injects) ->
``inject_reply``; a trailing user message -> a due scripted function call, else the next
scripted reply. "Next" = ``replies[k]`` where k counts the assistant answers already in the
history. Text streams word by word after ``think_ms``; function calls stream as ``tool_calls``
fragments; every stream ends with ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from testbed.mocks._cartesia_script import ChatRequestRecord, PipelineScript
from testbed.mocks._openai_script import FunctionCallSpec, Reply, ReplyContext, Script
from testbed.mocks._ws_common import EventLog


_WORDS = re.compile(r"\S+\s*")


def openai_error(status: int, message: str, kind: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


def unanswered_tool_calls(messages: list[dict[str, Any]]) -> list[str]:
    """Tool call ids not answered by ``tool`` messages right after their assistant message."""
    missing: list[str] = []
    for i, message in enumerate(messages):
        wanted = [str(c.get("id")) for c in message.get("tool_calls") or ()]
        answered = set()
        for follower in messages[i + 1 :]:
            if follower.get("role") != "tool":
                break
            answered.add(str(follower.get("tool_call_id")))
        missing += [w for w in wanted if w not in answered]
    return missing


def validate(body: object) -> str | None:
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return "every message needs a 'role'"
    missing = unanswered_tool_calls(messages)
    if missing:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages responding "
            f"to each 'tool_call_id'. The following tool_call_ids did not have response "
            f"messages: {', '.join(missing)}"
        )
    if body.get("stream") is not True:
        return "the mock serves only stream=true"
    return None


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def choose(
    script: Script, messages: list[dict[str, Any]]
) -> tuple[str, Reply | None, FunctionCallSpec | None]:
    """``(trigger, reply, function_call)`` for a request whose ``messages`` passed ``validate``."""
    last = messages[-1]
    said = sum(1 for m in messages if m["role"] == "assistant" and not m.get("tool_calls"))
    users = [m for m in messages if m["role"] == "user"]
    transcript = _text(users[-1]) if users else None
    instructions = _text(last) if last["role"] == "system" and last.get("name") else None
    trigger = {"tool": "tool", "user": "turn"}.get(str(last["role"]), "inject")
    if instructions is not None:
        trigger = "instructions"
    if script.reply_hook is not None:
        hooked = script.reply_hook(
            ReplyContext(
                "turn" if trigger == "turn" else "client",
                said,
                len(users),
                transcript,
                instructions,
                (),
                (),
            )
        )
        if hooked is not None:
            return trigger, hooked, None
    if trigger == "tool":
        return trigger, _tool_reply(script, messages), None
    if trigger == "inject":
        tail: list[str] = []
        for message in reversed(messages[1:]):
            if message["role"] != "system":
                break
            tail.insert(0, _text(message))
        return trigger, Reply(script.inject_reply.format(text=" ".join(tail))), None
    if trigger == "turn":
        heard = (transcript or "").lower()
        for spec in script.function_calls:
            by_count = spec.after_user_turns is not None and spec.after_user_turns == len(users)
            by_text = spec.transcript_contains is not None and spec.transcript_contains.lower() in (
                heard
            )
            if by_count or by_text:
                return trigger, None, spec
    if instructions and script.instructions_reply is not None:
        return trigger, Reply(script.instructions_reply.format(instructions=instructions)), None
    if said < len(script.replies):
        return trigger, script.replies[said], None
    return trigger, script.default_reply, None


def _tool_reply(script: Script, messages: list[dict[str, Any]]) -> Reply:
    names = {
        str(c.get("id")): str((c.get("function") or {}).get("name", ""))
        for m in messages
        for c in m.get("tool_calls") or ()
    }
    outputs: list[str] = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        call_id = str(message.get("tool_call_id"))
        outputs.insert(
            0, script.function_reply.format(output=_text(message), name=names.get(call_id, ""))
        )
    return Reply(" ".join(outputs))


class ChatEndpoint:
    """The aiohttp handler; ``requests`` gets one record per POST."""

    def __init__(
        self,
        script: PipelineScript,
        requests: list[ChatRequestRecord],
        planned: list[Reply],
        notify: Callable[[], None],
        event_log: EventLog,
    ) -> None:
        self._log = event_log
        self._pipeline = script
        self._script = script.script
        self._requests = requests
        self._planned = planned
        self._notify = notify

    def _key_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            return False
        wanted = self._pipeline.chat_key
        return wanted is None or header[7:] == wanted

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._key_ok(request.headers.get("Authorization")):
            return openai_error(
                401,
                "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        try:
            body = await request.json()
        except ValueError:
            return openai_error(400, "the body is not valid JSON", "invalid_request_error", None)
        record = ChatRequestRecord(
            len(self._requests) + 1,
            dict(request.headers),
            body if isinstance(body, dict) else {},
            time.monotonic(),
        )
        self._requests.append(record)
        self._log.write("in", 0, {"type": "chat.request"}, record.at)
        self._notify()
        problem = validate(body)
        if problem is not None:
            record.kind = "error"
            self._notify()
            return openai_error(400, problem, "invalid_request_error", None)
        record.trigger, reply, call = choose(self._script, body["messages"])
        record.reply = reply
        if reply is not None:
            self._planned.append(reply)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await self._stream(response, record, body, reply, call)
        except ConnectionError:
            self._aborted(record)
            return response
        except asyncio.CancelledError:
            self._aborted(record)
            raise
        record.finished_at = time.monotonic()
        self._log.write("out", 0, {"type": f"chat.{record.kind}.done"}, record.finished_at)
        self._notify()
        return response

    def _aborted(self, record: ChatRequestRecord) -> None:
        record.aborted = True
        self._log.write("out", 0, {"type": "chat.aborted"}, time.monotonic())
        self._notify()

    async def _stream(
        self,
        response: web.StreamResponse,
        record: ChatRequestRecord,
        body: dict[str, Any],
        reply: Reply | None,
        call: FunctionCallSpec | None,
    ) -> None:
        script = self._script
        base = {
            "id": f"chatcmpl-mock{record.number}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {**base, "choices": [choice]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        await asyncio.sleep(script.think_ms / 1000)
        record.first_token_at = time.monotonic()
        pause_s = 0.0 if script.burst else self._pipeline.chat_word_ms / 1000 / script.speed
        if call is not None:
            record.kind = "function_call"
            call_id = call.call_id or f"call_mock{record.number}"
            record.call_ids.append(call_id)
            arguments = json.dumps(dict(call.arguments))
            first = {"index": 0, "id": call_id, "type": "function"}
            await send(
                {"tool_calls": [{**first, "function": {"name": call.name, "arguments": ""}}]}
            )
            for i in range(0, len(arguments), 8):
                fragment = {"index": 0, "function": {"arguments": arguments[i : i + 8]}}
                await send({"tool_calls": [fragment]})
            await send({}, "tool_calls")
        else:
            for word in _WORDS.findall(reply.text if reply else ""):
                await send({"content": word})
                await asyncio.sleep(pause_s)
            await send({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}
            await response.write(
                f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
