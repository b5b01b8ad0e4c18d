"""What every voice AI provider looks like to the audio bridge.

A provider session is one websocket conversation for one call. The bridge talks to it only
through this interface and branches on ``Capabilities`` (data), never on the provider's class.
Audio handed to ``send_audio`` is in ``capabilities.input_format``; ``AudioOut`` events carry
audio in ``capabilities.output_format``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sip4ai.audio.formats import AudioFormat


@dataclass(frozen=True, slots=True)
class Capabilities:
    input_format: AudioFormat
    """The audio the provider accepts from the caller."""
    output_format: AudioFormat
    """The audio the provider sends back."""
    server_vad: bool
    """The provider detects the caller's speech and signals barge-in itself."""
    truncation: bool
    """The provider can be told how much of an interrupted reply was actually heard."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the AI may call: name, description and JSON-schema parameters."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What a call asks of its provider session (built per call from config + API request)."""

    instructions: str
    greeting: str | None = None
    """Said as soon as the session is ready (inbound greeting or outbound opener)."""
    tools: tuple[Tool, ...] = ()


# ---- events a session emits (in order) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The session is configured; audio may flow."""


@dataclass(frozen=True, slots=True)
class AudioOut:
    audio: bytes
    item_id: str
    """The reply this audio belongs to (for truncation after barge-in)."""


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started speaking (barge-in): stop playing the current reply now."""


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The caller stopped speaking; the provider is about to answer."""


@dataclass(frozen=True, slots=True)
class Transcript:
    speaker: Literal["ai", "user"]
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str
    """The raw JSON text the model produced (validated by the caller, not here)."""


@dataclass(frozen=True, slots=True)
class ReplyDone:
    """A reply finished (completed, cancelled by barge-in, or failed)."""

    status: str
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class Closed:
    """The session ended. ``retryable``: a new session could continue the call."""

    reason: str
    retryable: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)


ProviderEvent = (
    Ready | AudioOut | SpeechStarted | SpeechStopped | Transcript | ToolCall | ReplyDone | Closed
)


class ProviderSession(Protocol):
    """One call's conversation with a provider. Constructing it does no I/O."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def run(self) -> None:
        """Connect, configure, and serve until closed. Emits Closed last; raises nothing else."""
        ...

    def events(self) -> AsyncIterator[ProviderEvent]: ...

    def send_audio(self, audio: bytes) -> None:
        """Queue caller audio (never blocks; drops and counts if the link is backed up)."""
        ...

    def truncate(self, item_id: str, played_ms: int) -> None:
        """After barge-in: the caller heard only ``played_ms`` of reply ``item_id``."""
        ...

    def cancel_reply(self) -> None:
        """Stop the reply being generated (when the provider does not do it itself)."""
        ...

    def inject(self, message: str, role: str) -> None:
        """Add context (role ``system`` or ``user``) and let the AI respond to it."""
        ...

    def say(self, instructions: str) -> None:
        """Make the AI speak now, following ``instructions`` (greeting, goodbye)."""
        ...

    def tool_result(self, call_id: str, output: str) -> None:
        """Return a function's result (JSON text) and let the AI continue."""
        ...

    async def aclose(self) -> None:
        """Close the connection (bounded). Idempotent."""
        ...
