"""PlayoutBuffer: FIFO, silence fill, underruns/overflows, barge-in clear, reply position."""

import pytest

from sip4ai.audio.formats import PCM16_24K, PCMA_8K, PCMU_8K, AudioFormat
from sip4ai.audio.playout import PlayoutBuffer, PlayoutStats


pytestmark = pytest.mark.unit

SILENCE = b"\xff" * 160


def _frame(n: int) -> bytes:
    """A distinct 160-byte mu-law frame; never equal to silence."""
    return bytes([n % 255]) * 160


def _pop(buffer: PlayoutBuffer, count: int) -> list[bytes]:
    return [buffer.pop() for _ in range(count)]


def test_empty_buffer_yields_silence_without_underrun() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    assert _pop(buffer, 3) == [SILENCE] * 3
    assert buffer.underruns == 0
    assert buffer.frames_played == 0


@pytest.mark.parametrize(
    ("fmt", "silence"),
    [(PCMU_8K, b"\xff" * 160), (PCMA_8K, b"\xd5" * 160), (PCM16_24K, b"\x00" * 960)],
)
def test_silence_is_a_frame_in_the_buffers_encoding(fmt: AudioFormat, silence: bytes) -> None:
    buffer = PlayoutBuffer(fmt)
    assert buffer.frame_bytes == len(silence)
    assert buffer.pop() == silence


def test_burst_is_played_in_order_one_frame_per_pop() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    frames = [_frame(i) for i in range(50)]  # one second, pushed at once
    assert all(buffer.push(f) for f in frames)
    assert len(buffer) == 50
    assert buffer.buffered_ms == 1000
    assert _pop(buffer, 50) == frames
    assert buffer.frames_played == 50
    assert buffer.reply_played_ms == 1000
    assert buffer.underruns == 0


def test_starving_inside_a_reply_counts_underruns() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    buffer.push(_frame(1))
    buffer.push(_frame(2))
    assert _pop(buffer, 4) == [_frame(1), _frame(2), SILENCE, SILENCE]
    assert buffer.underruns == 2
    buffer.push(_frame(3))  # the reply resumes; gaps do not advance its position
    assert buffer.pop() == _frame(3)
    assert buffer.reply_played_ms == 60


def test_draining_after_end_of_reply_is_not_an_underrun() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    for i in range(3):
        buffer.push(_frame(i))
    buffer.mark_end_of_reply()
    assert _pop(buffer, 10)[3:] == [SILENCE] * 7
    assert buffer.underruns == 0


def test_a_reply_pushed_after_an_ended_one_can_underrun_again() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    buffer.push(_frame(1))
    buffer.mark_end_of_reply()
    buffer.push(_frame(2))
    assert _pop(buffer, 3) == [_frame(1), _frame(2), SILENCE]
    assert buffer.underruns == 1


def test_start_marker_without_audio_is_not_an_underrun() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    buffer.push(_frame(1))
    buffer.mark_start_of_reply("next")
    assert _pop(buffer, 3) == [_frame(1), SILENCE, SILENCE]
    assert buffer.underruns == 0


def test_clear_drops_everything_at_once_and_reports_ms() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    buffer.mark_start_of_reply("item_1")
    for i in range(100):  # a 2 s reply delivered as a burst
        buffer.push(_frame(i))
    _pop(buffer, 37)
    # What the bridge reads for conversation.item.truncate before clearing:
    assert (buffer.playing_reply_id, buffer.reply_played_ms) == ("item_1", 740)
    assert buffer.clear() == 1260
    assert (len(buffer), buffer.buffered_ms) == (0, 0)
    assert (buffer.playing_reply_id, buffer.reply_played_ms) == (None, 0)
    assert buffer.pop() == SILENCE
    assert buffer.underruns == 0  # the reply was abandoned, not starved
    assert buffer.stats() == PlayoutStats(
        frames_played=37, underruns=0, overflows=0, frames_cleared=63
    )


def test_clear_on_empty_buffer_returns_zero() -> None:
    assert PlayoutBuffer(PCMU_8K).clear() == 0


def test_frames_pushed_after_clear_play_normally() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    buffer.push(_frame(1))
    buffer.mark_end_of_reply()
    buffer.clear()
    buffer.push(_frame(2))
    assert _pop(buffer, 2) == [_frame(2), SILENCE]
    assert buffer.reply_played_ms == 20
    assert buffer.underruns == 1


def test_overflow_rejects_the_newest_frames_and_counts_them() -> None:
    buffer = PlayoutBuffer(PCMU_8K, capacity_ms=100)
    assert buffer.capacity_frames == 5
    accepted = [buffer.push(_frame(i)) for i in range(7)]
    assert accepted == [True] * 5 + [False] * 2
    assert buffer.overflows == 2
    assert _pop(buffer, 5) == [_frame(i) for i in range(5)]
    assert buffer.push(_frame(9))  # room again
    assert buffer.overflows == 2


def test_reply_markers_track_which_reply_is_audible() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    buffer.mark_start_of_reply("A")
    for i in range(3):
        buffer.push(_frame(i))
    buffer.mark_end_of_reply()
    buffer.mark_start_of_reply("B")  # pushed while A is still queued
    buffer.push(_frame(10))
    buffer.push(_frame(11))
    buffer.pop()
    assert (buffer.playing_reply_id, buffer.reply_played_ms) == ("A", 20)
    _pop(buffer, 2)
    assert (buffer.playing_reply_id, buffer.reply_played_ms) == ("A", 60)
    assert buffer.pop() == _frame(10)
    assert (buffer.playing_reply_id, buffer.reply_played_ms) == ("B", 20)


def test_position_is_kept_after_a_reply_ends_and_restarts_with_the_next() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    buffer.mark_start_of_reply("A")
    buffer.push(_frame(1))
    buffer.push(_frame(2))
    buffer.mark_end_of_reply()
    _pop(buffer, 5)
    assert (buffer.playing_reply_id, buffer.reply_played_ms) == ("A", 40)
    buffer.push(_frame(3))  # next reply without a start marker
    buffer.pop()
    assert (buffer.playing_reply_id, buffer.reply_played_ms) == (None, 20)


def test_repeated_markers_are_harmless() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    buffer.push(_frame(1))
    for _ in range(100):
        buffer.mark_end_of_reply()
        buffer.mark_start_of_reply("X")
    assert (len(buffer), buffer.pop(), buffer.pop()) == (1, _frame(1), SILENCE)
    assert (buffer.playing_reply_id, buffer.underruns) == ("X", 0)


def test_rejects_wrong_frame_size_and_tiny_capacity() -> None:
    buffer = PlayoutBuffer(PCMU_8K)
    with pytest.raises(ValueError, match="160 bytes"):
        buffer.push(b"\xff" * 159)
    with pytest.raises(ValueError, match="capacity_ms"):
        PlayoutBuffer(PCMU_8K, capacity_ms=10)
