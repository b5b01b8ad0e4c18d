"""G.711 codecs against ITU-T G.711 tables 1/2 and the G.191 reference conventions."""

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from sip4ai.audio.g711 import PcmInput, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode


pytestmark = pytest.mark.unit

Encoder = Callable[[PcmInput], bytes]
Decoder = Callable[[bytes], npt.NDArray[np.int16]]

ALL_PCM16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = bytes(range(256))


def _codes(data: bytes) -> npt.NDArray[np.int32]:
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)


def _ones_complement_magnitude(x: npt.NDArray[np.int16]) -> npt.NDArray[np.int32]:
    wide = x.astype(np.int32)
    return np.where(wide < 0, -wide - 1, wide)


# --- known vectors ---------------------------------------------------------------------------


def test_ulaw_zero_codes_decode_to_zero() -> None:
    assert ulaw_decode(b"\xff\x7f").tolist() == [0, 0]


def test_ulaw_full_scale_and_smallest_steps() -> None:
    assert ulaw_decode(b"\x80\x00\xfe\x7e\x01").tolist() == [32124, -32124, 8, -8, -31100]


def test_ulaw_first_table_entries() -> None:
    assert ulaw_decode(bytes(range(8))).tolist() == [
        -32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956,
    ]  # fmt: skip


def test_ulaw_segment_first_levels_match_g711_table_2() -> None:
    # 14-bit outputs 33, 99, 231, 495, 1023, 2079, 4191 (step 0 of segments 1..7), x4.
    codes = bytes([0xEF, 0xDF, 0xCF, 0xBF, 0xAF, 0x9F, 0x8F])
    assert ulaw_decode(codes).tolist() == [132, 396, 924, 1980, 4092, 8316, 16764]


def test_alaw_silence_code_and_full_scale() -> None:
    assert alaw_decode(b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]


def test_alaw_first_table_entries() -> None:
    assert alaw_decode(bytes(range(8))).tolist() == [
        -5504, -5248, -6016, -5760, -4480, -4224, -4992, -4736,
    ]  # fmt: skip


def test_alaw_segment_first_levels_match_g711_table_1() -> None:
    # 13-bit outputs 1, 33, 66, 132, 264, 528, 1056, 2112 (step 0 of segments 0..7), x8.
    codes = bytes([0xD5, 0xC5, 0xF5, 0xE5, 0x95, 0x85, 0xB5, 0xA5])
    assert alaw_decode(codes).tolist() == [8, 264, 528, 1056, 2112, 4224, 8448, 16896]


def test_silent_frame_encodes_to_idle_codes() -> None:
    zeros = np.zeros(160, dtype=np.int16)
    assert ulaw_encode(zeros) == b"\xff" * 160
    assert alaw_encode(zeros) == b"\xd5" * 160
    assert ulaw_decode(b"\xff" * 160).tolist() == [0] * 160


def test_full_scale_encodes_to_extreme_codes() -> None:
    extremes = np.array([32767, -32768], dtype=np.int16)
    assert ulaw_encode(extremes) == b"\x80\x00"
    assert alaw_encode(extremes) == b"\xaa\x2a"


def test_boundaries_follow_g191_ones_complement_convention() -> None:
    # mu-law: 14-bit decision value 1 is 16-bit 4; negatives mirror as x -> -x - 1.
    ulaw = np.array([3, 4, -4, -5], dtype=np.int16)
    assert ulaw_encode(ulaw) == b"\xff\xfe\x7f\x7e"
    # A-law: first decision value (13-bit 2) is 16-bit 16.
    alaw = np.array([15, 16, -16, -17], dtype=np.int16)
    assert alaw_encode(alaw) == b"\xd5\xd4\x55\x54"


@pytest.mark.parametrize(
    ("encode", "scale", "segment_ends", "segment_of"),
    [
        # G.711 table 2: mu-law segment end decision values (14-bit), x4 for 16-bit.
        (ulaw_encode, 4, [31, 95, 223, 479, 991, 2015, 4063], lambda c: ((~c) >> 4) & 7),
        # G.711 table 1: A-law segment end decision values (13-bit), x8 for 16-bit.
        (alaw_encode, 8, [32, 64, 128, 256, 512, 1024, 2048], lambda c: ((c ^ 0x55) >> 4) & 7),
    ],
    ids=["ulaw", "alaw"],
)
def test_segment_changes_exactly_at_g711_decision_values(
    encode: Encoder, scale: int, segment_ends: list[int], segment_of: Callable[[int], int]
) -> None:
    for segment, end in enumerate(segment_ends):
        below, at = encode(np.array([scale * end - 1, scale * end], dtype=np.int16))
        assert (segment_of(below), segment_of(at)) == (segment, segment + 1), end


# --- whole-table properties ------------------------------------------------------------------


def _reference_ulaw_encode(x: npt.NDArray[np.int16]) -> npt.NDArray[np.int32]:
    # Decision-value search: level (s, m) = ((2m + 33) << s) - 33 (14-bit), its interval ends
    # half a step (2**s) above it; an input equal to a decision value goes to the upper level.
    s, m = np.divmod(np.arange(127), 16)
    upper_decisions = ((2 * m + 33) << s) - 33 + (1 << s)
    index = np.searchsorted(upper_decisions, _ones_complement_magnitude(x) >> 2, side="right")
    return ~((x < 0).astype(np.int32) << 7 | index) & 0xFF


def _reference_alaw_encode(x: npt.NDArray[np.int16]) -> npt.NDArray[np.int32]:
    e, m = np.divmod(np.arange(127), 16)
    level = np.where(e == 0, 2 * m + 1, (2 * m + 33) << np.maximum(e - 1, 0))
    half_step = np.where(e <= 1, 1, 1 << np.maximum(e - 1, 0))
    upper_decisions = level + half_step
    index = np.searchsorted(upper_decisions, _ones_complement_magnitude(x) >> 3, side="right")
    return ((x >= 0).astype(np.int32) << 7 | index) ^ 0x55


def test_ulaw_encode_matches_decision_value_search_for_all_inputs() -> None:
    assert np.array_equal(_codes(ulaw_encode(ALL_PCM16)), _reference_ulaw_encode(ALL_PCM16))


def test_alaw_encode_matches_decision_value_search_for_all_inputs() -> None:
    assert np.array_equal(_codes(alaw_encode(ALL_PCM16)), _reference_alaw_encode(ALL_PCM16))


@pytest.mark.parametrize(
    ("encode", "decode", "step_of", "overload"),
    [
        (ulaw_encode, ulaw_decode, lambda c: 8 << (((~c) >> 4) & 7), 4 * 8159),
        (alaw_encode, alaw_decode, lambda c: 16 << max(((c ^ 0x55) >> 4 & 7) - 1, 0), 32768),
    ],
    ids=["ulaw", "alaw"],
)
def test_round_trip_error_within_half_a_step_for_all_inputs(
    encode: Encoder, decode: Decoder, step_of: Callable[[int], int], overload: int
) -> None:
    codes = encode(ALL_PCM16)
    decoded = decode(codes).astype(np.int32)
    error = np.abs(decoded - ALL_PCM16.astype(np.int32))
    half_step = np.array([step_of(c) // 2 for c in range(256)])[_codes(codes)]
    in_range = _ones_complement_magnitude(ALL_PCM16) < overload
    assert np.all(error[in_range] <= half_step[in_range])
    # Beyond the overload point everything maps to the largest magnitude.
    assert np.all(np.abs(decoded[~in_range]) == np.abs(decode(ALL_CODES).astype(np.int32)).max())


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]
)
def test_quantiser_is_monotonic(encode: Encoder, decode: Decoder) -> None:
    assert np.all(np.diff(decode(encode(ALL_PCM16)).astype(np.int32)) >= 0)


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_ones_complement_inputs_get_mirrored_codes(encode: Encoder) -> None:
    codes = _codes(encode(ALL_PCM16))
    mirrored = _codes(encode(~ALL_PCM16))
    assert np.array_equal(codes ^ 0x80, mirrored)


def test_every_code_survives_decode_encode() -> None:
    ulaw = _codes(ulaw_encode(ulaw_decode(ALL_CODES)))
    expected = np.arange(256)
    expected[0x7F] = 0xFF  # negative zero is re-encoded as positive zero
    assert np.array_equal(ulaw, expected)
    assert alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES


# --- API contract ----------------------------------------------------------------------------


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_bytes_input_is_little_endian_s16(encode: Encoder) -> None:
    pcm = np.array([0, 1000, -1000, 32767, -32768, 12345], dtype=np.int16)
    le_bytes = pcm.astype("<i2").tobytes()
    assert encode(le_bytes) == encode(pcm)
    assert encode(bytearray(le_bytes)) == encode(pcm)
    assert encode(memoryview(le_bytes)) == encode(pcm)


@pytest.mark.parametrize("decode", [ulaw_decode, alaw_decode])
def test_decode_returns_int16_one_sample_per_byte(decode: Decoder) -> None:
    out = decode(b"\x12" * 160)
    assert out.dtype == np.int16
    assert out.shape == (160,)
    assert decode(b"").shape == (0,)


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_encode_rejects_odd_bytes_and_wrong_dtype(encode: Encoder) -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        encode(b"\x00\x00\x00")
    with pytest.raises(TypeError, match="int16"):
        encode(np.zeros(4, dtype=np.float32))
