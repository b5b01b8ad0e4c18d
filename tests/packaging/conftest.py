"""Fixtures for the packaging tests (see helpers.py for the pieces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.helpers import binary_under_test


@pytest.fixture(scope="session")
def sip4ai_binary() -> Path:
    """The one-file binary: $SIP4AI_BINARY, or dist/sip4ai rebuilt when older than the sources."""
    return binary_under_test()
