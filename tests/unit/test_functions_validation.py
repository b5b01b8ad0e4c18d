from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from sip4ai.config import FunctionConfig
from sip4ai.configparse import RESERVED_FUNCTIONS
from sip4ai.errors import ConfigError
from sip4ai.functions import (
    BUILTIN_TOOLS,
    ArgumentError,
    FunctionRunner,
    TransferOutcome,
    argument_validator as make_validator,
    builtin_tools,
    functions_from_request,
    merge_functions,
    parse_arguments,
    validate_arguments,
)
from sip4ai.providers.base import ToolCall


pytestmark = pytest.mark.unit

BOOK = FunctionConfig(
    name="book_appointment",
    description="Book an appointment for the caller",
    webhook="http://127.0.0.1:9/unused",
    parameters={
        "type": "object",
        "properties": {
            "date": {"type": "string", "format": "date"},
            "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
            "people": {"type": "integer", "minimum": 1},
        },
        "required": ["date", "time"],
        "additionalProperties": False,
    },
)
TRANSFER = FunctionConfig(
    name="transfer_call",
    description="Transfer the call to a human agent",
    type="transfer",
    target="+61400000001",
)


def messages(schema: Mapping[str, Any], arguments: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ArgumentError) as info:
        validate_arguments(make_validator(schema), arguments)
    return info.value.details


def test_parse_arguments() -> None:
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("  ") == {}
    with pytest.raises(ArgumentError, match="not valid JSON"):
        parse_arguments('{"a": ')
    with pytest.raises(ArgumentError, match="must be a JSON object"):
        parse_arguments("[1, 2]")


def test_valid_arguments_pass() -> None:
    validate_arguments(make_validator(BOOK.parameters), {"date": "2024-01-16", "time": "14:00"})


def test_missing_required_and_wrong_types_are_listed_by_path() -> None:
    assert messages(BOOK.parameters, {"date": "2024-01-16", "people": "two"}) == (
        "(arguments): 'time' is a required property",
        "people: 'two' is not of type 'integer'",
    )


def test_formats_and_patterns_are_checked() -> None:
    assert messages(BOOK.parameters, {"date": "2024-13-45", "time": "2pm"}) == (
        "date: '2024-13-45' is not a 'date'",
        "time: '2pm' does not match '^[0-2][0-9]:[0-5][0-9]$'",
    )


def test_unexpected_properties_are_rejected() -> None:
    details = messages(BOOK.parameters, {"date": "2024-01-16", "time": "14:00", "x": 1})
    assert details == ("(arguments): Additional properties are not allowed ('x' was unexpected)",)


def test_the_message_names_the_problem_for_the_ai() -> None:
    with pytest.raises(ArgumentError) as info:
        validate_arguments(make_validator(BOOK.parameters), {})
    assert info.value.message.startswith("The arguments do not match the function's parameters:")
    assert "'date' is a required property" in info.value.message


def test_a_declared_older_draft_is_honoured() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"n": {"type": "number", "maximum": 5, "exclusiveMaximum": True}},
    }
    assert messages(schema, {"n": 5}) == ("n: 5 is greater than or equal to the maximum of 5",)


def test_builtin_tools() -> None:
    assert set(BUILTIN_TOOLS) == set(RESERVED_FUNCTIONS)
    assert [t.name for t in builtin_tools(task_call=False)] == ["end_call", "send_dtmf"]
    assert [t.name for t in builtin_tools(task_call=True)] == [
        "end_call",
        "send_dtmf",
        "report_result",
    ]
    dtmf = make_validator(BUILTIN_TOOLS["send_dtmf"].parameters)
    validate_arguments(dtmf, {"digits": "1#*09"})
    for bad in ({"digits": ""}, {"digits": "12x"}, {}):
        with pytest.raises(ArgumentError):
            validate_arguments(dtmf, bad)
    validate_arguments(
        make_validator(BUILTIN_TOOLS["report_result"].parameters),
        {"success": True, "summary": "ok", "anything": {"nested": [1]}},
    )


def test_merge_functions_per_call_replaces_by_name() -> None:
    per_call = FunctionConfig(name="book_appointment", webhook="http://127.0.0.1:9/other")
    extra = FunctionConfig(name="extra", webhook="http://127.0.0.1:9/x")
    merged = merge_functions([BOOK, TRANSFER], [extra, per_call])
    assert [f.name for f in merged] == ["book_appointment", "transfer_call", "extra"]
    assert merged[0] is per_call


def test_functions_from_request() -> None:
    docs_example: list[dict[str, Any]] = [
        {
            "name": "book_appointment",
            "description": "Book an appointment for the caller",
            "webhook": "https://your-app.com/api/book",
            "hold_audio_url": "https://your-app.com/audio/hold.wav",
            "parameters": {
                "type": "object",
                "properties": {"date": {"type": "string"}, "time": {"type": "string"}},
                "required": ["date", "time"],
            },
        },
        {
            "name": "transfer_call",
            "description": "Transfer the call to a human agent",
            "type": "transfer",
            "target": "+61400000001",
        },
    ]
    book, transfer = functions_from_request(docs_example)
    assert book.method == "POST" and book.timeout_s == 10.0
    assert book.hold_audio_url == "https://your-app.com/audio/hold.wav"
    assert transfer.type == "transfer" and transfer.target == "+61400000001"


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([{"name": "x"}], "functions[0].webhook"),
        ([{"name": "x", "type": "transfer"}], "functions[0].target"),
        ([{"name": "end_call", "webhook": "https://a/b"}], "functions[0].name"),
        (
            [{"name": "x", "webhook": "https://a/b", "parameters": {"type": "nope"}}],
            "functions[0].parameters",
        ),
        (
            [{"name": "x", "webhook": "https://a/b"}, {"name": "x", "webhook": "https://a/c"}],
            "functions[1].name",
        ),
    ],
)
def test_functions_from_request_errors(items: list[dict[str, Any]], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        functions_from_request(items)
    assert info.value.field == field


TRANSFERRED = TransferOutcome(True, 200)


class FakeControl:
    def __init__(self, transfer: TransferOutcome = TRANSFERRED) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._transfer = transfer

    def end_call(self, reason: str | None) -> None:
        self.calls.append(("end_call", reason))

    async def send_dtmf(self, digits: str) -> None:
        if digits == "0":
            raise RuntimeError("no media")
        self.calls.append(("send_dtmf", digits))

    async def transfer(self, target: str) -> TransferOutcome:
        self.calls.append(("transfer", target))
        return self._transfer

    def report_result(self, result: Mapping[str, Any]) -> None:
        self.calls.append(("report_result", dict(result)))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def runner(
    session: aiohttp.ClientSession, control: FakeControl, *, task_call: bool = False
) -> FunctionRunner:
    return FunctionRunner(
        call_id="c1",
        functions=[BOOK, TRANSFER],
        control=control,
        session=session,
        secret="s",
        task_call=task_call,
    )


async def test_offered_tools(session: aiohttp.ClientSession) -> None:
    r = runner(session, FakeControl(), task_call=True)
    assert [t.name for t in r.tools] == [
        "book_appointment",
        "transfer_call",
        "end_call",
        "send_dtmf",
        "report_result",
    ]
    assert r.tools[0].parameters == BOOK.parameters
    assert r.tools[1].parameters == {"type": "object", "properties": {}}
    assert r.holds("book_appointment") and not r.holds("transfer_call")
    assert not r.holds("end_call")


async def test_builtins_call_the_control(session: aiohttp.ClientSession) -> None:
    control = FakeControl()
    r = runner(session, control, task_call=True)
    end = await r.run(ToolCall("t1", "end_call", '{"reason": "done"}'))
    dtmf = await r.run(ToolCall("t2", "send_dtmf", '{"digits": "1#"}'))
    report = await r.run(ToolCall("t3", "report_result", '{"success": true, "when": "Tue"}'))
    assert [o.outcome for o in (end, dtmf, report)] == ["ok", "ok", "ok"]
    assert control.calls == [
        ("end_call", "done"),
        ("send_dtmf", "1#"),
        ("report_result", {"success": True, "when": "Tue"}),
    ]
    assert json.loads(dtmf.output) == {"ok": True, "sent": "1#"}
    assert dtmf.call_id == "t2"
    assert report.record.arguments == {"success": True, "when": "Tue"}


async def test_dtmf_failure_and_report_result_not_offered(session: aiohttp.ClientSession) -> None:
    control = FakeControl()
    r = runner(session, control)
    failed = await r.run(ToolCall("t1", "send_dtmf", '{"digits": "0"}'))
    assert failed.outcome == "dtmf_failed"
    assert json.loads(failed.output)["error"]["type"] == "dtmf_failed"
    missing = await r.run(ToolCall("t2", "report_result", "{}"))
    assert missing.outcome == "unknown_function"
    assert control.calls == []


async def test_invalid_builtin_arguments_never_reach_the_control(
    session: aiohttp.ClientSession,
) -> None:
    control = FakeControl()
    outcome = await runner(session, control).run(ToolCall("t", "send_dtmf", '{"digits": "1x"}'))
    assert outcome.outcome == "invalid_arguments"
    assert control.calls == []


async def test_transfer_success_and_failure(session: aiohttp.ClientSession) -> None:
    control = FakeControl()
    ok = await runner(session, control).run(ToolCall("t", "transfer_call", ""))
    assert ok.ok and json.loads(ok.output) == {"ok": True, "transferred": True}
    assert control.calls == [("transfer", "+61400000001")]

    busy = FakeControl(TransferOutcome(False, 486, "Busy Here"))
    failed = await runner(session, busy).run(ToolCall("t", "transfer_call", "{}"))
    assert failed.outcome == "transfer_failed"
    assert json.loads(failed.output) == {
        "ok": False,
        "error": {
            "type": "transfer_failed",
            "message": "The transfer did not succeed (486 Busy Here).",
            "status": 486,
        },
    }
    assert failed.record.name == "transfer_call"
    assert failed.record.result == json.loads(failed.output)
