"""Suite-wide rules: every test module carries exactly one category marker."""

from __future__ import annotations

import os

import pytest


CATEGORIES = ("unit", "component", "e2e")

MS = 0.001 * float(os.environ.get("SIP4AI_TEST_TIMEOUT_FACTOR", "1"))
"""One millisecond, scaled for slow machines; write waits as ``500 * MS``."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = sorted(
        {
            item.nodeid.split("::")[0]
            for item in items
            if not any(item.get_closest_marker(name) for name in CATEGORIES)
        }
    )
    if unmarked:
        raise pytest.UsageError(
            "test modules without a category marker (pytestmark = pytest.mark.unit, component "
            "or e2e): " + ", ".join(unmarked)
        )
