"""Configuration: frozen dataclasses, loaded and validated once at start-up.

Precedence: defaults < config file (CONFIG_FILE, default ``config.json``) < environment variables.
The file is JSON with ``//`` and ``/* */`` comments and trailing commas (parsed with json5).
Any bad value raises ConfigError naming the field path and where the value came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import json5

from sip4ai.configread import DEFAULT, Secret, Section
from sip4ai.errors import ConfigError


__all__ = ["Config", "Secret", "load"]

PROVIDERS = ("openai", "elevenlabs", "gemini", "deepgram", "cartesia")
Provider = Literal["openai", "elevenlabs", "gemini", "deepgram", "cartesia"]
Transport = Literal["udp", "tcp", "tls"]
SipEngineName = Literal["baresip", "pjsua2"]
Mode = Literal["inbound", "outbound"]

E164_PATTERN = r"\+[1-9][0-9]{1,14}"
HOSTPORT_PATTERN = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(:[0-9]{1,5})?"
URL_PATTERN = r"(https?|wss?)://\S+"
HTTP_URL_PATTERN = r"https?://\S+"


@dataclass(frozen=True, slots=True)
class TurnDetection:
    type: Literal["server_vad", "semantic_vad", "none"] = "server_vad"
    threshold: float = 0.5
    """VAD activation threshold, 0.0-1.0."""
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    api_key: Secret | None = None
    instructions: str = "You are a helpful voice assistant on a phone call. Keep answers short."
    voice: str = "alloy"
    greeting: str | None = None
    model: str = "gpt-realtime"
    turn_detection: TurnDetection = TurnDetection()
    base_url: str = "wss://api.openai.com/v1/realtime"


@dataclass(frozen=True, slots=True)
class ElevenLabsConfig:
    api_key: Secret | None = None
    agent_id: str | None = None
    first_message: str | None = None
    system_prompt: str | None = None
    base_url: str = "wss://api.elevenlabs.io/v1/convai/conversation"


@dataclass(frozen=True, slots=True)
class GeminiConfig:
    api_key: Secret | None = None
    model: str = "models/gemini-2.0-flash-exp"
    voice: str = "Puck"
    greeting: str | None = None
    """Also accepted as ``first_message``."""
    system_prompt: str | None = None
    base_url: str = (
        "wss://generativelanguage.googleapis.com/ws/"
        "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    )


@dataclass(frozen=True, slots=True)
class DeepgramConfig:
    api_key: Secret | None = None
    model: str = "aura-2-thalia-en"
    """The speak (TTS) model."""
    listen_model: str = "nova-3"
    think_provider: str = "open_ai"
    think_model: str = "gpt-4o-mini"
    greeting: str | None = None
    base_url: str = "wss://agent.deepgram.com/v1/agent/converse"
    stt_base_url: str = "wss://api.deepgram.com/v1/listen"
    """Streaming STT endpoint, used by the Cartesia pipeline."""


@dataclass(frozen=True, slots=True)
class CartesiaConfig:
    api_key: Secret | None = None
    voice_id: str | None = None
    stt_provider: Literal["deepgram"] = "deepgram"
    llm_provider: Literal["openai"] = "openai"
    llm_model: str = "gpt-4o-mini"
    greeting: str | None = None
    base_url: str = "wss://api.cartesia.ai/tts/websocket"
    llm_base_url: str = "https://api.openai.com/v1"


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    target_number: str | None = None
    caller_id: str | None = None
    task_description: str | None = None
    result_webhook: str | None = None
    hangup_on_task_complete: bool = True


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    name: str
    description: str = ""
    type: Literal["webhook", "transfer"] = "webhook"
    webhook: str | None = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    hold_audio_url: str | None = None
    target: str | None = None
    """Transfer destination (E.164 number or SIP URI) for ``type: transfer``."""
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class SipConfig:
    engine: SipEngineName = "baresip"
    """SIP backend: ``baresip`` (default) or ``pjsua2`` (extra ``sip4ai[pjsua2]``; at most 4
    simultaneous calls per process, Linux x86_64 and Python <= 3.12 only)."""
    username: str | None = None
    password: Secret | None = None
    domain: str | None = None
    server: str | None = None
    """Registrar ``host[:port]``."""
    auth_id: str | None = None
    outbound_proxy: str | None = None
    transport: Transport = "udp"
    listen: str = "0.0.0.0:5060"
    """Local SIP ``host:port``; set explicitly, never left to the library's default."""
    rtp_port_min: int = 20000
    rtp_port_max: int = 21999
    force_rtp_port: int | None = None
    """DEBUG_FORCE_PORT: every call uses this one RTP port (debugging only)."""
    max_calls: int = 100
    answer_timeout_s: float = 5.0
    """Longest wait for the AI side before answering an inbound call anyway."""
    register_expires_s: int = 300
    trusted_sources: tuple[str, ...] = ()
    """Trunk/IP mode: addresses allowed to send INVITEs without registration."""
    p_asserted_identity: bool = False
    codecs: tuple[str, ...] = ("pcmu", "pcma")
    jitter_buffer_ms: int = 0
    """0: no jitter buffer, each RTP packet is decoded on arrival (lowest latency, no frame loss
    under load). 40-1000: a receive thread per call with an adaptive 20..N ms jitter buffer
    (reorders and conceals loss on bad networks, at 25-50 % more CPU and ~20 ms more latency)."""
    rtp_timeout_s: int = 60
    """End a call (cause media_timeout) after this long without RTP from a peer that should be
    sending; 0 = never."""
    tls_ca_file: str | None = None
    """CA bundle for SIP over TLS; default: the system bundle."""
    tls_verify_server: bool = True
    """Verify the TLS server certificate (turn off only for test setups with self-signed certs)."""

    @property
    def configured(self) -> bool:
        """SIP credentials present: register (or, with trusted_sources only, trunk mode)."""
        return bool(self.username and self.password and (self.server or self.domain))

    @property
    def enabled(self) -> bool:
        return self.configured or bool(self.trusted_sources)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    event_webhook: str | None = None
    """Default lifecycle webhook URL when a call has none of its own."""
    secret: Secret | None = None
    """HMAC-SHA256 key for function and event webhook signatures."""
    timeout_s: float = 10.0
    initial_backoff_s: float = 1.0
    """Delay before the first retry of an event; it doubles per failure (plus jitter)."""
    max_backoff_s: float = 300.0
    """Longest delay between two attempts of one event."""
    max_attempts: int = 50
    max_age_s: float = 86400.0
    """An event still undelivered this long after it happened is given up (logged, counted)."""


@dataclass(frozen=True, slots=True)
class Config:
    mode: Mode = "inbound"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_token: Secret | None = None
    provider: Provider = "openai"
    fallback_providers: tuple[Provider, ...] = ()
    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    audio_file: Path | None = None
    audio_file_loop: bool = True
    fallback_audio_file: Path | None = None
    """Played (like AUDIO_FILE) when the provider and every fallback provider have failed."""
    max_duration_seconds: int = 300
    sip: SipConfig = SipConfig()
    openai: OpenAIConfig = OpenAIConfig()
    elevenlabs: ElevenLabsConfig = ElevenLabsConfig()
    gemini: GeminiConfig = GeminiConfig()
    deepgram: DeepgramConfig = DeepgramConfig()
    cartesia: CartesiaConfig = CartesiaConfig()
    outbound: OutboundConfig = OutboundConfig()
    functions: tuple[FunctionConfig, ...] = ()
    webhooks: WebhookConfig = WebhookConfig()
    config_file: Path | None = None
    """The file that was read, if any."""

    def provider_key(self, name: str) -> Secret | None:
        section = getattr(self, name)
        key: Secret | None = section.api_key
        return key

    def provider_configured(self, name: str) -> str | None:
        """None when ``name`` can serve calls; else what is missing, for a log line."""
        if name == "elevenlabs":
            # A public agent needs no key; a private one is reached through a signed URL.
            return None if self.elevenlabs.agent_id else "elevenlabs.agent_id"
        if name == "cartesia":
            for section in ("cartesia", "deepgram", "openai"):
                if self.provider_key(section) is None:
                    return f"{section}.api_key (the Cartesia pipeline uses it)"
            return None
        return None if self.provider_key(name) is not None else f"{name}.api_key"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """systemd StateDirectory as a service; /var/lib/sip4ai when installed; else ./data."""
    state = environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    installed = Path("/var/lib/sip4ai")
    if installed.is_dir() and os.access(installed, os.W_OK):
        return installed
    return Path("data")


def read_file(path: Path) -> Mapping[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("CONFIG_FILE", source, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("CONFIG_FILE", source, "not UTF-8 text") from None
    try:
        data = json5.loads(text)
    except ValueError as exc:
        raise ConfigError("CONFIG_FILE", source, f"not valid JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError("CONFIG_FILE", source, "the top level must be an object")
    return data


def load(path: Path | None, environ: Mapping[str, str]) -> Config:
    """Build the effective Config from an optional file and the environment."""
    explicit = path is not None or bool(environ.get("CONFIG_FILE"))
    file_path = path or Path(environ.get("CONFIG_FILE") or "config.json")
    data: Mapping[str, Any] = {}
    used_file: Path | None = None
    if file_path.exists() or explicit:
        data = read_file(file_path)
        used_file = file_path
    # Imported here: the section parsers import this module's dataclasses.
    from sip4ai.configparse import parse_config

    return parse_config(Section(data, "", str(file_path), environ), environ, used_file)


__all__ += ["DEFAULT", "ConfigError"]
