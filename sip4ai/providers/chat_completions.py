"""OpenAI Chat Completions streaming client (aiohttp): one POST, SSE events out.

Barge-in aborts a reply by cancelling the task iterating ``stream_chat``: the response is
closed, which closes the HTTP stream (the server stops generating).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from sip4ai.providers import chat_completions_wire as wire


logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
"""Longest silence inside a stream (first token included) before the reply counts as failed."""


class ChatError(Exception):
    """The request failed: HTTP error answer, or the connection broke."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def fatal(self) -> bool:
        """No later request can succeed either (bad key, no access, bad model or URL)."""
        return self.status in (401, 403, 404)


def completions_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/chat/completions"


async def stream_chat(
    http: aiohttp.ClientSession, base_url: str, key: str, body: Mapping[str, Any]
) -> AsyncIterator[wire.ChatEvent]:
    """POST ``body`` and yield its events; the last one is always ``Finished``."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
    )
    try:
        async with http.post(
            completions_url(base_url), json=body, headers=wire.auth_headers(key), timeout=timeout
        ) as response:
            if response.status != 200:
                message, code = wire.error_message(response.status, await response.read())
                if response.status in (401, 403):
                    message = "authentication failed"  # the server's text may quote the key
                raise ChatError(
                    f"chat completions: HTTP {response.status}: {message}",
                    status=response.status,
                    code=code,
                )
            parser, decoder = wire.SseParser(), wire.StreamDecoder()
            try:
                async for chunk in response.content.iter_any():
                    for data in parser.feed(chunk):
                        for event in decoder.decode(data):
                            yield event
                        if decoder.done:
                            return
                for data in parser.close():
                    for event in decoder.decode(data):
                        yield event
                if not decoder.done:
                    logger.debug("- chat completions: stream ended without [DONE]")
                    yield decoder.finish()
            except BaseException:
                response.close()  # an abandoned stream must not go back to the pool
                raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ChatError(f"chat completions: request failed: {exc!r}") from exc
