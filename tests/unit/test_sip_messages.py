from __future__ import annotations

import pytest

from sip4ai.sip.sipmsg import parse_trace, sdp_audio_codec


pytestmark = pytest.mark.unit

INVITE = (
    "RX UDP 198.51.100.7:5060 -> 127.0.0.1:5070\n"
    "INVITE sip:aibot@127.0.0.1:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1\r\n"
    "f: <sip:+15551234@198.51.100.7>;tag=1\r\n"
    "i: abc@198.51.100.7\r\n"
    "CSeq: 1 INVITE\r\n"
    "c: application/sdp\r\n"
    "\r\n"
    "v=0\r\nm=audio 4000 RTP/AVP 8 0 101\r\n"
)

OK_WITH_SDP = (
    "TX UDP 127.0.0.1:5070 -> 127.0.0.1:5060\n"
    "SIP/2.0 200 Answering\r\n"
    "Call-ID: abc@198.51.100.7\r\n"
    "CSeq: 1 INVITE\r\n"
    "Content-Type: application/sdp\r\n"
    "\r\n"
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 20000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def test_parse_request() -> None:
    record = parse_trace(INVITE)
    assert record is not None
    assert record.received and record.transport == "udp"
    assert record.source == "198.51.100.7:5060"
    assert record.method == "INVITE" and record.status == 0
    assert record.call_id == "abc@198.51.100.7"  # compact form i:
    assert record.content_type == "application/sdp"
    assert record.cseq_method == "INVITE"


def test_parse_response() -> None:
    record = parse_trace(OK_WITH_SDP)
    assert record is not None
    assert not record.received
    assert record.method == "" and record.status == 200
    assert sdp_audio_codec(record.body) == ("pcmu", 8000)


@pytest.mark.parametrize(
    "text", ["", "RX UDP a -> b", "garbage\nINVITE", "RX UDP a -> b\nSIP/2.0 abc Bad\r\n\r\n"]
)
def test_parse_rejects(text: str) -> None:
    assert parse_trace(text) is None


@pytest.mark.parametrize(
    ("sdp", "codec"),
    [
        ("m=audio 1 RTP/AVP 8 0\r\n", ("pcma", 8000)),
        ("m=audio 1 RTP/AVP 101 9\r\na=rtpmap:101 telephone-event/8000\r\n", ("g722", 8000)),
        ("m=audio 1 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n", ("opus", 48000)),
        ("m=video 2 RTP/AVP 97\r\nm=audio 1 RTP/AVP 0\r\n", ("pcmu", 8000)),
        ("m=audio 0 RTP/AVP 0\r\n", None),
        ("v=0\r\n", None),
    ],
)
def test_sdp_audio_codec(sdp: str, codec: tuple[str, int] | None) -> None:
    assert sdp_audio_codec(sdp) == codec
