"""The SIP boundary: the typed interface and the factory for the engine behind it.

Nothing outside ``sip4ai.sip`` imports a SIP library; importing this package does not import
one either (``create_engine`` loads the backend when called).
"""

from __future__ import annotations

from sip4ai.config import SipConfig
from sip4ai.sip.interface import (
    FRAME_MS,
    DialRequest,
    DtmfReceived,
    EndCause,
    HoldChanged,
    IncomingCall,
    LegAnswered,
    LegEnded,
    LegRinging,
    MediaReady,
    MediaStats,
    MediaStream,
    RegistrationChanged,
    RegistrationState,
    SipEngine,
    SipEvent,
    TransferResult,
)


__all__ = [
    "FRAME_MS",
    "DialRequest",
    "ENGINE_LIMITS",
    "DtmfReceived",
    "EndCause",
    "HoldChanged",
    "IncomingCall",
    "LegAnswered",
    "LegEnded",
    "LegRinging",
    "MediaReady",
    "MediaStats",
    "MediaStream",
    "RegistrationChanged",
    "RegistrationState",
    "SipEngine",
    "SipEvent",
    "TransferResult",
    "create_engine",
]


ENGINE_LIMITS: dict[str, dict[str, object]] = {
    "baresip": {},
    "pjsua2": {
        "max_calls_per_process": 4,
        "platforms": "Linux x86_64, Python <= 3.12",
        "tls": "TLS 1.2 at most (bundled OpenSSL 1.0.2k)",
    },
}
"""Hard limits of each backend, shown in /status (pjsua2: the pjsua2-python wheel's)."""


def create_engine(config: SipConfig) -> SipEngine:
    """The SIP engine for this configuration (``sip.engine``). Does no I/O until ``start()``.

    The backend's library is imported here, so an install without the ``pjsua2`` extra works
    as long as ``sip.engine`` stays ``baresip``. Raises ValueError when the configuration cannot
    be expressed to the SIP stack, or when the pjsua2 backend is selected but not installed.
    """
    if config.engine == "pjsua2":
        try:
            from sip4ai.sip.pjsua2_engine import Pjsua2Engine
        except ImportError as exc:
            raise ValueError(
                "sip.engine=pjsua2 needs the pjsua2-python wheel (pip install 'sip4ai[pjsua2]'; "
                f"Linux x86_64, Python <= 3.12 only): {exc}"
            ) from None
        return Pjsua2Engine(config)
    from sip4ai.sip.baresip_engine import BaresipEngine

    return BaresipEngine(config)
