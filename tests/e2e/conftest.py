"""e2e fixtures: thin wrappers over testbed.harness (QA scripts and bench/ import that directly).

Fixtures:
    kamailio      one Kamailio per session (UDP+TCP and TLS on free loopback ports); tests set
                  their own static routes. Its log lines from a failing test are attached to
                  the test report.
    sipp          SippFactory for this test (run dir = tmp_path); leftovers stopped afterwards.
    rtp_capture   CaptureFactory for this test; captures stopped afterwards.
    tones         ToneLibrary: G.711 tone files generated once per session.
    sip_backend   parametrizes a test over the SIP backends (baresip, pjsua2).

The binaries come from apt (kamailio, sip-tester, tcpdump). Without them the tests are
skipped, unless SIP4AI_E2E_REQUIRED=1 (set it in CI) turns that into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from sip4ai.config import SipEngineName
from testbed.harness.capture import CaptureFactory
from testbed.harness.kamailio import Kamailio
from testbed.harness.sipp import SippFactory
from testbed.harness.tones import ToneLibrary
from tests.e2e.sip_engine_kit import BACKENDS, use_backend


REQUIRED_BINARIES = ("kamailio", "sipp", "tcpdump", "openssl")
_KAMAILIO_LOG_OFFSET = pytest.StashKey[int]()


def _require_binaries() -> None:
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if not missing:
        return
    message = (
        f"e2e testbed needs {', '.join(missing)} on PATH "
        "(apt-get install kamailio sip-tester tcpdump openssl)"
    )
    if os.environ.get("SIP4AI_E2E_REQUIRED") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def tones(tmp_path_factory: pytest.TempPathFactory) -> ToneLibrary:
    return ToneLibrary(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def kamailio_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    _require_binaries()
    kam = Kamailio(tmp_path_factory.mktemp("kamailio"), tls=True)
    kam.start()
    try:
        yield kam
    finally:
        kam.close()


@pytest.fixture
def kamailio(kamailio_session: Kamailio, request: pytest.FixtureRequest) -> Kamailio:
    """The session's Kamailio, started again if an earlier test left it stopped."""
    if not kamailio_session.running:
        kamailio_session.start()
    request.node.stash[_KAMAILIO_LOG_OFFSET] = len(kamailio_session.log_text())
    return kamailio_session


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippFactory]:
    _require_binaries()
    factory = SippFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def rtp_capture(tmp_path: Path) -> Iterator[CaptureFactory]:
    _require_binaries()
    factory = CaptureFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(params=BACKENDS)
def sip_backend(request: pytest.FixtureRequest) -> Iterator[SipEngineName]:
    """Runs the test once per SIP backend (``sip.engine``); engine_config() picks it up.

    pjsua2 is skipped when its wheel is not installed (only on Linux x86_64, Python <= 3.12),
    unless SIP4AI_E2E_REQUIRED=1.
    """
    name: SipEngineName = request.param
    if name == "pjsua2" and importlib.util.find_spec("pjsua2") is None:
        message = "the pjsua2 backend needs pjsua2-python (pip install 'sip4ai[pjsua2]')"
        if os.environ.get("SIP4AI_E2E_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    use_backend(name)
    try:
        yield name
    finally:
        use_backend("baresip")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the Kamailio log lines written during a failed test to its report."""
    report = yield
    offset = item.stash.get(_KAMAILIO_LOG_OFFSET, None)
    kam = getattr(item, "funcargs", {}).get("kamailio")
    if report.failed and offset is not None and isinstance(kam, Kamailio):
        report.sections.append(("kamailio log (this test)", kam.log_text()[offset:][-20000:]))
    return report
