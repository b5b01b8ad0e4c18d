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


def create_engine(config: SipConfig) -> SipEngine:
    """The SIP engine for this configuration (baresip-python). Does no I/O until ``start()``.

    Raises ValueError when the configuration cannot be expressed to the SIP stack.
    """
    from sip4ai.sip.baresip_engine import BaresipEngine

    return BaresipEngine(config)
