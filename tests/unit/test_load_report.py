"""The load kit's report arithmetic (testbed/load/report.py) on recorded inputs."""

from __future__ import annotations

import math

import pytest

from testbed.load.report import (
    combine_outcomes,
    conversation,
    histogram_bucket,
    histogram_delta,
    histogram_quantile,
    metric_delta,
    records_outcome,
)


pytestmark = pytest.mark.unit

BEFORE = """\
# HELP sip4ai_turn_latency_seconds Caller stopped speaking -> first frame of the AI's reply.
# TYPE sip4ai_turn_latency_seconds histogram
sip4ai_turn_latency_seconds_bucket{le="0.3",provider="openai"} 1.0
sip4ai_turn_latency_seconds_bucket{le="0.5",provider="openai"} 2.0
sip4ai_turn_latency_seconds_bucket{le="+Inf",provider="openai"} 2.0
sip4ai_audio_underruns_total 3.0
"""
AFTER = """\
sip4ai_turn_latency_seconds_bucket{le="0.3",provider="openai"} 3.0
sip4ai_turn_latency_seconds_bucket{le="0.5",provider="openai"} 10.0
sip4ai_turn_latency_seconds_bucket{le="+Inf",provider="openai"} 12.0
sip4ai_turn_latency_seconds_bucket{le="0.3",provider="gemini"} 0.0
sip4ai_turn_latency_seconds_bucket{le="0.5",provider="gemini"} 2.0
sip4ai_turn_latency_seconds_bucket{le="+Inf",provider="gemini"} 2.0
sip4ai_audio_underruns_total 5.0
"""


def test_histogram_delta_sums_label_sets_and_subtracts_the_start() -> None:
    buckets = histogram_delta(BEFORE, AFTER, "sip4ai_turn_latency_seconds")
    assert buckets == [(0.3, 2.0), (0.5, 10.0), (math.inf, 12.0)]


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.3, 2.0), (0.5, 10.0), (math.inf, 12.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.3 + 0.2 * (6 - 2) / 8)
    assert histogram_bucket(buckets, 0.5) == (0.3, 0.5)
    # the 95th observation lies in +Inf: the highest finite bound, as histogram_quantile does
    assert histogram_quantile(buckets, 0.95) == 0.5
    assert histogram_quantile([(0.3, 0.0), (math.inf, 0.0)], 0.5) is None


def test_metric_delta_is_none_when_the_metric_is_not_exposed() -> None:
    assert metric_delta(BEFORE, AFTER, "sip4ai_audio_underruns_total") == 2.0
    assert metric_delta(BEFORE, AFTER, "sip4ai_no_such_metric") is None


def test_a_record_succeeds_only_when_the_far_party_hung_up() -> None:
    records: list[dict[str, str | None]] = [
        {"status": "completed", "end_reason": "remote_hangup"},
        {"status": "completed", "end_reason": "provider_failed"},
        {"status": "failed", "end_reason": "busy"},
        {"status": "in_progress", "end_reason": None},
    ]
    outcome = records_outcome(records)
    assert outcome["succeeded"] == 1 and outcome["failed"] == 2 and outcome["still_active"] == 1
    assert outcome["failed_by_reason"] == {
        "completed:provider_failed": 1,
        "failed:busy": 1,
    }


def test_a_call_counts_only_if_both_sides_agree_and_missing_records_are_named() -> None:
    placed = {
        "attempted": 10,
        "succeeded": 10,
        "failed_by_reason": {},
        "not_started": 0,
    }
    sip4ai = {
        "records": 9,
        "succeeded": 8,
        "failed_by_reason": {"completed:media_timeout": 1},
        "still_active": 0,
    }
    combined = combine_outcomes(10, placed, sip4ai, {"503": 1})
    assert combined["succeeded"] == 8 and combined["failed"] == 2
    assert combined["failed_by_reason"] == {
        "api:503": 1,
        "sip4ai:completed:media_timeout": 1,
        "sip4ai:no_call_record": 1,
    }


def test_a_reply_cut_by_barge_in_is_a_strict_prefix_of_a_scripted_reply() -> None:
    records = [
        {
            "transcript": [
                {"speaker": "ai", "text": "Hello, thanks for calling"},
                {"speaker": "user", "text": "Hi"},
                {"speaker": "ai", "text": "Of course, for"},
            ]
        }
    ]
    counted = conversation(records, ["Hello, thanks for calling", "Of course, for how many?"])
    assert counted["ai_replies"] == 2
    assert counted["user_turns"] == 1
    assert counted["ai_replies_cut_by_barge_in"] == 1
