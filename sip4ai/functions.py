"""Functions the AI may call: offered tools, argument validation, webhook calls, built-ins.

One ``FunctionRunner`` per call. ``run(tool_call)`` always returns a ``ToolOutcome`` whose
``output`` is JSON text for ``ProviderSession.tool_result``: the webhook's answer on success, or
``{"ok": false, "error": {"type", "message", ...}}`` the AI can talk about (invalid arguments,
timeout, unreachable, HTTP error, failed transfer...). It never raises except CancelledError.

Webhook request (``type: webhook``)
-----------------------------------
* POST/PUT/PATCH/DELETE: JSON body ``{"call_id", "function", "arguments"}``.
* GET: no body; each top-level argument becomes a query parameter (strings as they are, other
  values as JSON text), appended to any query already in the URL. The call id and function
  name travel in the ``X-Sip4ai-Call-Id`` / ``X-Sip4ai-Function`` headers (sent with every
  method), so they never collide with argument names.
* Signed as in signing.py: the signed bytes are the body, or for GET the exact percent-encoded
  query string sent (aiohttp receivers: ``request.rel_url.raw_query_string``).
* Timeout: the function's ``timeout_s`` (default 10 s), for the whole exchange. Redirects are
  not followed. 2xx answers are the result: JSON is passed on as is, other text is wrapped as
  ``{"result": text}``, an empty body becomes ``{"ok": true}``. Answers above
  ``max_response_bytes`` are an error (they would flood the AI's context).

Arguments are checked against the function's JSON schema (its ``$schema``, else draft 2020-12,
with format checks such as ``date``) before any request is made.

Built-in tools (``end_call``, ``send_dtmf``, ``report_result``) and ``type: transfer`` functions
act on the call itself, through the ``CallControl`` the manager implements.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
import jsonschema
import yarl

from sip4ai import __version__
from sip4ai.calls import FunctionCallRecord
from sip4ai.config import FunctionConfig
from sip4ai.configparse import parse_function
from sip4ai.configread import Section
from sip4ai.errors import ConfigError
from sip4ai.providers.base import Tool, ToolCall
from sip4ai.signing import CALL_ID_HEADER, FUNCTION_HEADER, signature_headers


__all__ = [
    "BUILTIN_TOOLS",
    "END_CALL",
    "REPORT_RESULT",
    "SEND_DTMF",
    "ArgumentError",
    "CallControl",
    "FunctionObserver",
    "FunctionRunner",
    "ToolOutcome",
    "TransferOutcome",
    "argument_validator",
    "builtin_tools",
    "functions_from_request",
    "merge_functions",
    "parse_arguments",
    "tool_error",
    "validate_arguments",
]

logger = logging.getLogger(__name__)

USER_AGENT: Final = f"sip4ai/{__version__}"
MAX_RESPONSE_BYTES: Final = 64 * 1024
MAX_ERROR_DETAILS: Final = 5
DTMF_PATTERN: Final = "^[0-9*#A-Da-d]{1,64}$"

END_CALL: Final = Tool(
    name="end_call",
    description=(
        "End the phone call. Use it when the conversation is finished or the other party asks "
        "to hang up; say a short goodbye first."
    ),
    parameters={
        "type": "object",
        "properties": {
            "reason": {"type": "string", "description": "Why the call ends, in a few words."}
        },
        "additionalProperties": False,
    },
)
SEND_DTMF: Final = Tool(
    name="send_dtmf",
    description=(
        "Press keys on the phone keypad (DTMF tones), e.g. to choose an option in an "
        "automated phone menu or to enter a number it asks for."
    ),
    parameters={
        "type": "object",
        "properties": {
            "digits": {
                "type": "string",
                "pattern": DTMF_PATTERN,
                "description": "The keys to press in order: 0-9, * and #.",
            }
        },
        "required": ["digits"],
        "additionalProperties": False,
    },
)
REPORT_RESULT: Final = Tool(
    name="report_result",
    description=(
        "Report the outcome of your task as soon as you know it (whether it succeeded, and "
        "the details you collected). Call it once, before the call ends."
    ),
    parameters={
        "type": "object",
        "properties": {
            "success": {"type": "boolean", "description": "Whether the task was accomplished."},
            "summary": {"type": "string", "description": "A short summary of the outcome."},
        },
        "additionalProperties": True,
    },
)
BUILTIN_TOOLS: Final[Mapping[str, Tool]] = {
    tool.name: tool for tool in (END_CALL, SEND_DTMF, REPORT_RESULT)
}


def builtin_tools(*, task_call: bool) -> tuple[Tool, ...]:
    """end_call and send_dtmf always; report_result only for outbound task calls."""
    return (END_CALL, SEND_DTMF, REPORT_RESULT) if task_call else (END_CALL, SEND_DTMF)


def functions_from_request(items: Sequence[Mapping[str, Any]]) -> tuple[FunctionConfig, ...]:
    """Per-call definitions (POST /api/calls ``functions``) as FunctionConfig, validated like
    the config file's (schema check included). Raises ConfigError (``functions[1].webhook``)."""
    result: list[FunctionConfig] = []
    for index, item in enumerate(items):
        fn = parse_function(Section(item, f"functions[{index}]", "request", {}))
        if any(known.name == fn.name for known in result):
            raise ConfigError(f"functions[{index}].name", "request", "duplicate name")
        result.append(fn)
    return tuple(result)


def merge_functions(
    configured: Sequence[FunctionConfig], per_call: Sequence[FunctionConfig]
) -> tuple[FunctionConfig, ...]:
    """Config functions then the call's own; a per-call definition replaces one of its name."""
    overrides = {fn.name: fn for fn in per_call}
    merged = [overrides.pop(fn.name, fn) for fn in configured]
    return (*merged, *(fn for fn in per_call if fn.name in overrides))


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    success: bool
    status_code: int | None = None
    """The NOTIFY sipfrag status (200 on success) or the REFER's error response."""
    reason: str = ""


class CallControl(Protocol):
    """What the built-in tools and transfers need from the call; implemented by the manager."""

    def end_call(self, reason: str | None) -> None:
        """Hang up once the AI's current reply (its goodbye) has played. Returns at once."""
        ...

    async def send_dtmf(self, digits: str) -> None:
        """Send the digits (RFC 4733); raises on failure."""
        ...

    async def transfer(self, target: str) -> TransferOutcome:
        """Blind transfer by REFER; returns once it succeeded or failed (bounded by the
        implementation). On success the call ends with end_reason ``transferred``."""
        ...

    def report_result(self, result: Mapping[str, Any]) -> None:
        """Queue the task result for ``result_webhook``; with ``hangup_on_task_complete`` end
        the call after the AI's reply. Returns at once."""
        ...


class FunctionObserver(Protocol):
    """Metric hook, called on the loop once per tool call."""

    def finished(self, name: str, outcome: str, duration_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    call_id: str
    """The provider's tool-call id, for ``tool_result``."""
    output: str
    """JSON text for the AI."""
    record: FunctionCallRecord
    """For the call record (``functions_called``) and the function.called event."""
    outcome: str
    """``ok`` or the error type."""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class ArgumentError(ValueError):
    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)


def parse_arguments(raw: str) -> dict[str, Any]:
    """The model's argument text as a JSON object (empty text is ``{}``)."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ArgumentError("The arguments are not valid JSON.") from None
    if not isinstance(value, dict):
        raise ArgumentError("The arguments must be a JSON object.")
    return value


def argument_validator(schema: Mapping[str, Any]) -> Any:
    """A jsonschema validator for ``schema`` (its ``$schema`` draft, else 2020-12), with format
    checks. Typed Any: jsonschema ships no type information."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate_arguments(validator: Any, arguments: Mapping[str, Any]) -> None:
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if errors:
        details = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(arguments)'}: {e.message}"
            for e in errors[:MAX_ERROR_DETAILS]
        ]
        raise ArgumentError(
            "The arguments do not match the function's parameters: " + "; ".join(details),
            details,
        )


def tool_error(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    """The error object returned to the AI (and recorded as the function's result)."""
    return {"ok": False, "error": {"type": kind, "message": message, **extra}}


def _query_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Failure(Exception):
    """A webhook exchange that did not produce a result (carries the tool error)."""

    def __init__(self, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.error = tool_error(kind, message, **extra)


class FunctionRunner:
    """Runs one call's tool calls. Construction does no I/O.

    ``functions``: the merged definitions (see ``merge_functions``); ``task_call``: offer
    report_result; ``secret``: webhook signing key (None: unsigned).
    """

    def __init__(
        self,
        *,
        call_id: str,
        functions: Sequence[FunctionConfig],
        control: CallControl,
        session: aiohttp.ClientSession,
        secret: str | bytes | None,
        task_call: bool = False,
        observer: FunctionObserver | None = None,
        clock: Callable[[], float] = time.time,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.call_id = call_id
        self._functions = {fn.name: fn for fn in functions}
        self._builtins = {tool.name: tool for tool in builtin_tools(task_call=task_call)}
        self._validators = {
            name: argument_validator(schema)
            for name, schema in (
                *((fn.name, fn.parameters) for fn in functions),
                *((t.name, t.parameters) for t in self._builtins.values()),
            )
        }
        self._control = control
        self._session = session
        self._secret = secret
        self._observer = observer
        self._clock = clock
        self._max_response_bytes = max_response_bytes

    @property
    def tools(self) -> tuple[Tool, ...]:
        """Every tool offered to the provider: the functions, then the built-ins."""
        offered = tuple(
            Tool(fn.name, fn.description, fn.parameters) for fn in self._functions.values()
        )
        return (*offered, *self._builtins.values())

    def hold_audio_url(self, name: str) -> str | None:
        fn = self._functions.get(name)
        return fn.hold_audio_url if fn is not None else None

    def holds(self, name: str) -> bool:
        """Whether a call of ``name`` may take long enough for hold audio (webhooks only)."""
        fn = self._functions.get(name)
        return fn is not None and fn.type == "webhook"

    async def run(self, call: ToolCall) -> ToolOutcome:
        loop = asyncio.get_running_loop()
        started = loop.time()
        arguments: dict[str, Any] = {}
        try:
            if call.name not in self._validators:
                raise _Failure("unknown_function", f"There is no function named {call.name!r}.")
            try:
                arguments = parse_arguments(call.arguments)
                validate_arguments(self._validators[call.name], arguments)
            except ArgumentError as exc:
                raise _Failure("invalid_arguments", exc.message) from None
            result = await self._execute(call.name, arguments)
            outcome = "ok"
        except _Failure as failure:
            result, outcome = failure.error, failure.kind
        except Exception as exc:  # the control or a bug: the AI still gets an answer
            logger.exception("! call %s: function %s failed", self.call_id, call.name)
            result = tool_error("internal_error", f"The function failed: {type(exc).__name__}.")
            outcome = "internal_error"
        duration_s = loop.time() - started
        if self._observer is not None:
            self._observer.finished(call.name, outcome, duration_s)
        log = logger.info if outcome == "ok" else logger.warning
        log(
            "= call %s: function %s -> %s in %.0f ms",
            self.call_id,
            call.name,
            outcome,
            duration_s * 1000,
            extra={"pii.arguments": call.arguments},
        )
        if not arguments and call.arguments.strip() and outcome == "invalid_arguments":
            arguments = {"_raw": call.arguments[:2000]}
        record = FunctionCallRecord(call.name, arguments, result)
        return ToolOutcome(call.call_id, _json_text(result), record, outcome)

    async def _execute(self, name: str, arguments: dict[str, Any]) -> Any:
        if name in self._builtins:
            return await self._builtin(name, arguments)
        fn = self._functions[name]
        if fn.type == "transfer":
            return await self._transfer(fn)
        return await self._webhook(fn, arguments)

    async def _builtin(self, name: str, arguments: Mapping[str, Any]) -> Any:
        if name == "end_call":
            reason = arguments.get("reason")
            self._control.end_call(reason if isinstance(reason, str) else None)
            return {"ok": True, "message": "The call ends after your goodbye."}
        if name == "send_dtmf":
            digits = str(arguments["digits"])
            try:
                await self._control.send_dtmf(digits)
            except Exception as exc:
                raise _Failure("dtmf_failed", f"The keys could not be sent: {exc}.") from None
            return {"ok": True, "sent": digits}
        self._control.report_result(arguments)
        return {"ok": True, "message": "The result was recorded."}

    async def _transfer(self, fn: FunctionConfig) -> Any:
        assert fn.target is not None  # config validation requires it
        outcome = await self._control.transfer(fn.target)
        if not outcome.success:
            detail = " ".join(str(p) for p in (outcome.status_code, outcome.reason) if p)
            raise _Failure(
                "transfer_failed",
                "The transfer did not succeed" + (f" ({detail})." if detail else "."),
                status=outcome.status_code,
            )
        return {"ok": True, "transferred": True}

    def _request(
        self, fn: FunctionConfig, arguments: Mapping[str, Any]
    ) -> tuple[yarl.URL, bytes | None, dict[str, str]]:
        assert fn.webhook is not None  # config validation requires it
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            CALL_ID_HEADER: self.call_id,
            FUNCTION_HEADER: fn.name,
        }
        if fn.method != "GET":
            body = _json_text(
                {"call_id": self.call_id, "function": fn.name, "arguments": arguments}
            ).encode()
            headers["Content-Type"] = "application/json"
            headers.update(signature_headers(self._secret, body, now=self._clock()))
            return yarl.URL(fn.webhook), body, headers
        base = yarl.URL(fn.webhook)
        ours = urllib.parse.urlencode(
            [(key, _query_value(value)) for key, value in arguments.items()],
            quote_via=urllib.parse.quote,
        )
        query = "&".join(part for part in (base.raw_query_string, ours) if part)
        bare = str(base.with_query(None).with_fragment(None))
        url = yarl.URL(f"{bare}?{query}" if query else bare, encoded=True)
        headers.update(signature_headers(self._secret, query.encode(), now=self._clock()))
        return url, None, headers

    async def _webhook(self, fn: FunctionConfig, arguments: Mapping[str, Any]) -> Any:
        url, body, headers = self._request(fn, arguments)
        timeout = aiohttp.ClientTimeout(total=fn.timeout_s)
        logger.debug("> call %s: %s %s", self.call_id, fn.method, fn.name)
        try:
            async with self._session.request(
                fn.method, url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
                text = await self._read(response)
        except TimeoutError:
            raise _Failure(
                "timeout", f"The service did not answer within {fn.timeout_s:g} seconds."
            ) from None
        except aiohttp.ClientError as exc:
            # The detail (host, port, OS error) goes to the log, not into the conversation.
            logger.warning("! call %s: function %s: %s", self.call_id, fn.name, exc)
            raise _Failure("unreachable", "The service could not be reached.") from None
        answer = _decode(text)
        if not 200 <= status < 300:
            raise _Failure(
                "http_error", f"The service answered with HTTP {status}.", status=status, **answer
            )
        return answer.get("response", {"ok": True})

    async def _read(self, response: aiohttp.ClientResponse) -> str:
        data = bytearray()
        async for chunk in response.content.iter_chunked(16 * 1024):
            data += chunk
            if len(data) > self._max_response_bytes:
                raise _Failure(
                    "bad_response",
                    f"The service's answer is larger than {self._max_response_bytes} bytes.",
                )
        return data.decode("utf-8", errors="replace")


def _decode(text: str) -> dict[str, Any]:
    """``{"response": value}`` for a JSON or text body; ``{}`` for an empty one."""
    if not text.strip():
        return {}
    try:
        return {"response": json.loads(text)}
    except ValueError:
        return {"response": {"result": text}}
