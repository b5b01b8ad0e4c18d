"""Locations inside the testbed folder (resolved from this file, so any working directory works)."""

from __future__ import annotations

from pathlib import Path


TESTBED_DIR = Path(__file__).resolve().parent.parent
KAMAILIO_CFG = TESTBED_DIR / "kamailio" / "kamailio.cfg"
SIPP_DIR = TESTBED_DIR / "sipp"
MEDIA_DIR = TESTBED_DIR / "media"


def scenario_path(scenario: str | Path) -> Path:
    """A SIPp scenario: a bare name ("uac_invite_rtp" or "uac_invite_rtp.xml") is looked up in
    testbed/sipp/, anything with a directory part is used as given. FileNotFoundError if absent.
    """
    path = Path(scenario)
    if path.parent == Path("."):
        path = SIPP_DIR / (path.name if path.suffix == ".xml" else f"{path.name}.xml")
    if not path.is_file():
        raise FileNotFoundError(f"SIPp scenario not found: {path}")
    return path
