"""Chooses and builds the AI side of each call: a provider session, or the AUDIO_FILE player."""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp

from sip4ai.audiofile import AudioClip, AudioFileConversation, read_wav
from sip4ai.bridge import AIConversation
from sip4ai.calls import CallRecord, Direction
from sip4ai.config import Config
from sip4ai.failover import LastResort, ProviderOption, apology, audio_file
from sip4ai.functions import FunctionRunner, functions_from_request, merge_functions
from sip4ai.holdaudio import HoldAudio
from sip4ai.manager import CallHandle, Conversation, ConversationFactory
from sip4ai.metrics import AudioMetrics, Metrics
from sip4ai.providers import available, create_session
from sip4ai.providers.base import ProviderSession, SessionSettings, Tool


logger = logging.getLogger(__name__)

INBOUND_GREETING = "Greet the caller briefly and ask how you can help."
TAKEOVER_GREETING = (
    "Tell the caller in one short sentence that you are back, then continue where the "
    "conversation left off."
)


def provider_greeting(config: Config, provider: str) -> str | None:
    section = getattr(config, provider)
    greeting = getattr(section, "greeting", None) or getattr(section, "first_message", None)
    return greeting if isinstance(greeting, str) else None


def provider_instructions(config: Config, provider: str) -> str:
    section = getattr(config, provider)
    for name in ("instructions", "system_prompt"):
        value = getattr(section, name, None)
        if isinstance(value, str) and value:
            return value
    return config.openai.instructions


def settings_for(
    config: Config,
    record: CallRecord,
    tools: tuple[Tool, ...] = (),
    *,
    provider: str | None = None,
    takeover: bool = False,
) -> SessionSettings:
    """The provider settings for one call: config, plus the API request's task and instructions.

    ``takeover``: ``provider`` continues a call another provider was serving (failover); it is
    told what has been said so far and greets the caller accordingly.
    """
    provider = provider or record.provider
    parts = [provider_instructions(config, provider)]
    task = record.task
    if task is None and record.direction is Direction.OUTBOUND:
        task = config.outbound.task_description
    if task:
        parts.append(f"You placed this call. Your task: {task}")
    if record.instructions:
        parts.append(record.instructions)
    if takeover:
        said = "\n".join(
            f"{'Caller' if entry.speaker == 'user' else 'You'}: {entry.text}"
            for entry in record.transcript
        )
        parts.append(
            "This call is already in progress: the assistant serving it was disconnected and "
            "you take over." + (f" The conversation so far:\n{said}" if said else "")
        )
        return SessionSettings(
            instructions="\n\n".join(parts), greeting=TAKEOVER_GREETING, tools=tools
        )
    greeting = provider_greeting(config, provider)
    if greeting:
        opener = f"Start the conversation by saying: {greeting}"
    elif record.direction is Direction.INBOUND:
        opener = INBOUND_GREETING
    else:
        opener = "The callee answered. Introduce yourself briefly and start on your task."
    return SessionSettings(instructions="\n\n".join(parts), greeting=opener, tools=tools)


def function_runner(
    config: Config, handle: CallHandle, http: aiohttp.ClientSession
) -> FunctionRunner:
    record = handle.record
    secret = config.webhooks.secret
    return FunctionRunner(
        call_id=record.id,
        functions=merge_functions(config.functions, functions_from_request(record.functions)),
        control=handle,
        session=http,
        secret=secret.reveal() if secret else None,
        task_call=record.direction is Direction.OUTBOUND and bool(record.task),
    )


def usable_fallbacks(config: Config, primary: str) -> list[str]:
    """``fallback_providers`` that can serve calls in this build and configuration."""
    usable: list[str] = []
    for name in config.fallback_providers:
        missing = config.provider_configured(name)
        if name == primary or name in usable:
            continue
        if not available(name) or missing is not None:
            logger.warning("! fallback provider %s is not usable: %s", name, missing or "no build")
            continue
        usable.append(name)
    return usable


def last_resort(config: Config) -> LastResort:
    if config.fallback_audio_file is not None:
        return audio_file(config.fallback_audio_file, loop=config.audio_file_loop)
    return apology()


def make_conversation_factory(
    config: Config,
    *,
    http: Callable[[], aiohttp.ClientSession | None] = lambda: None,
    hold_audio: Callable[[], HoldAudio | None] = lambda: None,
    metrics: Metrics | None = None,
) -> ConversationFactory | None:
    """None when calls cannot be served at all (no provider key and no AUDIO_FILE)."""
    if config.audio_file is not None:
        clip = AudioClip(*read_wav(config.audio_file))
        clip.frames(8000)  # G.711 calls: resample at start-up, not on a call's first tick
        logger.info("= AUDIO_FILE mode: playing %s to every caller", config.audio_file)

        def audio_file(handle: CallHandle) -> Conversation:
            return AudioFileConversation(clip, loop=config.audio_file_loop)

        return audio_file
    if not available(config.provider):
        logger.error("! provider %s is not available in this build", config.provider)
        return None
    missing = config.provider_configured(config.provider)
    if missing is not None:
        logger.warning(
            "! provider %s needs %s (and no AUDIO_FILE is set): calls are rejected",
            config.provider,
            missing,
        )
        return None

    resort = last_resort(config)
    fallbacks = usable_fallbacks(config, config.provider)

    def ai(handle: CallHandle) -> Conversation:
        record = handle.record
        client = http()
        runner = function_runner(config, handle, client) if client is not None else None
        tools = runner.tools if runner is not None else ()

        def session() -> ProviderSession:
            return create_session(record.provider, config, settings_for(config, record, tools))

        def takeover(name: str) -> ProviderOption:
            def start() -> ProviderSession:
                settings = settings_for(config, handle.record, tools, provider=name, takeover=True)
                return create_session(name, config, settings)

            return ProviderOption(name, start)

        audio_metrics = AudioMetrics(metrics, record.provider) if metrics is not None else None
        return AIConversation(
            handle,
            session,
            functions=runner,
            hold_audio=hold_audio(),
            metrics=audio_metrics,
            fallbacks=[takeover(name) for name in fallbacks if name != record.provider],
            last_resort=resort,
            resume=takeover,
        )

    return ai
