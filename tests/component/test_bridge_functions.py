"""Function calls through the bridge: OpenAI mock -> FunctionRunner -> signed local webhook ->
result back to the mock, with hold audio on the caller's side while the webhook is slow."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from sip4ai.bridge import AIConversation
from sip4ai.config import FunctionConfig, OpenAIConfig, Secret
from sip4ai.functions import FunctionRunner
from sip4ai.holdaudio import HoldAudio
from sip4ai.providers.base import SessionSettings
from sip4ai.providers.openai_realtime import OpenAIRealtimeSession
from sip4ai.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from testbed.mocks._openai_script import FunctionCallSpec
from testbed.mocks.mock_openai import Reply, Script, running_openai_mock
from tests.component.bridgekit import speech_pcm, until
from tests.fakes.handle import FakeHandle
from tests.fakes.sip import PacedMedia


pytestmark = pytest.mark.component

SECRET = "fn-secret"


Handle = FakeHandle


@dataclass
class Webhook:
    url: str = ""
    delay_s: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        verify(
            SECRET,
            raw,
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            now=time.time(),
        )
        self.bodies.append(await request.json())
        await asyncio.sleep(self.delay_s)  # a slow backend: the caller hears hold audio
        return web.json_response({"slot": "14:00", "confirmed": True})


@contextlib.asynccontextmanager
async def webhook_server(delay_s: float) -> AsyncIterator[Webhook]:
    hook = Webhook(delay_s=delay_s)
    app = web.Application()
    app.router.add_post("/book", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/book"
    try:
        yield hook
    finally:
        await runner.cleanup()


async def test_function_call_is_signed_held_and_answered() -> None:
    script = Script(
        replies=(Reply("Hi", duration_ms=200),),
        transcripts=("book me at two",),
        function_calls=(FunctionCallSpec("book", {"time": "14:00"}, after_user_turns=1),),
        function_reply="Booked: {output}",
    )
    async with (
        webhook_server(delay_s=1.5) as hook,
        aiohttp.ClientSession() as http,
        running_openai_mock(script) as mock,
    ):
        handle, media = Handle(), PacedMedia()
        fn = FunctionConfig(
            name="book",
            description="Book a slot",
            webhook=hook.url,
            parameters={
                "type": "object",
                "properties": {"time": {"type": "string"}},
                "required": ["time"],
            },
        )
        runner = FunctionRunner(
            call_id=handle.record.id, functions=[fn], control=handle, session=http, secret=SECRET
        )
        config = OpenAIConfig(api_key=Secret("test-key"), base_url=f"{mock.base_url}/realtime")

        def session() -> OpenAIRealtimeSession:
            return OpenAIRealtimeSession(
                config, SessionSettings("x", greeting="Hi", tools=runner.tools)
            )

        conv = AIConversation(handle, session, functions=runner, hold_audio=HoldAudio(http))
        await asyncio.wait_for(conv.prepare(), 10)
        task = asyncio.create_task(conv.run(media))
        try:
            conn = await mock.wait_connection()
            tools = [t["name"] for t in (conn.session or {}).get("tools", [])]
            assert tools[0] == "book" and "end_call" in tools
            await until(lambda: "Hi" in [e.text for e in handle.record.transcript])
            media.feed(speech_pcm(600) + bytes(2 * 8000))
            await until(lambda: bool(hook.bodies))
            assert hook.bodies[0]["arguments"] == {"time": "14:00"}
            assert hook.bodies[0]["call_id"] == handle.record.id
            asked = time.monotonic()
            await mock.wait_for(lambda: conn.function_outputs, 10)
            answered = time.monotonic()
            held = [f for t, f in media.sent if asked + 0.6 < t < answered - 0.1]
            voiced = [f for f in held if np.abs(np.frombuffer(f, np.int16)).max() > 100]
            assert len(voiced) >= 10, f"no hold audio: {len(voiced)} of {len(held)} frames voiced"
            assert '"confirmed": true' in conn.function_outputs[0].output.replace(
                '":true', '": true'
            )
            await until(lambda: any(e.text.startswith("Booked:") for e in handle.record.transcript))
            (called,) = handle.record.functions_called
            assert called.name == "book" and called.arguments == {"time": "14:00"}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await conv.aclose()


async def test_end_call_tool_asks_the_call_to_end() -> None:
    script = Script(
        replies=(Reply("Hi", duration_ms=200),),
        function_calls=(FunctionCallSpec("end_call", {}, after_user_turns=1),),
    )
    async with aiohttp.ClientSession() as http, running_openai_mock(script) as mock:
        handle, media = Handle(), PacedMedia()
        runner = FunctionRunner(
            call_id=handle.record.id, functions=[], control=handle, session=http, secret=None
        )
        config = OpenAIConfig(api_key=Secret("test-key"), base_url=f"{mock.base_url}/realtime")
        conv = AIConversation(
            handle,
            lambda: OpenAIRealtimeSession(
                config, SessionSettings("x", greeting="Hi", tools=runner.tools)
            ),
            functions=runner,
        )
        await asyncio.wait_for(conv.prepare(), 10)
        task = asyncio.create_task(conv.run(media))
        try:
            await until(lambda: "Hi" in [e.text for e in handle.record.transcript])
            media.feed(speech_pcm(600) + bytes(2 * 8000))
            await until(lambda: bool(handle.ended))
            assert handle.record.functions_called[0].name == "end_call"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await conv.aclose()
