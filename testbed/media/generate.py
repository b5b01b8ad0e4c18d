"""Write raw 8 kHz G.711 tone files for SIPp's rtp_stream.

    python -m testbed.media.generate OUT_DIR [--freq 440 --freq 1000] [--seconds 10] [--law ulaw]

The e2e fixtures generate the same files at runtime (testbed.harness.tones.ToneLibrary), so
nothing binary is committed; this command is for QA scripts and manual SIPp runs, e.g.
``sipp ... -key audio "OUT_DIR/tone440hz_10s.ulaw,-1,0"`` (PT 0 for ulaw, 8 for alaw).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from testbed.harness.tones import ToneLibrary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--freq", type=float, action="append", help="Hz, repeatable")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--law", choices=("ulaw", "alaw"), action="append")
    args = parser.parse_args(argv)
    library = ToneLibrary(args.out_dir, duration_s=args.seconds)
    for freq in args.freq or [440.0, 1000.0]:
        for law in args.law or ["ulaw", "alaw"]:
            tone = library.get(freq, law)
            print(f'{tone.path}  (-key audio "{tone.sipp_audio_key()}")')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
