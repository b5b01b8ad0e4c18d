"""Pure rendering of SipConfig into what baresip 4.10 / baresip-python 0.5.2a3 consumes: the
stack's configuration text and the account (address-of-record) lines. No SIP library, no I/O
(except looking for the system CA bundle when TLS is configured without one).

Every setting whose library default is wrong for sip4ai is written here explicitly (each has a
regression test): ``sip_listen`` (library default 0.0.0.0:5060), ``rtp_ports`` (1024-49152), the
jitter buffer (fixed 100-200 ms, which drops caller frames under load and adds ~100 ms), the call
limit (``Config.max_concurrent_calls`` defaults to 2) and ``video_codecs=none`` on every account.
Without the last one every call allocates an unused video RTP/RTCP socket pair (4 descriptors
per call, so libre's 1024-descriptor poll runs out at ~254 calls) and a plain ``answer()``
triggers a stray re-INVITE 50-150 ms later, because the stack sees the video direction change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sip4ai.config import SipConfig
from sip4ai.sip.uri import split_hostport, uri_host


__all__ = ["StackPlan", "caller_aor", "plan_stack", "redact_aor"]

# Written into every account: no video stream at all (see module docstring).
NO_VIDEO = "video_codecs=none"
TRUNK_USER = "sip4ai"
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
_CODEC_SPECS = {"pcmu": "pcmu", "pcma": "pcma", "g722": "g722/16000/1"}
_AOR_USER_FORBIDDEN = set('@:;<>"?\\ ')
_PARAM_FORBIDDEN = set(';<>"\\ ')


@dataclass(frozen=True, slots=True)
class StackPlan:
    """Everything the engine hands the stack, derived once from SipConfig."""

    net_interface: str | None
    """The local address to pin (needed for loopback), None to let the stack discover one."""
    config_text: str
    """Stack configuration lines appended after the library's rendered keys."""
    max_calls: int
    rtp_timeout_s: int
    account_aor: str
    """Contains the password: never log it (``redact_aor``)."""
    registers: bool
    trunk_mode: bool
    domain: str
    """``host[:port]`` that numbers and user parts are dialled at."""
    registrar: str
    """``host[:port]`` the REGISTERs (and calls) go to first."""
    registrar_host: str
    """Its host part; looked up to tell DNS failures apart."""


def plan_stack(cfg: SipConfig, *, ca_candidates: tuple[str, ...] = SYSTEM_CA_BUNDLES) -> StackPlan:
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
    registrar_host = split_hostport(uri_host(registrar))[0]
    return StackPlan(
        net_interface=None if listen_host in ("0.0.0.0", "::", "[::]") else listen_host,
        config_text=stack_config_text(cfg, ca_candidates=ca_candidates),
        max_calls=cfg.max_calls,
        rtp_timeout_s=cfg.rtp_timeout_s,
        account_aor=_aor(
            cfg,
            user=cfg.username or TRUNK_USER,
            display="",
            domain=domain,
            regint=cfg.register_expires_s if registers else 0,
            catchall=trunk_mode,
        ),
        registers=registers,
        trunk_mode=trunk_mode,
        domain=domain,
        registrar=registrar,
        registrar_host=registrar_host,
    )


def stack_config_text(cfg: SipConfig, *, ca_candidates: tuple[str, ...] = SYSTEM_CA_BUNDLES) -> str:
    """Configuration lines for keys the library's Config does not model.

    The stack takes the first occurrence of a key, and these follow the library's own keys, so
    none of them may repeat one it writes (``call_max_calls``, ``rtp_timeout``...).
    """
    lines = [f"sip_listen {cfg.listen}"]
    transports = ["udp", "tcp"] + (["tls"] if cfg.transport == "tls" else [])
    # Without this the stack also opens TLS on listen port + 1, which may collide.
    lines.append("sip_transports " + ",".join(transports))
    if cfg.force_rtp_port is not None:
        # RTP on the even port, RTCP on the next one (RFC 3550 section 11).
        lines.append(f"rtp_ports {cfg.force_rtp_port}-{cfg.force_rtp_port + 1}")
    else:
        lines.append(f"rtp_ports {cfg.rtp_port_min}-{cfg.rtp_port_max}")
    if cfg.jitter_buffer_ms == 0:
        # rtp_rxmode stays "main": RTP is decoded on arrival, one frame per packet.
        lines.append("audio_jitter_buffer_type off")
    else:
        lines.append("rtp_rxmode thread")
        lines.append("audio_jitter_buffer_type adaptive")
        lines.append(f"audio_jitter_buffer_ms 20-{cfg.jitter_buffer_ms}")
    if cfg.transport == "tls":
        lines.append(f"sip_verify_server {'yes' if cfg.tls_verify_server else 'no'}")
        ca_file = cfg.tls_ca_file or next((p for p in ca_candidates if os.path.isfile(p)), None)
        if ca_file:
            lines.append(f"sip_cafile {ca_file}")
    return "\n".join(lines) + "\n"


def _outbound_proxy(cfg: SipConfig, domain: str) -> str | None:
    if cfg.outbound_proxy:
        return cfg.outbound_proxy
    if cfg.server and cfg.server != domain:
        return cfg.server
    return None


def caller_aor(cfg: SipConfig, plan: StackPlan, *, user: str, display: str) -> str:
    """A non-registering account that dials with ``user``/``display`` in From.

    The stack builds From from the account, so each caller identity is its own account; it
    authenticates (401/407) as the configured user.
    """
    return _aor(
        cfg,
        user=user,
        display=display,
        domain=plan.domain,
        regint=0,
        catchall=False,
        auth_user=cfg.auth_id or cfg.username,
    )


def _aor(
    cfg: SipConfig,
    *,
    user: str,
    display: str,
    domain: str,
    regint: int,
    catchall: bool,
    auth_user: str | None = None,
) -> str:
    if not user or _AOR_USER_FORBIDDEN & set(user):
        raise ValueError(f"user {user!r} cannot be a SIP user part here")
    for char in display:
        if char in '"\\' or ord(char) < 0x20:
            raise ValueError("display name contains a quote, backslash or control character")
    password = cfg.password.reveal() if cfg.password else ""
    if any(c in '"\\' or ord(c) < 0x20 for c in password):
        raise ValueError("sip.password contains a quote, backslash or control character")
    auth = auth_user if auth_user is not None else cfg.auth_id
    if auth and _PARAM_FORBIDDEN & set(auth):
        raise ValueError("sip.auth_id contains a character that cannot travel as a parameter")
    params = []
    if password:
        params.append(f'auth_pass="{password}"')
    if auth:
        params.append(f"auth_user={auth}")
    params.append(f"regint={regint}")
    params.append("answermode=manual")
    params.append("audio_codecs=" + ",".join(_CODEC_SPECS[c] for c in cfg.codecs))
    params.append("dtmfmode=rtpevent")
    proxy = _outbound_proxy(cfg, domain)
    if proxy:
        uri = proxy if proxy.startswith(("sip:", "sips:")) else f"sip:{proxy}"
        if cfg.transport != "udp" and ";transport=" not in uri:
            uri += f";transport={cfg.transport}"
        params.append(f'outbound="{uri}"')
    params.append(NO_VIDEO)
    if catchall:
        params.append("catchall=yes")
    name = f'"{display}" ' if display else ""
    return f"{name}<sip:{user}@{domain};transport={cfg.transport}>;" + ";".join(params)


def redact_aor(aor: str) -> str:
    """The AOR with the password replaced, for logs."""
    start = aor.find('auth_pass="')
    if start < 0:
        return aor
    end = aor.find('"', start + len('auth_pass="'))
    return aor[:start] + 'auth_pass="***"' + aor[end + 1 :]
