"""G.711 by law name and RTP payload type, for the harness (tables: sip4ai.audio.g711)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from sip4ai.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode


Law = Literal["ulaw", "alaw"]

PAYLOAD_TYPE_PCMU = 0
PAYLOAD_TYPE_PCMA = 8


def decode(data: bytes, law: Law) -> npt.NDArray[np.int16]:
    return ulaw_decode(data) if law == "ulaw" else alaw_decode(data)


def encode(pcm: npt.NDArray[np.int16], law: Law) -> bytes:
    return ulaw_encode(pcm) if law == "ulaw" else alaw_encode(pcm)


def law_for_payload_type(payload_type: int) -> Law:
    if payload_type == PAYLOAD_TYPE_PCMU:
        return "ulaw"
    if payload_type == PAYLOAD_TYPE_PCMA:
        return "alaw"
    raise ValueError(f"payload type {payload_type} is not G.711")
