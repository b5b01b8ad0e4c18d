"""What the engine tells baresip: every library default that is wrong for sip4ai is overridden.

The stack keeps the FIRST occurrence of a configuration key, so each test also checks the final
rendered text (library keys + ours), not only our lines.
"""

from __future__ import annotations

import dataclasses

import pytest

from sip4ai.config import Secret, SipConfig
from sip4ai.sip.baresip_facade import Stack
from sip4ai.sip.baresip_settings import caller_aor, plan_stack, redact_aor


pytestmark = pytest.mark.unit

BASE = SipConfig(
    username="aibot",
    password=Secret("s3cret pw;x"),
    domain="pbx.example.com",
    listen="127.0.0.1:15070",
    max_calls=120,
)


def rendered(cfg: SipConfig) -> dict[str, list[str]]:
    plan = plan_stack(cfg)
    stack = Stack(
        net_interface=plan.net_interface,
        config_text=plan.config_text,
        max_calls=plan.max_calls,
        rtp_timeout_s=plan.rtp_timeout_s,
    )
    keys: dict[str, list[str]] = {}
    for line in stack.rendered_config.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            keys.setdefault(key, []).append(value.strip())
    return keys


def test_no_key_is_written_twice() -> None:
    for cfg in (BASE, dataclasses.replace(BASE, jitter_buffer_ms=80, transport="tls")):
        assert [k for k, v in rendered(cfg).items() if len(v) > 1] == []


def test_max_calls_from_config_not_library_default_2() -> None:
    assert rendered(BASE)["call_max_calls"] == ["120"]
    assert rendered(dataclasses.replace(BASE, max_calls=1))["call_max_calls"] == ["1"]


def test_sip_listen_from_config_not_0_0_0_0_5060() -> None:
    keys = rendered(BASE)
    assert keys["sip_listen"] == ["127.0.0.1:15070"]
    assert keys["net_interface"] == ["127.0.0.1"]  # loopback must be pinned
    wildcard = rendered(dataclasses.replace(BASE, listen="0.0.0.0:5080"))
    assert wildcard["sip_listen"] == ["0.0.0.0:5080"]
    assert "net_interface" not in wildcard


def test_only_the_configured_transports_listen() -> None:
    assert rendered(BASE)["sip_transports"] == ["udp,tcp"]  # no TLS on listen port + 1
    tls = rendered(dataclasses.replace(BASE, transport="tls", tls_ca_file="/etc/ca.pem"))
    assert tls["sip_transports"] == ["udp,tcp,tls"]
    assert tls["sip_verify_server"] == ["yes"]
    assert tls["sip_cafile"] == ["/etc/ca.pem"]
    insecure = rendered(dataclasses.replace(BASE, transport="tls", tls_verify_server=False))
    assert insecure["sip_verify_server"] == ["no"]


def test_rtp_ports_from_config_and_debug_force_port() -> None:
    assert rendered(dataclasses.replace(BASE, rtp_port_min=30000, rtp_port_max=30999))[
        "rtp_ports"
    ] == ["30000-30999"]
    assert rendered(dataclasses.replace(BASE, force_rtp_port=40000))["rtp_ports"] == ["40000-40001"]


def test_jitter_buffer_off_by_default() -> None:
    keys = rendered(BASE)
    assert keys["audio_jitter_buffer_type"] == ["off"]
    assert "rtp_rxmode" not in keys  # main: decoded on arrival


def test_jitter_buffer_thread_mode() -> None:
    keys = rendered(dataclasses.replace(BASE, jitter_buffer_ms=80))
    assert keys["rtp_rxmode"] == ["thread"]
    assert keys["audio_jitter_buffer_ms"] == ["20-80"]
    assert keys["audio_jitter_buffer_type"] == ["adaptive"]


def test_rtp_timeout() -> None:
    assert rendered(BASE)["rtp_timeout"] == ["60"]
    assert "rtp_timeout" not in rendered(dataclasses.replace(BASE, rtp_timeout_s=0))


def test_account_disables_video_and_answers_manually() -> None:
    plan = plan_stack(BASE)
    aor = plan.account_aor
    assert aor.startswith("<sip:aibot@pbx.example.com;transport=udp>;")
    params = aor.split(">;", 1)[1].split(";")
    assert "video_codecs=none" in params  # no video socket pair, no stray re-INVITE
    assert "answermode=manual" in params
    assert "regint=300" in params
    assert "audio_codecs=pcmu,pcma" in params
    assert 'auth_pass="s3cret pw;x"' in aor
    assert plan.registers and not plan.trunk_mode


def test_registrar_and_proxy() -> None:
    cfg = dataclasses.replace(
        BASE, server="sbc.example.com:5080", auth_id="auth-7", transport="tcp"
    )
    plan = plan_stack(cfg)
    assert 'outbound="sip:sbc.example.com:5080;transport=tcp"' in plan.account_aor
    assert "auth_user=auth-7" in plan.account_aor
    assert plan.registrar == "sbc.example.com:5080"
    assert plan.registrar_host == "sbc.example.com"
    proxied = plan_stack(dataclasses.replace(cfg, outbound_proxy="sip:edge.example.com;lr"))
    assert 'outbound="sip:edge.example.com;lr;transport=tcp"' in proxied.account_aor
    assert proxied.registrar_host == "edge.example.com"
    server_only = plan_stack(dataclasses.replace(BASE, domain=None, server="10.0.0.9:5062"))
    assert server_only.domain == "10.0.0.9:5062"
    assert "outbound=" not in server_only.account_aor


def test_trunk_mode_accepts_any_user_and_never_registers() -> None:
    cfg = SipConfig(listen="10.0.0.2:5060", trusted_sources=("10.0.0.1",))
    plan = plan_stack(cfg)
    assert plan.trunk_mode and not plan.registers
    assert "regint=0" in plan.account_aor and "catchall=yes" in plan.account_aor
    assert plan.domain == "10.0.0.2:5060"


def test_caller_identity_account() -> None:
    plan = plan_stack(BASE)
    aor = caller_aor(BASE, plan, user="+15551234", display="ACME Support")
    assert aor.startswith('"ACME Support" <sip:+15551234@pbx.example.com;transport=udp>;')
    assert "regint=0" in aor and "auth_user=aibot" in aor and "video_codecs=none" in aor
    with pytest.raises(ValueError):
        caller_aor(BASE, plan, user="bad@user", display="")
    with pytest.raises(ValueError):
        caller_aor(BASE, plan, user="+1555", display='say "hi"')


def test_password_never_in_redacted_aor() -> None:
    redacted = redact_aor(plan_stack(BASE).account_aor)
    assert "s3cret" not in redacted and 'auth_pass="***"' in redacted


def test_unusable_config() -> None:
    with pytest.raises(ValueError):
        plan_stack(dataclasses.replace(BASE, password=Secret('a"b')))
    with pytest.raises(ValueError):
        plan_stack(dataclasses.replace(BASE, listen="127.0.0.1"))
    with pytest.raises(ValueError):
        plan_stack(SipConfig(username="a", password=Secret("b")))
