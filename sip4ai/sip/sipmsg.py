"""Pure parsing of the stack's SIP trace records and of the SDP they carry.

baresip-python reports neither an INVITE's packet source, nor the negotiated codec, nor whether a
DTMF digit came by RTP or SIP INFO. Its SIP trace has all three: one record per message,
``"RX UDP 10.0.0.1:5060 -> 10.0.0.2:5070\\n<the message>"`` (baresip-python's shim format).
This module turns such a record into the few facts the engine needs. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


__all__ = ["TraceRecord", "parse_trace", "sdp_audio_codec"]

# RFC 3261 section 7.3.3 compact header forms that matter here.
_COMPACT = {
    "i": "call-id",
    "c": "content-type",
    "v": "via",
    "f": "from",
    "t": "to",
    "l": "content-length",
}
_STATIC_PT = {0: "pcmu", 8: "pcma", 9: "g722"}
_CODEC_NAMES = {"pcmu": "pcmu", "pcma": "pcma", "g722": "g722", "opus": "opus"}


@dataclass(frozen=True, slots=True)
class TraceRecord:
    received: bool
    transport: str
    source: str
    """``host:port`` the packet came from (for ``received``) or was sent from."""
    destination: str
    method: str
    """Request method, or ``""`` for a response."""
    status: int
    """Response status, or 0 for a request."""
    call_id: str
    cseq_method: str
    content_type: str
    body: str


def parse_trace(text: str) -> TraceRecord | None:
    """One trace record, or None when it is not a complete SIP message."""
    head, sep, message = text.partition("\n")
    if not sep:
        return None
    words = head.split()
    if len(words) != 5 or words[0] not in ("RX", "TX") or words[3] != "->":
        return None
    raw_headers, _, body = message.partition("\r\n\r\n")
    lines = raw_headers.split("\r\n")
    start = lines[0].split(" ", 2)
    if len(start) < 2:
        return None
    method, status = "", 0
    if start[0].startswith("SIP/"):
        if not start[1].isdigit():
            return None
        status = int(start[1])
    else:
        method = start[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            continue
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        headers.setdefault(key, value.strip())
    cseq = headers.get("cseq", "").split()
    return TraceRecord(
        received=words[0] == "RX",
        transport=words[1].lower(),
        source=words[2],
        destination=words[4],
        method=method,
        status=status,
        call_id=headers.get("call-id", ""),
        cseq_method=cseq[1].upper() if len(cseq) == 2 else "",
        content_type=headers.get("content-type", "").split(";", 1)[0].strip().lower(),
        body=body,
    )


def sdp_audio_codec(sdp: str) -> tuple[str, int] | None:
    """(codec, clock rate) of the first usable format on the first audio m-line.

    In an SDP answer that format is the one both sides send (RFC 3264 section 6.1).
    """
    formats: list[int] = []
    rtpmap: dict[int, tuple[str, int]] = {}
    in_audio = False
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if formats:
                break
            parts = line[2:].split()
            in_audio = len(parts) > 3 and parts[0] == "audio" and parts[1] != "0"
            if in_audio:
                formats = [int(pt) for pt in parts[3:] if pt.isdigit()]
        elif in_audio and line.startswith("a=rtpmap:"):
            pt_text, _, encoding = line[len("a=rtpmap:") :].partition(" ")
            name, _, rest = encoding.partition("/")
            rate_text = rest.split("/", 1)[0]
            if pt_text.isdigit() and rate_text.isdigit():
                rtpmap[int(pt_text)] = (name.lower(), int(rate_text))
    for pt in formats:
        if pt in rtpmap:
            name, rate = rtpmap[pt]
            if name in _CODEC_NAMES:
                return _CODEC_NAMES[name], rate
            continue
        if pt in _STATIC_PT:
            return _STATIC_PT[pt], 8000
    return None
