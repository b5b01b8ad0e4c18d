"""The QA load kit (testbed.load) at a tiny size: the report has its parts and its counts add up.

Behaviour only: no figure is compared with a speed target (those are bench material).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.harness.sipp import SippFactory
from testbed.load.cli import main
from testbed.load.report import format_table
from testbed.load.runner import LoadOptions, capture_possible, run


pytestmark = pytest.mark.e2e

SECTIONS = (
    "settings",
    "host",
    "calls",
    "sipp",
    "sip4ai_records",
    "peak_concurrency",
    "resources",
    "pacing",
    "send_ticks",
    "underruns",
    "turn_latency",
    "verdict",
)


def check_counts(report: dict[str, Any]) -> None:
    """The invariants every report keeps, whatever happened in the run."""
    calls, sipp, records = report["calls"], report["sipp"], report["sip4ai_records"]
    assert calls["succeeded"] + calls["failed"] == calls["planned"], calls
    assert calls["attempted"] <= calls["planned"]
    assert sipp["succeeded"] + sipp["failed"] + sipp["still_running"] == sipp["attempted"], sipp
    assert records["succeeded"] + records["failed"] + records["still_active"] == records["records"]
    assert calls["succeeded"] <= min(sipp["succeeded"], records["succeeded"])
    if calls["failed"]:
        assert calls["failed_by_reason"], "a failed call must come with a reason"
    assert report["verdict"]["all_calls_succeeded"] is (calls["failed"] == 0)
    assert all(isinstance(v, int) and v > 0 for v in calls["failed_by_reason"].values())


def test_inbound_calls_with_the_mock_are_all_counted(tmp_path: Path, sipp: SippFactory) -> None:
    # `sipp` only makes the test skip (or fail in CI) without the testbed binaries
    report = run(LoadOptions(calls=4, rate_cps=4.0, duration_s=4.0, run_dir=tmp_path))
    for section in SECTIONS:
        assert section in report, section
    check_counts(report)
    assert report["calls"] == {
        "planned": 4,
        "attempted": 4,
        "succeeded": 4,
        "failed": 0,
        "failed_by_reason": {},
    }, report["calls"]
    assert report["peak_concurrency"]["sip4ai_active_calls"] >= 1
    assert report["resources"]["sip4ai_rss_peak_mb"] >= report["resources"]["sip4ai_rss_idle_mb"]
    assert report["turn_latency"]["turns"] >= 1, report["turn_latency"]  # the mock replied
    assert report["underruns"] is not None
    talk = report["conversation"]
    assert talk["ai_replies"] >= 1 and talk["user_turns"] >= 1, talk
    if capture_possible():
        assert report["pacing"]["streams"] == 4, report["pacing"]
        assert report["pacing"]["p99_ms"] >= report["pacing"]["p50_ms"] >= 0
    table = format_table(report)
    assert "calls succeeded" in table and "turn latency" in table


def test_calls_refused_by_sip4ai_are_reported_as_failed(tmp_path: Path, sipp: SippFactory) -> None:
    # 4 calls of 4 s within 0.3 s, but sip4ai takes 2 at once: the others are refused
    report = run(LoadOptions(calls=4, rate_cps=10.0, duration_s=4.0, max_calls=2, run_dir=tmp_path))
    check_counts(report)
    assert report["calls"]["failed"] >= 1, report["calls"]
    assert any(k.startswith("sipp:") for k in report["calls"]["failed_by_reason"])
    assert not report["verdict"]["all_calls_succeeded"]


def test_outbound_calls_through_the_api_in_file_mode(
    tmp_path: Path, sipp: SippFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "report.json"
    code = main(
        [
            "--profile",
            "outbound",
            "--ai",
            "file",
            "--calls",
            "3",
            "--rate",
            "3",
            "--duration",
            "3",
            "--run-dir",
            str(tmp_path),
            "--output",
            str(output),
        ]
    )
    report = json.loads(output.read_text())
    check_counts(report)
    assert code == (0 if report["verdict"]["all_calls_succeeded"] else 1)
    assert report["api"]["posted"] == 3
    assert report["api"]["accepted"] + sum(report["api"]["failed_by_reason"].values()) == 3
    assert report["calls"]["succeeded"] == 3, report["calls"]
    assert report["turn_latency"]["turns"] in (None, 0)  # no provider in AUDIO_FILE mode
    assert "calls attempted" in capsys.readouterr().out


def test_ramp_profile_places_every_call(tmp_path: Path, sipp: SippFactory) -> None:
    report = run(
        LoadOptions(
            calls=5, rate_cps=3.0, duration_s=3.0, profile="ramp", ramp_s=2.0, run_dir=tmp_path
        )
    )
    check_counts(report)
    assert report["settings"]["profile"] == "ramp"
    assert report["calls"]["attempted"] == 5, report["sipp"]
