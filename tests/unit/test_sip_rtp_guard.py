"""The stray-RTP guard: SDP endpoints, the kernel source filter on real loopback sockets, and
the trace-driven guard that finds a socket by its port in this process."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sip4ai.sip.rtp_guard import RtpGuard, attach_source_filter, sdp_audio_endpoint, udp_socket_fd
from sip4ai.sip.sipmsg import TraceRecord


pytestmark = pytest.mark.unit

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
)


def test_sdp_audio_endpoint() -> None:
    assert sdp_audio_endpoint(OFFER) == ("192.0.2.10", 40000)
    media_level = OFFER.replace("a=rtpmap:0", "c=IN IP4 198.51.100.7\r\na=rtpmap:0")
    assert sdp_audio_endpoint(media_level) == ("198.51.100.7", 40000)
    video_first = OFFER.replace("m=audio", "m=video 5000 RTP/AVP 96\r\nm=audio")
    assert sdp_audio_endpoint(video_first) == ("192.0.2.10", 40000)
    assert sdp_audio_endpoint(OFFER.replace("192.0.2.10", "0.0.0.0")) is None  # old-style hold
    assert sdp_audio_endpoint(OFFER.replace("40000", "0")) is None
    assert sdp_audio_endpoint(OFFER.replace("IN IP4 192.0.2.10", "IN IP6 ::1")) is None
    assert sdp_audio_endpoint("m=audio notaport RTP/AVP 0\r\nc=IN IP4\r\n") is None
    assert sdp_audio_endpoint("") is None


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """(receiver, peer, stranger), all on 127.0.0.1."""
    made = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in made:
        s.bind(("127.0.0.1", 0))
    made[0].settimeout(0.3)
    try:
        yield made[0], made[1], made[2]
    finally:
        for s in made:
            s.close()


def received(receiver: socket.socket) -> list[bytes]:
    got = []
    try:
        while True:
            got.append(receiver.recv(2048))
    except TimeoutError:
        return got


def test_source_filter_passes_only_the_peer(
    sockets: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    receiver, peer, stranger = sockets
    attach_source_filter(receiver.fileno(), "127.0.0.1", peer.getsockname()[1])
    target = receiver.getsockname()
    stranger.sendto(b"stray", target)
    peer.sendto(b"peer", target)
    stranger.sendto(b"stray", target)
    assert received(receiver) == [b"peer"]


def trace(received: bool, *, method: str = "", status: int = 0, body: str = "") -> TraceRecord:
    return TraceRecord(
        received=received,
        transport="UDP",
        source="127.0.0.1:5060",
        destination="127.0.0.1:5070",
        method=method,
        status=status,
        call_id="call-1",
        cseq_method="INVITE",
        content_type="application/sdp",
        body=body,
    )


def sdp(port: int) -> str:
    return OFFER.replace("192.0.2.10", "127.0.0.1").replace("40000", str(port))


def test_guard_filters_an_inbound_call_and_follows_a_re_invite(
    sockets: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    receiver, peer, stranger = sockets
    local_port = receiver.getsockname()[1]
    assert udp_socket_fd(local_port) == receiver.fileno()
    guard = RtpGuard()
    guard.on_trace(trace(True, method="INVITE", body=sdp(peer.getsockname()[1])))
    guard.on_trace(trace(False, status=200, body=sdp(local_port)))
    stranger.sendto(b"stray", receiver.getsockname())
    peer.sendto(b"peer", receiver.getsockname())
    assert received(receiver) == [b"peer"]
    # The peer moves its media (re-INVITE): the new address is let in, the old one is not.
    guard.on_trace(trace(True, method="INVITE", body=sdp(stranger.getsockname()[1])))
    guard.on_trace(trace(False, status=200, body=sdp(local_port)))
    peer.sendto(b"old", receiver.getsockname())
    stranger.sendto(b"moved", receiver.getsockname())
    assert received(receiver) == [b"moved"]
