"""Turn a raw config Section plus the environment into the typed Config (see config.py)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import jsonschema

from sip4ai.config import (
    E164_PATTERN,
    HOSTPORT_PATTERN,
    HTTP_URL_PATTERN,
    PROVIDERS,
    URL_PATTERN,
    CartesiaConfig,
    Config,
    DeepgramConfig,
    ElevenLabsConfig,
    FunctionConfig,
    GeminiConfig,
    OpenAIConfig,
    OutboundConfig,
    SipConfig,
    TurnDetection,
    WebhookConfig,
    default_data_dir,
)
from sip4ai.configread import Section
from sip4ai.errors import ConfigError


FUNCTION_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]{0,63}"
RESERVED_FUNCTIONS = ("end_call", "send_dtmf", "report_result")


def parse_config(root: Section, environ: Mapping[str, str], used_file: Path | None) -> Config:
    mode = root.required_str("mode", "inbound", choices=("inbound", "outbound"))
    api_port = root.int_("api_port", 8080, env=("API_PORT",), minimum=0, maximum=65535)
    provider = root.required_str("provider", "openai", choices=PROVIDERS)
    fallback: list[str] = []
    for index, name in enumerate(root.list_("fallback_providers")):
        if name not in PROVIDERS:
            raise ConfigError(f"fallback_providers[{index}]", root.source, "unknown provider")
        fallback.append(name)
    data_dir = root.str_("data_dir", None, env=("SIP4AI_DATA_DIR",))
    audio_file = root.str_("audio_file", None, env=("AUDIO_FILE",))
    fallback_audio_file = root.str_("fallback_audio_file", None)
    config = Config(
        mode=cast(Any, mode),
        api_host=root.required_str("api_host", "127.0.0.1", env=("API_HOST",)),
        api_port=api_port,
        api_token=root.secret("api_token", env=("SIP4AI_API_TOKEN",)),
        provider=cast(Any, provider),
        fallback_providers=cast(Any, tuple(fallback)),
        data_dir=Path(data_dir) if data_dir else default_data_dir(environ),
        log_level=cast(
            Any,
            root.required_str(
                "log_level",
                "INFO",
                env=("SIP4AI_LOG_LEVEL",),
                choices=("DEBUG", "INFO", "WARNING", "ERROR"),
            ),
        ),
        audio_file=Path(audio_file) if audio_file else None,
        audio_file_loop=root.bool_("audio_file_loop", True),
        fallback_audio_file=Path(fallback_audio_file) if fallback_audio_file else None,
        max_duration_seconds=root.int_("max_duration_seconds", 300, minimum=10, maximum=86400),
        sip=_sip(root.section("sip"), environ),
        openai=_openai(root.section("openai")),
        elevenlabs=_elevenlabs(root.section("elevenlabs")),
        gemini=_gemini(root.section("gemini")),
        deepgram=_deepgram(root.section("deepgram")),
        cartesia=_cartesia(root.section("cartesia")),
        outbound=_outbound(root.section("outbound")),
        functions=_functions(root),
        webhooks=_webhooks(root.section("webhooks")),
        config_file=used_file,
    )
    root.finish()
    if config.mode == "outbound" and config.sip.enabled and not config.outbound.target_number:
        raise ConfigError("outbound.target_number", root.source, "required in outbound mode")
    if config.audio_file is not None and not config.audio_file.is_file():
        src = "env AUDIO_FILE" if environ.get("AUDIO_FILE") else root.source
        raise ConfigError("audio_file", src, f"{config.audio_file} is not a readable file")
    fallback_file = config.fallback_audio_file
    if fallback_file is not None and not fallback_file.is_file():
        raise ConfigError(
            "fallback_audio_file", root.source, f"{fallback_file} is not a readable file"
        )
    return config


def _sip(s: Section, environ: Mapping[str, str]) -> SipConfig:
    rtp_min = s.int_("rtp_port_min", 20000, minimum=1024, maximum=65534)
    rtp_max = s.int_("rtp_port_max", 21999, minimum=1025, maximum=65535)
    if rtp_max <= rtp_min:
        raise s.error("rtp_port_max", s.source, "must be greater than sip.rtp_port_min")
    trusted = s.list_("trusted_sources")
    for index, value in enumerate(trusted):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{s.field('trusted_sources')}[{index}]", s.source, "not an address")
    jitter_ms = s.int_(
        "jitter_buffer_ms", 0, env=("SIP_JITTER_BUFFER_MS",), minimum=0, maximum=1000
    )
    if 0 < jitter_ms < 40:
        raise s.error("jitter_buffer_ms", s.source, "must be 0 (off) or at least 40")
    codecs = s.list_("codecs") or ["pcmu", "pcma"]
    for index, codec in enumerate(codecs):
        if codec not in ("pcmu", "pcma", "g722"):
            raise ConfigError(f"{s.field('codecs')}[{index}]", s.source, "unsupported codec")
    result = SipConfig(
        engine=cast(
            Any,
            s.required_str(
                "engine",
                "baresip",
                env=("SIP_ENGINE",),
                choices=("baresip", "pjsua2"),
                fold_case="lower",
            ),
        ),
        username=s.str_("username", None, env=("SIP_USERNAME",)),
        password=s.secret("password", env=("SIP_PASSWORD",)),
        domain=s.str_("domain", None, env=("SIP_DOMAIN",), pattern=HOSTPORT_PATTERN),
        server=s.str_("server", None, env=("SIP_SERVER",), pattern=HOSTPORT_PATTERN),
        auth_id=s.str_("auth_id", None, env=("SIP_AUTH_ID",)),
        outbound_proxy=s.str_(
            "outbound_proxy", None, env=("SIP_OUTBOUND_PROXY",), pattern=HOSTPORT_PATTERN
        ),
        transport=cast(
            Any,
            s.required_str(
                "transport",
                "udp",
                env=("SIP_TRANSPORT",),
                choices=("udp", "tcp", "tls"),
                fold_case="lower",
            ),
        ),
        listen=s.required_str(
            "listen", "0.0.0.0:5060", env=("SIP_LISTEN",), pattern=HOSTPORT_PATTERN
        ),
        rtp_port_min=rtp_min,
        rtp_port_max=rtp_max,
        force_rtp_port=s.optional_int(
            "force_rtp_port", env=("DEBUG_FORCE_PORT",), minimum=1024, maximum=65535
        ),
        max_calls=s.int_("max_calls", 100, minimum=1, maximum=250),
        answer_timeout_s=s.float_("answer_timeout_s", 5.0, minimum=0.0, maximum=60.0),
        register_expires_s=s.int_("register_expires_s", 300, minimum=30, maximum=86400),
        trusted_sources=tuple(trusted),
        p_asserted_identity=s.bool_("p_asserted_identity", False),
        codecs=tuple(codecs),
        jitter_buffer_ms=jitter_ms,
        rtp_timeout_s=s.int_(
            "rtp_timeout_s", 60, env=("SIP_RTP_TIMEOUT",), minimum=0, maximum=3600
        ),
        tls_ca_file=s.str_("tls_ca_file", None, env=("SIP_TLS_CA_FILE",)),
        tls_verify_server=s.bool_("tls_verify_server", True, env=("SIP_TLS_VERIFY",)),
    )
    s.finish()
    if result.engine == "pjsua2" and importlib.util.find_spec("pjsua2") is None:
        src = "env SIP_ENGINE" if environ.get("SIP_ENGINE") else s.source
        raise ConfigError(
            s.field("engine"),
            src,
            "pjsua2 needs the pjsua2-python wheel: pip install 'sip4ai[pjsua2]' (Linux x86_64, "
            "Python <= 3.12), or a binary built with SIP4AI_WITH_PJSUA2=1",
        )
    if result.password is not None:
        # baresip carries the password in a quoted account parameter without escapes.
        if any(c in '"\\' or ord(c) < 0x20 for c in result.password.reveal()):
            src = "env SIP_PASSWORD" if environ.get("SIP_PASSWORD") else s.source
            raise ConfigError(
                s.field("password"),
                src,
                "must not contain quotes, backslashes or control characters",
            )
    return result


def _turn_detection(s: Section) -> TurnDetection:
    result = TurnDetection(
        type=cast(
            Any,
            s.required_str("type", "server_vad", choices=("server_vad", "semantic_vad", "none")),
        ),
        threshold=s.float_("threshold", 0.5, minimum=0.0, maximum=1.0),
        prefix_padding_ms=s.int_("prefix_padding_ms", 300, minimum=0, maximum=5000),
        silence_duration_ms=s.int_("silence_duration_ms", 500, minimum=0, maximum=10000),
    )
    s.finish()
    return result


def _openai(s: Section) -> OpenAIConfig:
    d = OpenAIConfig()
    result = OpenAIConfig(
        api_key=s.secret("api_key", env=("OPENAI_API_KEY",)),
        instructions=s.required_str("instructions", d.instructions),
        voice=s.required_str("voice", d.voice),
        greeting=s.str_("greeting", None),
        model=s.required_str("model", d.model),
        turn_detection=_turn_detection(s.section("turn_detection")),
        base_url=s.required_str("base_url", d.base_url, pattern=URL_PATTERN),
    )
    s.finish()
    return result


def _elevenlabs(s: Section) -> ElevenLabsConfig:
    d = ElevenLabsConfig()
    result = ElevenLabsConfig(
        api_key=s.secret("api_key", env=("ELEVEN_LABS_API_KEY", "ELEVENLABS_API_KEY")),
        agent_id=s.str_("agent_id", None),
        first_message=s.str_("first_message", None),
        system_prompt=s.str_("system_prompt", None),
        base_url=s.required_str("base_url", d.base_url, pattern=URL_PATTERN),
    )
    s.finish()
    return result


def _gemini(s: Section) -> GeminiConfig:
    d = GeminiConfig()
    greeting_key = s.alias("greeting", "first_message")
    result = GeminiConfig(
        api_key=s.secret("api_key", env=("GEMINI_API_KEY", "GOOGLE_API_KEY")),
        model=s.required_str("model", d.model),
        voice=s.required_str("voice", d.voice),
        greeting=s.str_(greeting_key, None),
        system_prompt=s.str_("system_prompt", None),
        base_url=s.required_str("base_url", d.base_url, pattern=URL_PATTERN),
    )
    s.finish()
    return result


def _deepgram(s: Section) -> DeepgramConfig:
    d = DeepgramConfig()
    result = DeepgramConfig(
        api_key=s.secret("api_key", env=("DEEPGRAM_API_KEY",)),
        model=s.required_str("model", d.model),
        listen_model=s.required_str("listen_model", d.listen_model),
        think_provider=s.required_str("think_provider", d.think_provider),
        think_model=s.required_str("think_model", d.think_model),
        greeting=s.str_("greeting", None),
        base_url=s.required_str("base_url", d.base_url, pattern=URL_PATTERN),
        stt_base_url=s.required_str("stt_base_url", d.stt_base_url, pattern=URL_PATTERN),
    )
    s.finish()
    return result


def _cartesia(s: Section) -> CartesiaConfig:
    d = CartesiaConfig()
    result = CartesiaConfig(
        api_key=s.secret("api_key", env=("CARTESIA_API_KEY", "CARTESIA_KEY")),
        voice_id=s.str_("voice_id", None),
        stt_provider=cast(Any, s.required_str("stt_provider", "deepgram", choices=("deepgram",))),
        llm_provider=cast(Any, s.required_str("llm_provider", "openai", choices=("openai",))),
        llm_model=s.required_str("llm_model", d.llm_model),
        greeting=s.str_("greeting", None),
        base_url=s.required_str("base_url", d.base_url, pattern=URL_PATTERN),
        llm_base_url=s.required_str("llm_base_url", d.llm_base_url, pattern=HTTP_URL_PATTERN),
    )
    s.finish()
    return result


def _outbound(s: Section) -> OutboundConfig:
    result = OutboundConfig(
        target_number=s.str_("target_number", None, pattern=E164_PATTERN),
        caller_id=s.str_("caller_id", None),
        task_description=s.str_("task_description", None),
        result_webhook=s.str_("result_webhook", None, pattern=HTTP_URL_PATTERN),
        hangup_on_task_complete=s.bool_("hangup_on_task_complete", True),
    )
    s.finish()
    return result


def _webhooks(s: Section) -> WebhookConfig:
    result = WebhookConfig(
        event_webhook=s.str_("event_webhook", None, pattern=HTTP_URL_PATTERN),
        secret=s.secret("secret", env=("SIP4AI_WEBHOOK_SECRET",)),
        timeout_s=s.float_("timeout_s", 10.0, minimum=0.1, maximum=120.0),
        initial_backoff_s=s.float_("initial_backoff_s", 1.0, minimum=0.05, maximum=3600.0),
        max_backoff_s=s.float_("max_backoff_s", 300.0, minimum=0.05, maximum=86400.0),
        max_attempts=s.int_("max_attempts", 50, minimum=1, maximum=10000),
        max_age_s=s.float_("max_age_s", 86400.0, minimum=60.0, maximum=30 * 86400.0),
    )
    s.finish()
    if result.max_backoff_s < result.initial_backoff_s:
        raise s.error("max_backoff_s", s.source, "must not be below webhooks.initial_backoff_s")
    return result


def _functions(root: Section) -> tuple[FunctionConfig, ...]:
    items = root.list_("functions")
    result = [parse_function(root.item("functions", index, raw)) for index, raw in enumerate(items)]
    names = [f.name for f in result]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise ConfigError(f"functions[{index}].name", root.source, "duplicate name")
    return tuple(result)


def parse_function(s: Section) -> FunctionConfig:
    """One function definition (config file or API request), validated."""
    name = s.str_("name", None, pattern=FUNCTION_NAME_PATTERN)
    if name is None:
        raise s.error("name", s.source, "required")
    if name in RESERVED_FUNCTIONS:
        raise s.error("name", s.source, f"{name!r} is a built-in tool name")
    kind = s.required_str("type", "webhook", choices=("webhook", "transfer"))
    webhook = s.str_("webhook", None, pattern=HTTP_URL_PATTERN)
    target = s.str_("target", None)
    if kind == "webhook" and webhook is None:
        raise s.error("webhook", s.source, "required for a webhook function")
    if kind == "transfer" and target is None:
        raise s.error("target", s.source, "required for a transfer function")
    parameters = s.mapping("parameters") or {"type": "object", "properties": {}}
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise s.error("parameters", s.source, f"not a JSON schema: {exc.message}") from None
    result = FunctionConfig(
        name=name,
        description=s.required_str("description", "", allow_empty=True),
        type=cast(Any, kind),
        webhook=webhook,
        method=cast(
            Any,
            s.required_str(
                "method",
                "POST",
                choices=("GET", "POST", "PUT", "PATCH", "DELETE"),
                fold_case="upper",
            ),
        ),
        parameters=parameters,
        hold_audio_url=s.str_("hold_audio_url", None, pattern=HTTP_URL_PATTERN),
        target=target,
        timeout_s=s.float_("timeout_s", 10.0, minimum=0.1, maximum=120.0),
    )
    s.finish()
    return result
