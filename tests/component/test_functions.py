"""FunctionRunner against a real aiohttp webhook server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sip4ai.config import FunctionConfig
from sip4ai.functions import FunctionRunner, TransferOutcome
from sip4ai.providers.base import ToolCall
from sip4ai.signing import (
    CALL_ID_HEADER,
    FUNCTION_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    verify,
)
from tests.conftest import MS


pytestmark = pytest.mark.component

SECRET = "fn-secret"


@dataclass
class Hook:
    """The customer's webhook service: verifies every signature, records every request."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    base: str = ""

    def _check(self, request: web.Request, signed: bytes) -> None:
        try:
            verify(
                SECRET,
                signed,
                request.headers.get(TIMESTAMP_HEADER),
                request.headers.get(SIGNATURE_HEADER),
                now=time.time(),
            )
        except SignatureError:
            self.bad_signatures += 1
            raise web.HTTPUnauthorized() from None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        signed = body if request.method != "GET" else request.rel_url.raw_query_string.encode()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "body": json.loads(body) if body else None,
                "call_id": request.headers.get(CALL_ID_HEADER),
                "function": request.headers.get(FUNCTION_HEADER),
                "content_type": request.headers.get("Content-Type"),
            }
        )
        self.arrived.set()
        self._check(request, signed)
        name = request.match_info["name"]
        if name == "slow":
            await self.release.wait()
        if name == "fail":
            return web.json_response({"message": "database down"}, status=500)
        if name == "text":
            return web.Response(text="booked for 2pm")
        if name == "empty":
            return web.Response(status=204)
        if name == "huge":
            return web.Response(text="x" * 100_000)
        return web.json_response({"success": True, "seen": self.requests[-1]})


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    hook = Hook()
    app = web.Application()
    app.router.add_route("*", "/{name}", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hook.base = f"http://127.0.0.1:{port}"
    try:
        yield hook
    finally:
        hook.release.set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class NoControl:
    def end_call(self, reason: str | None) -> None:
        raise AssertionError("not expected")

    async def send_dtmf(self, digits: str) -> None:
        raise AssertionError("not expected")

    async def transfer(self, target: str) -> TransferOutcome:
        raise AssertionError("not expected")

    def report_result(self, result: Mapping[str, Any]) -> None:
        raise AssertionError("not expected")


class Observer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []

    def finished(self, name: str, outcome: str, duration_s: float) -> None:
        self.calls.append((name, outcome, duration_s))


PARAMS: Mapping[str, Any] = {
    "type": "object",
    "properties": {"date": {"type": "string"}, "time": {"type": "string"}},
    "required": ["date", "time"],
}


def make_runner(
    session: aiohttp.ClientSession, *functions: FunctionConfig, observer: Observer | None = None
) -> FunctionRunner:
    return FunctionRunner(
        call_id="call-1",
        functions=functions,
        control=NoControl(),
        session=session,
        secret=SECRET,
        observer=observer,
    )


async def test_post_sends_a_signed_json_body_and_returns_the_answer(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    fn = FunctionConfig(name="book", webhook=f"{hook.base}/book", parameters=PARAMS)
    observer = Observer()
    outcome = await make_runner(session, fn, observer=observer).run(
        ToolCall("tc1", "book", '{"date": "2024-01-16", "time": "14:00"}')
    )
    assert outcome.ok, outcome.output
    assert hook.bad_signatures == 0
    (request,) = hook.requests
    assert request["method"] == "POST"
    assert request["content_type"] == "application/json"
    assert request["body"] == {
        "call_id": "call-1",
        "function": "book",
        "arguments": {"date": "2024-01-16", "time": "14:00"},
    }
    assert request["call_id"] == "call-1" and request["function"] == "book"
    answer = json.loads(outcome.output)
    assert answer["success"] is True
    assert outcome.call_id == "tc1"
    assert outcome.record.name == "book"
    assert outcome.record.arguments == {"date": "2024-01-16", "time": "14:00"}
    assert outcome.record.result == answer
    assert [(n, o) for n, o, _ in observer.calls] == [("book", "ok")]


async def test_get_sends_arguments_as_a_signed_query(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    fn = FunctionConfig(
        name="customer",
        webhook=f"{hook.base}/customer?key=abc",
        method="GET",
        parameters={"type": "object"},
    )
    outcome = await make_runner(session, fn).run(
        ToolCall("tc", "customer", '{"phone": "+61 400 000/000", "vip": true, "n": 3}')
    )
    assert outcome.ok, outcome.output
    assert hook.bad_signatures == 0
    (request,) = hook.requests
    assert request["method"] == "GET"
    assert request["body"] is None
    assert request["query"] == {"key": "abc", "phone": "+61 400 000/000", "vip": "true", "n": "3"}
    assert request["call_id"] == "call-1" and request["function"] == "customer"


async def test_other_methods_send_the_json_body(hook: Hook, session: aiohttp.ClientSession) -> None:
    fn = FunctionConfig(name="update", webhook=f"{hook.base}/update", method="PUT")
    outcome = await make_runner(session, fn).run(ToolCall("tc", "update", "{}"))
    assert outcome.ok
    assert hook.requests[0]["method"] == "PUT"
    assert hook.requests[0]["body"] == {"call_id": "call-1", "function": "update", "arguments": {}}


async def test_invalid_arguments_make_no_request(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    fn = FunctionConfig(name="book", webhook=f"{hook.base}/book", parameters=PARAMS)
    runner = make_runner(session, fn)
    missing = await runner.run(ToolCall("tc", "book", '{"date": "2024-01-16"}'))
    garbage = await runner.run(ToolCall("tc", "book", '{"date": '))
    assert hook.requests == []
    assert missing.outcome == garbage.outcome == "invalid_arguments"
    error = json.loads(missing.output)
    assert error == {
        "ok": False,
        "error": {
            "type": "invalid_arguments",
            "message": "The arguments do not match the function's parameters: "
            "(arguments): 'time' is a required property",
        },
    }
    assert missing.record.arguments == {"date": "2024-01-16"}
    assert garbage.record.arguments == {"_raw": '{"date": '}
    assert garbage.record.result == json.loads(garbage.output)


async def test_timeout_is_a_tool_error(hook: Hook, session: aiohttp.ClientSession) -> None:
    fn = FunctionConfig(name="slow", webhook=f"{hook.base}/slow", timeout_s=200 * MS)
    outcome = await make_runner(session, fn).run(ToolCall("tc", "slow", "{}"))
    assert outcome.outcome == "timeout"
    assert json.loads(outcome.output)["error"]["type"] == "timeout"
    assert "did not answer within" in json.loads(outcome.output)["error"]["message"]
    assert len(hook.requests) == 1


async def test_http_500_is_a_tool_error_with_the_answer(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    fn = FunctionConfig(name="fail", webhook=f"{hook.base}/fail")
    outcome = await make_runner(session, fn).run(ToolCall("tc", "fail", "{}"))
    assert outcome.outcome == "http_error"
    assert json.loads(outcome.output) == {
        "ok": False,
        "error": {
            "type": "http_error",
            "message": "The service answered with HTTP 500.",
            "status": 500,
            "response": {"message": "database down"},
        },
    }


async def test_wrong_secret_is_rejected_by_the_receiver(
    hook: Hook, session: aiohttp.ClientSession
) -> None:
    fn = FunctionConfig(name="book", webhook=f"{hook.base}/book")
    runner = FunctionRunner(
        call_id="c", functions=[fn], control=NoControl(), session=session, secret="wrong"
    )
    outcome = await runner.run(ToolCall("tc", "book", "{}"))
    assert hook.bad_signatures == 1
    assert outcome.outcome == "http_error"
    assert json.loads(outcome.output)["error"]["status"] == 401


async def test_text_and_empty_answers(hook: Hook, session: aiohttp.ClientSession) -> None:
    runner = make_runner(
        session,
        FunctionConfig(name="text", webhook=f"{hook.base}/text"),
        FunctionConfig(name="empty", webhook=f"{hook.base}/empty"),
        FunctionConfig(name="huge", webhook=f"{hook.base}/huge"),
    )
    text = await runner.run(ToolCall("a", "text", ""))
    empty = await runner.run(ToolCall("b", "empty", ""))
    huge = await runner.run(ToolCall("c", "huge", ""))
    assert json.loads(text.output) == {"result": "booked for 2pm"}
    assert json.loads(empty.output) == {"ok": True}
    assert huge.outcome == "bad_response"


async def test_unreachable_service_is_a_tool_error(session: aiohttp.ClientSession) -> None:
    with socket.socket() as closed:  # bound but not listening: connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        fn = FunctionConfig(name="down", webhook=f"http://127.0.0.1:{port}/x")
        outcome = await make_runner(session, fn).run(ToolCall("tc", "down", "{}"))
    assert outcome.outcome == "unreachable"
    assert json.loads(outcome.output)["error"]["message"] == "The service could not be reached."


async def test_unknown_function(session: aiohttp.ClientSession) -> None:
    outcome = await make_runner(session).run(ToolCall("tc", "nope", "{}"))
    assert outcome.outcome == "unknown_function"
    assert outcome.record.name == "nope"


async def test_cancellation_propagates(hook: Hook, session: aiohttp.ClientSession) -> None:
    fn = FunctionConfig(name="slow", webhook=f"{hook.base}/slow")
    task = asyncio.create_task(make_runner(session, fn).run(ToolCall("tc", "slow", "{}")))
    await asyncio.wait_for(hook.arrived.wait(), 2000 * MS)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
