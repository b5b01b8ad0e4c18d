"""Cut a byte stream of arbitrary-size chunks into fixed-size frames (160-byte 20 ms mu-law)."""

from typing import Final

from sip4ai.audio.formats import FRAME_MS, AudioFormat, Encoding, silence_byte


class FrameChunker:
    """Re-frames a byte stream; the remainder is kept for the next ``push``.

    Byte-oriented: it never splits or joins samples itself, so the input stream must be sample
    aligned overall (PCM16 chunks may split a sample; the next chunk completes it).
    """

    def __init__(self, frame_bytes: int, *, encoding: Encoding = Encoding.PCM16) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        if encoding is Encoding.PCM16 and frame_bytes % 2:
            raise ValueError(f"a PCM16 frame needs an even byte count, got {frame_bytes}")
        self.frame_bytes: Final = frame_bytes
        self.encoding: Final = encoding
        self._pad: Final = bytes([silence_byte(encoding)]) * frame_bytes
        self._pending = bytearray()

    @classmethod
    def for_format(cls, fmt: AudioFormat, frame_ms: int = FRAME_MS) -> "FrameChunker":
        return cls(fmt.bytes_per_frame(frame_ms), encoding=fmt.encoding)

    @property
    def pending_bytes(self) -> int:
        """Bytes held back, always fewer than ``frame_bytes``."""
        return len(self._pending)

    def push(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Append ``data`` and return every complete frame now available, oldest first."""
        size = self.frame_bytes
        num_bytes = data.nbytes if isinstance(data, memoryview) else len(data)
        if not self._pending and num_bytes == size:
            return [bytes(data)]  # common case: the source already sends one frame per chunk
        pending = self._pending
        pending += data
        end = len(pending) - len(pending) % size
        frames = [bytes(pending[start : start + size]) for start in range(0, end, size)]
        del pending[:end]
        return frames

    def flush(self) -> list[bytes]:
        """Return the remainder padded with silence to a full frame (or nothing), and empty."""
        if not self._pending:
            return []
        frame = bytes(self._pending) + self._pad[len(self._pending) :]
        self._pending.clear()
        return [frame]

    def clear(self) -> int:
        """Drop the remainder (barge-in); returns the number of bytes dropped."""
        dropped = len(self._pending)
        self._pending.clear()
        return dropped
