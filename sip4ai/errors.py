"""Exception hierarchy. Every error sip4ai raises on purpose derives from Sip4aiError."""

from __future__ import annotations


class Sip4aiError(Exception):
    """Base class for sip4ai's own errors."""


class ConfigError(Sip4aiError):
    """A configuration value is missing or invalid.

    ``field`` is the dotted path (``openai.turn_detection.threshold``) and ``source`` says where
    the value came from (``config.json``, ``env SIP_TRANSPORT`` or ``default``).
    """

    def __init__(self, field: str, source: str, message: str) -> None:
        super().__init__(f"{field}: {message} (from {source})")
        self.field = field
        self.source = source
        self.message = message


class CallError(Sip4aiError):
    """A call operation is not possible (unknown call, wrong state, engine refused)."""


class CallNotFound(CallError):
    """No call with that id exists."""


class CallStateError(CallError):
    """The call exists but is not in a state that allows the operation (e.g. inject after end)."""


class InvalidTransition(CallStateError):
    """A call state change that the transition table does not allow."""


class SipUnavailable(CallError):
    """The SIP side is not configured or not running, so no call can be placed."""


class AIUnavailable(CallError):
    """No AI side can serve calls: the provider has no API key and no AUDIO_FILE is set."""


class ProviderError(Sip4aiError):
    """A voice AI provider failed. ``retryable`` tells whether reconnecting may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ProviderProtocolError(ProviderError):
    """The provider sent something that does not follow its protocol (payload never included)."""

    def __init__(self, message: str, *, event_type: str | None = None) -> None:
        super().__init__(message, retryable=False)
        self.event_type = event_type
