"""The pjsua2 backend's hard limit on the wire: 4 simultaneous calls per process (the wheel's
PJSUA_MAX_CALLS). A fifth INVITE gets 486 from pjsua itself, and sip4ai says why in one log line.
"""

from __future__ import annotations

import logging

import pytest

from sip4ai.sip.interface import IncomingCall, LegEnded
from testbed.harness.kamailio import Kamailio
from testbed.harness.sipp import SippFactory, SippOptions
from testbed.harness.tones import ToneLibrary
from tests.e2e.sip_engine_kit import EngineSession, engine_config, finish


pytestmark = pytest.mark.e2e

pytest.importorskip("pjsua2", reason="the pjsua2 backend needs pip install 'sip4ai[pjsua2]'")


async def test_fifth_simultaneous_call_gets_486_and_a_log_line(
    kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sip4ai")
    cfg = engine_config(kamailio, engine="pjsua2", max_calls=10)
    async with EngineSession(cfg) as session:
        await session.registered()
        uac = sipp.start(
            SippOptions(
                "uac_invite_rtp",
                remote=kamailio.address,
                service="aibot",
                audio=tones.get(440),
                calls=5,
                max_concurrent=5,
                rate_cps=20,
                call_duration_ms=2500,
            ),
            wait_ready=False,
        )
        result = await finish(uac)
        await session.wait(LegEnded, lambda _: len(session.of(LegEnded)) == 4)
    assert len(session.of(IncomingCall)) == 4
    assert result.stats is not None and result.stats.successful_calls == 4, result.describe()
    assert result.unexpected_codes == (486,), result.describe()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    capped = [w for w in warnings if w.startswith("! sip.max_calls=10 but") and "at most 4" in w]
    assert len(capped) == 1, warnings  # said once at start
    busy = [w for w in warnings if w.startswith("! INVITE rejected with 486")]
    assert len(busy) == 1, warnings
    assert "all 4 call slots are in use" in busy[0] and "at most 4" in busy[0], busy
