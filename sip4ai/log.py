"""Logging set-up: one line per record on stderr (journald adds its own timestamps)."""

from __future__ import annotations

import logging
import sys


FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class DropPii(logging.Filter):
    """Removes ``pii.*`` extras so no handler or formatter can ever emit them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in [k for k in record.__dict__ if k.startswith("pii.")]:
            delattr(record, key)
        return True


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(DropPii())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would log every request line; our metrics count them instead.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
