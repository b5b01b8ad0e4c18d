from __future__ import annotations

from pathlib import Path

import pytest

from sip4ai.config import Config, Secret, load
from sip4ai.errors import ConfigError


pytestmark = pytest.mark.unit

DOCS_EXAMPLE = """{
  "mode": "inbound",              // "inbound" or "outbound"
  "api_port": 8080,               // HTTP API port (0 to disable)
  "provider": "openai",           // AI provider to use
  "openai": {
    "instructions": "You are a helpful assistant...",
    "voice": "alloy",             // alloy, echo, fable, onyx, nova, shimmer
    "greeting": "Hello!"          // For outbound calls
  },
  "elevenlabs": {"agent_id": "your-agent-id", "first_message": "Hello!",
                 "system_prompt": "You are..."},
  "gemini": {"model": "models/gemini-2.0-flash-exp", "voice": "Puck", "greeting": "Hello!"},
  "deepgram": {"model": "aura-2-thalia-en", "listen_model": "nova-3",
               "think_provider": "open_ai", "think_model": "gpt-4o-mini"},
  "cartesia": {"voice_id": "your-voice-id", "stt_provider": "deepgram",
               "llm_provider": "openai", "llm_model": "gpt-4o-mini"},
  "outbound": {
    "target_number": "+1234567890",
    "caller_id": "+1987654321",
    "task_description": "Call to confirm appointment...",
    "result_webhook": "https://example.com/webhook",
    "hangup_on_task_complete": true
  },
  /* functions the AI may call */
  "functions": [
    {
      "name": "get_customer_info",
      "description": "Look up customer by phone",
      "webhook": "https://api.example.com/customer",
      "method": "POST",
      "parameters": {"type": "object", "properties": {"phone": { "type": "string" }}},
    },
  ],
}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


def error_of(path: Path | None, env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, env)
    return info.value


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load(None, {"CONFIG_FILE": ""} | {"SIP4AI_DATA_DIR": str(tmp_path)})
    assert config.mode == "inbound"
    assert config.api_host == "127.0.0.1"
    assert config.api_port == 8080
    assert config.provider == "openai"
    assert not config.sip.enabled
    assert config.config_file is None


def test_docs_example_with_comments_and_trailing_commas(tmp_path: Path) -> None:
    config = load(write(tmp_path, DOCS_EXAMPLE), {})
    assert config.openai.voice == "alloy"
    assert config.openai.greeting == "Hello!"
    assert config.elevenlabs.agent_id == "your-agent-id"
    assert config.gemini.voice == "Puck"
    assert config.deepgram.think_provider == "open_ai"
    assert config.cartesia.llm_model == "gpt-4o-mini"
    assert config.outbound.target_number == "+1234567890"
    assert config.outbound.hangup_on_task_complete is True
    (function,) = config.functions
    assert function.name == "get_customer_info"
    assert function.method == "POST"
    assert function.parameters["properties"] == {"phone": {"type": "string"}}


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '{"api_port": 9000, "sip": {"transport": "tcp"}}')
    env = {"API_PORT": "9100", "SIP_TRANSPORT": "TLS", "SIP_USERNAME": "bob"}
    config = load(path, env)
    assert config.api_port == 9100
    assert config.sip.transport == "tls"
    assert config.sip.username == "bob"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '{"provider": "gemini"}')
    assert load(None, {"CONFIG_FILE": str(path)}).provider == "gemini"


def test_every_documented_variable_is_read(tmp_path: Path) -> None:
    audio = tmp_path / "hold.wav"
    audio.write_bytes(b"RIFF")
    env = {
        "SIP_USERNAME": "aibot",
        "SIP_PASSWORD": "pw",
        "SIP_DOMAIN": "pbx.example.com",
        "SIP_SERVER": "pbx.example.com:5060",
        "SIP_AUTH_ID": "aibot-auth",
        "SIP_OUTBOUND_PROXY": "proxy.example.com:5096",
        "SIP_TRANSPORT": "tcp",
        "OPENAI_API_KEY": "sk-openai",
        "ELEVEN_LABS_API_KEY": "el-key",
        "GOOGLE_API_KEY": "g-key",
        "DEEPGRAM_API_KEY": "dg-key",
        "CARTESIA_KEY": "ca-key",
        "DEBUG_FORCE_PORT": "20002",
        "AUDIO_FILE": str(audio),
        "API_PORT": "0",
    }
    c = load(None, env)
    assert (c.sip.username, c.sip.domain, c.sip.server) == (
        "aibot",
        "pbx.example.com",
        "pbx.example.com:5060",
    )
    assert (c.sip.auth_id, c.sip.outbound_proxy, c.sip.transport) == (
        "aibot-auth",
        "proxy.example.com:5096",
        "tcp",
    )
    assert c.sip.password == Secret("pw")
    assert c.sip.enabled
    keys = [
        c.openai.api_key,
        c.elevenlabs.api_key,
        c.gemini.api_key,
        c.deepgram.api_key,
        c.cartesia.api_key,
    ]
    assert [k.reveal() if k else None for k in keys] == [
        "sk-openai",
        "el-key",
        "g-key",
        "dg-key",
        "ca-key",
    ]
    assert c.sip.force_rtp_port == 20002
    assert c.audio_file == audio
    assert c.api_port == 0


def test_primary_key_variable_wins_over_alias() -> None:
    c = load(
        None,
        {
            "GEMINI_API_KEY": "primary",
            "GOOGLE_API_KEY": "alias",
            "CARTESIA_API_KEY": "a",
            "CARTESIA_KEY": "b",
        },
    )
    assert c.gemini.api_key is not None and c.gemini.api_key.reveal() == "primary"
    assert c.cartesia.api_key is not None and c.cartesia.api_key.reveal() == "a"


def test_gemini_first_message_is_the_greeting(tmp_path: Path) -> None:
    c = load(write(tmp_path, '{"gemini": {"first_message": "Hi there"}}'), {})
    assert c.gemini.greeting == "Hi there"


@pytest.mark.parametrize(
    ("text", "env", "field", "source"),
    [
        ('{"mode": "sideways"}', {}, "mode", "config.json"),
        ('{"api_port": 70000}', {}, "api_port", "config.json"),
        ("{}", {"API_PORT": "eighty"}, "api_port", "env API_PORT"),
        ("{}", {"SIP_TRANSPORT": "sctp"}, "sip.transport", "env SIP_TRANSPORT"),
        (
            '{"openai": {"turn_detection": {"threshold": 1.5}}}',
            {},
            "openai.turn_detection.threshold",
            "config.json",
        ),
        ('{"openai": {"voise": "alloy"}}', {}, "openai.voise", "config.json"),
        ('{"provider": "skynet"}', {}, "provider", "config.json"),
        ('{"functions": [{"name": "x"}]}', {}, "functions[0].webhook", "config.json"),
        (
            '{"functions": [{"name": "t", "type": "transfer"}]}',
            {},
            "functions[0].target",
            "config.json",
        ),
        (
            '{"functions": [{"name": "f", "webhook": "https://a/b", "parameters": {"type": 5}}]}',
            {},
            "functions[0].parameters",
            "config.json",
        ),
        ('{"outbound": {"target_number": "12345"}}', {}, "outbound.target_number", "config.json"),
        ("{}", {"DEBUG_FORCE_PORT": "80"}, "sip.force_rtp_port", "env DEBUG_FORCE_PORT"),
        ('{"openai": {"base_url": "ftp://x"}}', {}, "openai.base_url", "config.json"),
        (
            '{"sip": {"rtp_port_min": 30000, "rtp_port_max": 20000}}',
            {},
            "sip.rtp_port_max",
            "config.json",
        ),
    ],
)
def test_bad_values_name_field_and_source(
    tmp_path: Path, text: str, env: dict[str, str], field: str, source: str
) -> None:
    error = error_of(write(tmp_path, text), env)
    assert error.field == field
    assert error.source.endswith(source)
    assert field in str(error)


def test_outbound_mode_needs_a_target(tmp_path: Path) -> None:
    env = {"SIP_USERNAME": "u", "SIP_PASSWORD": "p", "SIP_SERVER": "pbx"}
    error = error_of(write(tmp_path, '{"mode": "outbound"}'), env)
    assert error.field == "outbound.target_number"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    error = error_of(tmp_path / "nope.json", {})
    assert error.field == "CONFIG_FILE"
    assert "cannot read" in error.message


def test_malformed_json_is_an_error(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, '{"mode": '), {})
    assert error.field == "CONFIG_FILE"
    assert "not valid JSON" in error.message


def test_audio_file_must_exist() -> None:
    error = error_of(None, {"AUDIO_FILE": "/nonexistent/x.wav"})
    assert error.field == "audio_file"
    assert error.source == "env AUDIO_FILE"


def test_fallback_audio_file_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"fallback_audio_file": "/nonexistent/sorry.wav"}')
    error = error_of(path, {})
    assert error.field == "fallback_audio_file"


def test_which_providers_are_configured() -> None:
    c = load(None, {"OPENAI_API_KEY": "sk-1", "DEEPGRAM_API_KEY": "dg-1"})
    assert c.provider_configured("openai") is None
    assert c.provider_configured("gemini") == "gemini.api_key"
    assert c.provider_configured("deepgram") is None
    assert c.provider_configured("elevenlabs") == "elevenlabs.agent_id"
    missing = c.provider_configured("cartesia") or ""
    assert missing.startswith("cartesia.api_key")
    full = load(None, {"OPENAI_API_KEY": "a", "DEEPGRAM_API_KEY": "b", "CARTESIA_API_KEY": "c"})
    assert full.provider_configured("cartesia") is None


def test_secrets_never_appear_in_repr() -> None:
    c = load(
        None,
        {"SIP_PASSWORD": "hunter2", "OPENAI_API_KEY": "sk-secret", "SIP4AI_API_TOKEN": "tok-1"},
    )
    text = repr(c) + str(c)
    for secret in ("hunter2", "sk-secret", "tok-1"):
        assert secret not in text
    assert c.api_token is not None and c.api_token.reveal() == "tok-1"


def test_config_is_frozen() -> None:
    c = Config()
    with pytest.raises(AttributeError):
        c.api_port = 1  # type: ignore[misc]
