"""The mock's server-side conversation: items, their order, and the client item events
(``conversation.item.create/delete/retrieve/truncate``). Pure and synchronous: methods return
the server events to send and raise ``WireError`` for the ``error`` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from testbed.mocks import _openai_events as ev
from testbed.mocks._openai_session import WireError, invalid_type, invalid_value, missing_parameter


TAIL: Final = "\x00tail"
"""``previous`` value meaning: insert after the current last item."""

_ROLE_CONTENT: Final = {
    "user": ("input_text", "input_audio", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text",),
}

Event = dict[str, Any]


@dataclass
class Item:
    wire: dict[str, Any]
    previous: str | None
    audio_ms: int | None = None
    """Milliseconds of output audio sent for an assistant audio message, else ``None``."""


@dataclass(frozen=True)
class CreatedMessage:
    item_id: str
    role: str
    text: str


@dataclass(frozen=True)
class CreatedOutput:
    call_id: str
    output: str


@dataclass(frozen=True)
class TruncateResult:
    events: list[Event]
    audio_sent_ms: int
    accepted: bool


class Conversation:
    def __init__(self, *, legacy_item_created: bool = False) -> None:
        self.id = ev.new_id("conv")
        self.items: dict[str, Item] = {}
        self.call_ids: set[str] = set()
        """``call_id`` of every function call the model made (outputs must name one)."""
        self._tail: str | None = None
        self._legacy = legacy_item_created

    @property
    def tail(self) -> str | None:
        return self._tail

    def add(self, wire: dict[str, Any], *, done: bool, previous: str | None = TAIL) -> list[Event]:
        """Insert an item; return ``conversation.item.added`` (and ``.done`` if complete)."""
        prev = self._tail if previous == TAIL else previous
        prev = None if prev == "root" else prev
        self.items[wire["id"]] = Item(wire, prev)
        if previous == TAIL or prev == self._tail:
            self._tail = wire["id"]
        events: list[Event] = [
            {"type": "conversation.item.added", "previous_item_id": prev, "item": wire}
        ]
        if self._legacy:
            events.append(
                {"type": "conversation.item.created", "previous_item_id": prev, "item": wire}
            )
        if done:
            events.append(self.done_event(wire))
        return events

    def done_event(self, wire: dict[str, Any]) -> Event:
        stored = self.items.get(wire["id"])
        if stored is not None:
            stored.wire = wire
        prev = stored.previous if stored else None
        return {"type": "conversation.item.done", "previous_item_id": prev, "item": wire}

    def known(self, event: dict[str, Any]) -> str:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise missing_parameter("item_id")
        if item_id not in self.items:
            raise WireError(
                f"Item '{item_id}' was not found.", code="item_not_found", param="item_id"
            )
        return item_id

    def create(
        self, event: dict[str, Any]
    ) -> tuple[list[Event], CreatedMessage | CreatedOutput | None]:
        """Handle ``conversation.item.create``; also return what an inject/tool output said."""
        item = event.get("item")
        if not isinstance(item, dict):
            raise missing_parameter("item")
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self.items:
            raise WireError(
                f"Item '{previous}' was not found.", code="item_not_found", param="previous_item_id"
            )
        item_id = item.get("id") or ev.new_id("item")
        if item_id in self.items:
            raise WireError(
                f"Item with id '{item_id}' already exists.", code="invalid_value", param="item.id"
            )
        where = TAIL if previous is None else previous
        kind = item.get("type")
        if kind == "message":
            wire, text = _message(item, item_id)
            created = CreatedMessage(item_id, wire["role"], text)
            return self.add(wire, done=True, previous=where), created
        if kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise missing_parameter("item.call_id")
            if not isinstance(output, str):
                raise missing_parameter("item.output")
            if call_id not in self.call_ids:
                raise WireError(
                    f"Tool call ID '{call_id}' not found in conversation.",
                    code="invalid_value",
                    param="item.call_id",
                )
            wire = {
                "id": item_id,
                "object": "realtime.item",
                "type": "function_call_output",
                "status": "completed",
                "call_id": call_id,
                "output": output,
            }
            return self.add(wire, done=True, previous=where), CreatedOutput(call_id, output)
        if kind == "function_call":
            wire = {**item, "id": item_id, "object": "realtime.item", "status": "completed"}
            return self.add(wire, done=True, previous=where), None
        raise invalid_value(kind, ("message", "function_call", "function_call_output"), "item.type")

    def delete(self, event: dict[str, Any]) -> list[Event]:
        item_id = self.known(event)
        del self.items[item_id]
        return [{"type": "conversation.item.deleted", "item_id": item_id}]

    def retrieve(self, event: dict[str, Any]) -> list[Event]:
        item_id = self.known(event)
        return [{"type": "conversation.item.retrieved", "item": self.items[item_id].wire}]

    def truncate(self, event: dict[str, Any], *, clamp_after_error: bool) -> TruncateResult:
        """Validate ``conversation.item.truncate`` against the audio actually sent."""
        item_id = self.known(event)
        content_index, audio_end_ms = event.get("content_index"), event.get("audio_end_ms")
        if not isinstance(content_index, int) or isinstance(content_index, bool):
            raise missing_parameter("content_index")
        if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool):
            raise missing_parameter("audio_end_ms")
        if audio_end_ms < 0:
            raise WireError(
                f"Invalid 'audio_end_ms': integer below minimum value. Expected a value >= 0, "
                f"but got {audio_end_ms} instead.",
                code="integer_below_min_value",
                param="audio_end_ms",
            )
        sent_ms = self.items[item_id].audio_ms
        if sent_ms is None:
            # Captured text; the real error carries code null and param null.
            raise WireError("Only model output audio messages can be truncated")
        if content_index != 0:
            raise WireError(
                f"Invalid value: {content_index}. Supported values are: 0.",
                code="invalid_value",
                param="content_index",
            )
        events: list[Event] = []
        if audio_end_ms > sent_ms:
            # Captured text; a captured trace shows error.event_id null here.
            too_long = WireError(
                f"Audio content of {sent_ms}ms is already shorter than {audio_end_ms}ms"
            )
            events.append(ev.error_event(too_long, None))
            if not clamp_after_error:
                return TruncateResult(events, sent_ms, accepted=False)
            audio_end_ms = sent_ms
        events.append(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": content_index,
                "audio_end_ms": audio_end_ms,
            }
        )
        return TruncateResult(events, sent_ms, accepted=True)


def _message(item: dict[str, Any], item_id: str) -> tuple[dict[str, Any], str]:
    role = item.get("role")
    if role not in _ROLE_CONTENT:
        raise invalid_value(role, tuple(_ROLE_CONTENT), "item.role")
    content = item.get("content")
    if not isinstance(content, list):
        raise invalid_type("item.content", "an array")
    texts: list[str] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _ROLE_CONTENT[role]:
            kind = part.get("type") if isinstance(part, dict) else part
            raise invalid_value(kind, _ROLE_CONTENT[role], f"item.content[{i}].type")
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
    wire = {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": role,
        "content": content,
    }
    return wire, " ".join(texts)
