"""Provider registry: config name -> session constructor. No import-time side effects."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sip4ai.config import Config
from sip4ai.providers.base import ProviderSession, SessionSettings
from sip4ai.providers.cartesia import CartesiaPipelineSession
from sip4ai.providers.deepgram_agent import DeepgramAgentSession
from sip4ai.providers.elevenlabs import ElevenLabsSession
from sip4ai.providers.gemini import GeminiLiveSession
from sip4ai.providers.openai_realtime import OpenAIRealtimeSession


SessionConstructor = Callable[[Config, SessionSettings], ProviderSession]


def _openai(config: Config, settings: SessionSettings) -> ProviderSession:
    return OpenAIRealtimeSession(config.openai, settings)


REGISTRY: Mapping[str, SessionConstructor] = {
    "openai": _openai,
    "cartesia": lambda config, settings: CartesiaPipelineSession(config, settings),
    "elevenlabs": lambda config, settings: ElevenLabsSession(config.elevenlabs, settings),
    "deepgram": lambda config, settings: DeepgramAgentSession(config.deepgram, settings),
    "gemini": lambda config, settings: GeminiLiveSession(config.gemini, settings),
}


def available(name: str) -> bool:
    return name in REGISTRY


def create_session(name: str, config: Config, settings: SessionSettings) -> ProviderSession:
    try:
        constructor = REGISTRY[name]
    except KeyError:
        raise ValueError(f"provider {name!r} is not available in this build") from None
    return constructor(config, settings)
