from __future__ import annotations

import pytest

from sip4ai.systemd import Notifier, watchdog_interval_s


pytestmark = pytest.mark.unit

PID, PPID = 4242, 4200


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(PID)}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(PPID)}, 10.0),  # one-file launcher
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env, PID, PPID) == expected


async def test_notifier_is_silent_without_socket() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.stopping()
    await notifier.watchdog()  # returns at once instead of pinging nobody
