"""What the parts of a benchmark share: a run directory, one Kamailio and a SIPp factory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from testbed.harness.kamailio import Kamailio
from testbed.harness.sipp import SippFactory


@dataclass
class Lab:
    run_dir: Path
    kamailio: Kamailio
    sipp: SippFactory
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def lab(run_dir: Path, log_level: str = "INFO") -> Iterator[Lab]:
    with Kamailio(run_dir / "kamailio") as kam:
        factory = SippFactory(run_dir)
        try:
            yield Lab(run_dir, kam, factory, {"SIP4AI_LOG_LEVEL": log_level})
        finally:
            factory.close()
