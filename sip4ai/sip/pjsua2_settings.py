"""Pure rendering of SipConfig into what the pjsua2-python 2.15.1.post1 wheel consumes: URIs,
transport and media settings, codec priorities, and the wheel's hard limits. No SIP library,
no I/O (except looking for the system CA bundle when TLS is configured without one).

The wheel's limits (stated in the README and shown in /status):

* ``PJSUA_MAX_CALLS`` is 4: pjsua silently clamps ``maxCalls`` to it and answers any further
  INVITE with ``486 Busy Here`` itself, before the application sees it.
* Linux x86_64 and CPython <= 3.12 only (the only wheel published).
* TLS goes through the OpenSSL 1.0.2k the wheel bundles: TLS 1.2 at most.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sip4ai.config import SipConfig
from sip4ai.sip.uri import split_hostport, uri_host


__all__ = [
    "PJSUA_MAX_CALLS",
    "PjPlan",
    "caller_uri",
    "plan_pjsua2",
]

PJSUA_MAX_CALLS = 4
TRUNK_USER = "sip4ai"
USER_AGENT = "sip4ai"
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
CODEC_IDS = {"pcmu": "PCMU/8000", "pcma": "PCMA/8000", "g722": "G722/16000"}
"""sip4ai codec name -> pjmedia codec id."""
CODEC_NAMES = {"PCMU": "pcmu", "PCMA": "pcma", "G722": "g722"}
"""pjmedia codec name (``StreamInfo.codecName``) -> sip4ai codec name."""
_USER_FORBIDDEN = set('@:;<>"?\\ ')


@dataclass(frozen=True, slots=True)
class PjPlan:
    """Everything the pjsua2 stack is given, derived once from SipConfig (no secrets)."""

    bind_host: str
    """Local address to bind SIP and RTP to; empty for all interfaces."""
    sip_port: int
    transport: str
    tls_port: int
    """0: an ephemeral port for the TLS listener (only outgoing TLS connections are used)."""
    id_uri: str
    registrar_uri: str
    """Empty when not registering."""
    proxies: tuple[str, ...]
    registers: bool
    trunk_mode: bool
    domain: str
    registrar: str
    registrar_host: str
    auth_user: str
    max_calls: int
    """What pjsua enforces: min(sip.max_calls, PJSUA_MAX_CALLS)."""
    requested_max_calls: int
    codec_priorities: tuple[tuple[str, int], ...]
    clock_rate: int
    rtp_port: int
    rtp_port_range: int
    jb_max_ms: int
    """-1: the library default; otherwise the jitter buffer's maximum length."""
    low_latency_jb: bool
    """sip.jitter_buffer_ms == 0: no prefetch, frames decoded as they arrive."""
    rtp_timeout_s: int
    register_expires_s: int
    tls_ca_file: str
    tls_verify_server: bool

    @property
    def capped(self) -> bool:
        return self.requested_max_calls > self.max_calls


def plan_pjsua2(cfg: SipConfig, *, ca_candidates: tuple[str, ...] = SYSTEM_CA_BUNDLES) -> PjPlan:
    """Raises ValueError when the configuration cannot be expressed to the stack."""
    listen_host, listen_port = split_hostport(cfg.listen)
    if listen_port is None:
        raise ValueError(f"sip.listen needs host:port, got {cfg.listen!r}")
    registers = cfg.configured
    trunk_mode = not registers and bool(cfg.trusted_sources)
    domain = cfg.domain or cfg.server or (cfg.listen if trunk_mode else "")
    if not domain:
        raise ValueError("sip.domain or sip.server is required")
    proxy = _outbound_proxy(cfg, domain)
    registrar = proxy or domain
    user = cfg.username or TRUNK_USER
    _check_user(user)
    param = "" if cfg.transport == "udp" else f";transport={cfg.transport}"
    proxies: tuple[str, ...] = ()
    if proxy:
        uri = proxy if proxy.startswith(("sip:", "sips:")) else f"sip:{proxy}"
        if param and ";transport=" not in uri:
            uri += param
        proxies = (uri + ";lr",)
    ca_file = cfg.tls_ca_file or next((p for p in ca_candidates if os.path.isfile(p)), "")
    if cfg.force_rtp_port is not None:
        rtp_port, rtp_range = cfg.force_rtp_port, 0
    else:
        rtp_port, rtp_range = cfg.rtp_port_min, cfg.rtp_port_max - cfg.rtp_port_min + 1
    return PjPlan(
        bind_host="" if listen_host in ("0.0.0.0", "::", "[::]") else listen_host.strip("[]"),
        sip_port=listen_port,
        transport=cfg.transport,
        tls_port=0,
        id_uri=f"sip:{user}@{domain}" if registers else f"sip:{user}@{cfg.listen}",
        registrar_uri=f"sip:{registrar}{param}" if registers else "",
        proxies=proxies,
        registers=registers,
        trunk_mode=trunk_mode,
        domain=domain,
        registrar=registrar,
        registrar_host=split_hostport(uri_host(registrar))[0],
        auth_user=cfg.auth_id or cfg.username or "",
        max_calls=min(cfg.max_calls, PJSUA_MAX_CALLS),
        requested_max_calls=cfg.max_calls,
        codec_priorities=codec_priorities(cfg.codecs),
        clock_rate=16000 if "g722" in cfg.codecs else 8000,
        rtp_port=rtp_port,
        rtp_port_range=rtp_range,
        jb_max_ms=cfg.jitter_buffer_ms or -1,
        low_latency_jb=cfg.jitter_buffer_ms == 0,
        rtp_timeout_s=cfg.rtp_timeout_s,
        register_expires_s=cfg.register_expires_s,
        tls_ca_file=ca_file,
        tls_verify_server=cfg.tls_verify_server,
    )


def codec_priorities(codecs: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """Priority per configured codec, in order (255 first); every other codec gets 0 (off)."""
    return tuple((CODEC_IDS[name], 255 - index) for index, name in enumerate(codecs))


def codec_name(pj_codec_name: str) -> str:
    """``PCMU`` -> ``pcmu``; unknown names are lower-cased."""
    return CODEC_NAMES.get(pj_codec_name.upper(), pj_codec_name.lower())


def caller_uri(plan: PjPlan, *, user: str, display: str) -> str:
    """The From value for an outbound call with its own caller ID (``SipTxOption.localUri``)."""
    _check_user(user)
    for char in display:
        if char in '"\\' or ord(char) < 0x20:
            raise ValueError("display name contains a quote, backslash or control character")
    name = f'"{display}" ' if display else ""
    return f"{name}<sip:{user}@{plan.domain}>"


def _check_user(user: str) -> None:
    if not user or _USER_FORBIDDEN & set(user):
        raise ValueError(f"user {user!r} cannot be a SIP user part here")


def _outbound_proxy(cfg: SipConfig, domain: str) -> str | None:
    if cfg.outbound_proxy:
        return cfg.outbound_proxy
    if cfg.server and cfg.server != domain:
        return cfg.server
    return None
