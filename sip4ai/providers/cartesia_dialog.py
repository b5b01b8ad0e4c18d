"""The Cartesia pipeline's conversation state: chat history and per-reply bookkeeping (pure).

The chat history is what the LLM believes was said. After a barge-in it keeps only what the
caller heard: the interrupted reply is cut to the words whose TTS timestamps end within the
played time, and marked as interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sip4ai.providers.chat_completions_wire import ToolCallRequest


INTERRUPTED_MARK = " [interrupted by the caller]"
PENDING_TOOL_OUTPUT = '{"status": "pending", "note": "the result is not available yet"}'
INSTRUCTION_NAME = "instructions"
"""``name`` of a one-off system message steering only the next reply (greeting, goodbye)."""
AUDIO_BYTES_PER_MS = 8
"""The TTS output is mu-law at 8 kHz."""
KEEP_REPLIES = 32
"""Replies whose word timestamps are kept for a late ``truncate``."""


@dataclass
class ReplyState:
    """One AI reply: one TTS context (``item_id`` is the context id)."""

    item_id: str
    sent: list[str] = field(default_factory=list)
    """Text pieces sent to TTS, in order."""
    words: list[tuple[str, float]] = field(default_factory=list)
    """(word, end seconds) from Cartesia timestamps, in context audio time."""
    audio_bytes: int = 0
    llm_done: bool = False
    tts_ended: bool = False
    """``continue: false`` was sent (or nothing will be sent)."""
    tts_done: bool = False
    cancelled: bool = False
    finished: bool = False
    """``ReplyDone`` was emitted."""
    tool_calls: tuple[ToolCallRequest, ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.sent).strip()

    def received_text(self) -> str:
        """The words whose audio has (at least partly) arrived.

        Timestamps name the words whose audio is complete; audio beyond the last of them is
        the start of the next word of the text, which counts too.
        """
        spoken = [w for w, _ in self.words]
        stamped_ms = self.words[-1][1] * 1000.0 if self.words else 0.0
        if self.audio_bytes / AUDIO_BYTES_PER_MS > stamped_ms + 1.0:
            spoken = self.text.split()[: len(spoken) + 1]
        return " ".join(spoken)

    def heard_text(self, played_ms: int) -> str:
        """The words the caller heard at least the start of in ``played_ms`` of audio."""
        heard: list[str] = []
        start_s = 0.0
        for word, end_s in self.words:
            if start_s * 1000.0 >= played_ms:
                break
            heard.append(word)
            start_s = end_s
        return " ".join(heard)


@dataclass
class _Entry:
    message: dict[str, Any]
    item_id: str | None = None


class Dialog:
    """The chat history sent with every Chat Completions request."""

    def __init__(self, instructions: str) -> None:
        self._entries: list[_Entry] = [_Entry({"role": "system", "content": instructions})]
        self._tool_outputs: dict[str, str] = {}
        self._replies: dict[str, ReplyState] = {}

    # -- replies --

    def track(self, reply: ReplyState) -> None:
        self._replies[reply.item_id] = reply
        while len(self._replies) > KEEP_REPLIES:
            del self._replies[next(iter(self._replies))]

    def reply(self, item_id: str) -> ReplyState | None:
        return self._replies.get(item_id)

    # -- history --

    def add_user(self, text: str) -> None:
        self._entries.append(_Entry({"role": "user", "content": text}))

    def add_system(self, text: str) -> None:
        self._entries.append(_Entry({"role": "system", "content": text}))

    def add_assistant(
        self, item_id: str | None, text: str, tool_calls: Sequence[ToolCallRequest] = ()
    ) -> None:
        if not text and not tool_calls:
            return
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.call_id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in tool_calls
            ]
        self._entries.append(_Entry(message, item_id))

    def has_assistant(self, item_id: str) -> bool:
        return any(e.item_id == item_id for e in self._entries)

    def set_assistant_text(self, item_id: str, text: str) -> bool:
        """Replace what reply ``item_id`` said; ``False`` if it is not in the history."""
        for entry in self._entries:
            if entry.item_id == item_id:
                if not text and "tool_calls" not in entry.message:
                    self._entries.remove(entry)
                else:
                    entry.message["content"] = text or None
                return True
        return False

    def interrupted(self, item_id: str, said: str) -> None:
        """Reply ``item_id`` was cut off after ``said``: record that, marked as interrupted."""
        text = f"{said}{INTERRUPTED_MARK}" if said else ""
        if not self.set_assistant_text(item_id, text) and text:
            self._entries.append(_Entry({"role": "assistant", "content": text}, item_id))

    def truncate(self, item_id: str, played_ms: int) -> bool:
        """The caller heard ``played_ms`` of reply ``item_id``: keep only those words."""
        reply = self._replies.get(item_id)
        if reply is None or not reply.words:
            return False
        heard = reply.heard_text(played_ms)
        if heard == reply.received_text() and reply.tts_done and not reply.cancelled:
            return False  # everything was heard
        self.interrupted(item_id, heard)
        return True

    def set_tool_output(self, call_id: str, output: str) -> None:
        self._tool_outputs[call_id] = output

    def waiting_for_tools(self) -> bool:
        """Some tool call of the history has no result yet."""
        return any(call_id not in self._tool_outputs for call_id in self._call_ids())

    def knows_call(self, call_id: str) -> bool:
        return call_id in self._call_ids()

    def _call_ids(self) -> list[str]:
        return [
            str(call["id"])
            for entry in self._entries
            for call in entry.message.get("tool_calls") or ()
        ]

    def messages(self, instruction: str | None = None) -> list[dict[str, Any]]:
        """The request's ``messages``; every tool call is answered (pending if need be)."""
        out: list[dict[str, Any]] = []
        for entry in self._entries:
            out.append(dict(entry.message))
            for call in entry.message.get("tool_calls") or ():
                call_id = str(call["id"])
                output = self._tool_outputs.get(call_id, PENDING_TOOL_OUTPUT)
                out.append({"role": "tool", "tool_call_id": call_id, "content": output})
        if instruction:
            out.append({"role": "system", "name": INSTRUCTION_NAME, "content": instruction})
        return out
