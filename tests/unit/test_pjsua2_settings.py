"""plan_pjsua2: SipConfig -> what the pjsua2 stack is given (URIs, limits, media settings)."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sip4ai.config import Secret, SipConfig, load
from sip4ai.errors import ConfigError
from sip4ai.sip import ENGINE_LIMITS
from sip4ai.sip.pjsua2_settings import (
    PJSUA_MAX_CALLS,
    caller_uri,
    codec_name,
    codec_priorities,
    plan_pjsua2,
)


pytestmark = pytest.mark.unit

BASE = SipConfig(
    engine="pjsua2",
    username="aibot",
    password=Secret("pw"),
    domain="pbx.example.com",
    listen="127.0.0.1:5070",
)


def cfg(**changes: object) -> SipConfig:
    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


def test_registering_account() -> None:
    plan = plan_pjsua2(cfg())
    assert plan.registers and not plan.trunk_mode
    assert plan.id_uri == "sip:aibot@pbx.example.com"
    assert plan.registrar_uri == "sip:pbx.example.com"
    assert plan.proxies == ()
    assert (plan.bind_host, plan.sip_port) == ("127.0.0.1", 5070)
    assert plan.auth_user == "aibot"


def test_server_other_than_domain_is_the_outbound_proxy_with_the_transport() -> None:
    plan = plan_pjsua2(cfg(server="10.0.0.5:5061", transport="tls", auth_id="auth7"))
    assert plan.registrar_uri == "sip:10.0.0.5:5061;transport=tls"
    assert plan.proxies == ("sip:10.0.0.5:5061;transport=tls;lr",)
    assert plan.registrar_host == "10.0.0.5"
    assert plan.auth_user == "auth7"


def test_wildcard_listen_binds_every_interface() -> None:
    assert plan_pjsua2(cfg(listen="0.0.0.0:5060")).bind_host == ""


def test_trunk_mode_does_not_register() -> None:
    plan = plan_pjsua2(
        cfg(username=None, password=None, domain=None, trusted_sources=("10.1.1.1",))
    )
    assert plan.trunk_mode and not plan.registers
    assert plan.registrar_uri == ""
    assert plan.id_uri == "sip:sip4ai@127.0.0.1:5070"


@pytest.mark.parametrize(("asked", "enforced"), [(1, 1), (3, 3), (4, 4), (5, 4), (100, 4)])
def test_calls_are_capped_at_the_wheel_limit(asked: int, enforced: int) -> None:
    plan = plan_pjsua2(cfg(max_calls=asked))
    assert plan.max_calls == enforced == min(asked, PJSUA_MAX_CALLS)
    assert plan.capped is (asked > PJSUA_MAX_CALLS)


def test_rtp_port_range_and_forced_port() -> None:
    plan = plan_pjsua2(cfg(rtp_port_min=30000, rtp_port_max=30099))
    assert (plan.rtp_port, plan.rtp_port_range) == (30000, 100)
    forced = plan_pjsua2(cfg(force_rtp_port=40000))
    assert (forced.rtp_port, forced.rtp_port_range) == (40000, 0)


def test_codecs_in_configured_order_and_clock_rate() -> None:
    assert codec_priorities(("pcma", "pcmu")) == (("PCMA/8000", 255), ("PCMU/8000", 254))
    assert plan_pjsua2(cfg()).clock_rate == 8000
    assert plan_pjsua2(cfg(codecs=("g722", "pcmu"))).clock_rate == 16000
    assert codec_name("PCMU") == "pcmu" and codec_name("G722") == "g722"


def test_jitter_buffer_setting() -> None:
    off = plan_pjsua2(cfg())
    assert off.low_latency_jb and off.jb_max_ms == -1
    on = plan_pjsua2(cfg(jitter_buffer_ms=120))
    assert not on.low_latency_jb and on.jb_max_ms == 120


def test_tls_ca_file_falls_back_to_the_system_bundle(tmp_path: Path) -> None:
    assert plan_pjsua2(cfg(tls_ca_file="/x/ca.pem")).tls_ca_file == "/x/ca.pem"
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    found = plan_pjsua2(cfg(), ca_candidates=("/nonexistent/ca.pem", str(bundle)))
    assert found.tls_ca_file == str(bundle)
    assert plan_pjsua2(cfg(), ca_candidates=("/nonexistent/ca.pem",)).tls_ca_file == ""


def test_plan_holds_no_password() -> None:
    assert "s3cr3t" not in repr(plan_pjsua2(cfg(password=Secret("s3cr3t-pw"))))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listen": "127.0.0.1"}, "host:port"),
        ({"domain": None, "server": None}, "sip.domain"),
        ({"username": "a@b"}, "user part"),
    ],
)
def test_invalid_configuration(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_pjsua2(cfg(**changes))


def test_caller_uri() -> None:
    plan = plan_pjsua2(cfg())
    assert caller_uri(plan, user="+15550001111", display="ACME") == (
        '"ACME" <sip:+15550001111@pbx.example.com>'
    )
    assert caller_uri(plan, user="1001", display="") == "<sip:1001@pbx.example.com>"
    with pytest.raises(ValueError, match="display name"):
        caller_uri(plan, user="1001", display='a"b')
    with pytest.raises(ValueError, match="user part"):
        caller_uri(plan, user="10 01", display="")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sip4ai.json"
    path.write_text(text)
    return path


@pytest.fixture
def wheel(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """wheel(False): importlib finds no pjsua2 (as on an install without the extra)."""
    real = importlib.util.find_spec

    def installed(present: bool) -> None:
        def find_spec(name: str, package: str | None = None) -> Any:
            if name == "pjsua2":
                return real("json") if present else None  # any spec stands for "installed"
            return real(name, package)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return installed


def test_engine_key_defaults_to_baresip_and_selects_pjsua2(
    tmp_path: Path, wheel: Callable[[bool], None]
) -> None:
    wheel(True)
    assert load(_write(tmp_path, "{}"), {}).sip.engine == "baresip"
    path = _write(tmp_path, '{"sip": {"engine": "pjsua2"}}')
    assert load(path, {}).sip.engine == "pjsua2"
    assert load(_write(tmp_path, "{}"), {"SIP_ENGINE": "PJSUA2"}).sip.engine == "pjsua2"


def test_pjsua2_without_the_wheel_is_a_config_error(
    tmp_path: Path, wheel: Callable[[bool], None]
) -> None:
    wheel(False)
    with pytest.raises(ConfigError, match=r"sip4ai\[pjsua2\]") as info:
        load(_write(tmp_path, "{}"), {"SIP_ENGINE": "pjsua2"})
    assert info.value.field == "sip.engine" and info.value.source == "env SIP_ENGINE"
    assert load(_write(tmp_path, "{}"), {}).sip.engine == "baresip"  # the default still works


def test_unknown_engine_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="engine"):
        load(_write(tmp_path, '{"sip": {"engine": "linphone"}}'), {})


def test_status_limits_match_the_enforced_limit() -> None:
    assert ENGINE_LIMITS["pjsua2"]["max_calls_per_process"] == PJSUA_MAX_CALLS
    assert ENGINE_LIMITS["baresip"] == {}
