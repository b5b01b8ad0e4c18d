"""Every Prometheus metric sip4ai exports, defined in this one module.

Each ``Metrics`` instance owns its own CollectorRegistry, so several apps (tests) never collide.
Names follow Prometheus conventions: ``sip4ai_`` prefix, base units, ``_total`` for counters.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from sip4ai import __version__


CONTENT_TYPE = CONTENT_TYPE_LATEST

CALL_DURATION_BUCKETS_S = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)


class Metrics:
    def __init__(self, *, engine: str = "none") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.started_at = time.monotonic()
        self.build_info = Info("sip4ai_build", "Build and runtime information.", registry=r)
        self.build_info.info({"version": __version__, "sip_engine": engine})
        self.uptime = Gauge("sip4ai_uptime_seconds", "Seconds since sip4ai started.", registry=r)
        self.uptime.set_function(lambda: time.monotonic() - self.started_at)
        self.sip_registered = Gauge(
            "sip4ai_sip_registered",
            "1 while registered with the SIP registrar, else 0.",
            registry=r,
        )
        self.sip_registration_failures = Counter(
            "sip4ai_sip_registration_failures_total",
            "Registration attempts that failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.active_calls = Gauge(
            "sip4ai_active_calls", "Calls not yet completed or failed.", registry=r
        )
        self.calls = Counter(
            "sip4ai_calls_total",
            "Calls that ended, by direction, final status and end reason.",
            ["direction", "status", "end_reason"],
            registry=r,
        )
        self.call_duration = Histogram(
            "sip4ai_call_duration_seconds",
            "Talk time of ended calls.",
            ["direction"],
            buckets=CALL_DURATION_BUCKETS_S,
            registry=r,
        )
        for direction in ("inbound", "outbound"):
            self.call_duration.labels(direction)
        self.api_requests = Counter(
            "sip4ai_api_requests_total",
            "HTTP API requests by route, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.audio_frames_lost = Counter(
            "sip4ai_audio_frames_lost_total",
            "Caller audio frames lost between the wire and sip4ai.",
            registry=r,
        )

        self.webhook_enqueued = Counter(
            "sip4ai_webhook_events_enqueued_total",
            "Lifecycle webhook events queued for delivery, by event.",
            ["event"],
            registry=r,
        )
        self.webhook_attempts = Counter(
            "sip4ai_webhook_delivery_attempts_total",
            "Webhook delivery attempts by result (2xx, http_4xx, http_5xx, timeout, connect).",
            ["result"],
            registry=r,
        )
        self.webhook_delivered = Counter(
            "sip4ai_webhook_events_delivered_total",
            "Webhook events delivered, by event.",
            ["event"],
            registry=r,
        )
        self.webhook_dropped = Counter(
            "sip4ai_webhook_events_dropped_total",
            "Webhook events given up, by event and reason.",
            ["event", "reason"],
            registry=r,
        )
        self.webhook_pending = Gauge(
            "sip4ai_webhook_outbox_pending", "Webhook events waiting for delivery.", registry=r
        )
        self.webhook_delivery_age = Histogram(
            "sip4ai_webhook_delivery_age_seconds",
            "Time from enqueue to successful delivery.",
            buckets=(0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0),
            registry=r,
        )

        self.turn_latency = Histogram(
            "sip4ai_turn_latency_seconds",
            "Caller stopped speaking -> first frame of the AI's reply sent to the caller.",
            ["provider"],
            buckets=(
                0.05,
                0.1,
                0.2,
                0.25,
                0.3,
                0.35,
                0.4,
                0.45,
                0.5,
                0.6,
                0.75,
                1.0,
                1.5,
                2.0,
                3.0,
                5.0,
            ),
            registry=r,
        )
        self.provider_connect = Histogram(
            "sip4ai_provider_connect_seconds",
            "Start of a provider session -> session ready.",
            ["provider"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.provider_failovers = Counter(
            "sip4ai_provider_failovers",
            "Calls moved off a failed provider, by the provider that failed and what took over.",
            ["provider", "to"],
            registry=r,
        )
        self.send_deviation = Histogram(
            "sip4ai_audio_send_deviation_seconds",
            "Lateness of each 20 ms audio tick of the bridge against its absolute schedule.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1),
            registry=r,
        )
        self.underruns = Counter(
            "sip4ai_audio_underruns_total",
            "20 ms frames inside an AI reply that had no audio yet (the caller heard a gap).",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _fold_result(result: str) -> str:
    """Keep label values few: ``http_503`` -> ``http_5xx``."""
    if result.startswith("http_") and len(result) == 8:
        return f"http_{result[5]}xx"
    return result


class WebhookMetrics:
    """The outbox's observer, feeding the webhook metrics above."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def enqueued(self, event: str) -> None:
        self._m.webhook_enqueued.labels(event).inc()

    def attempted(self, event: str, result: str) -> None:
        self._m.webhook_attempts.labels(_fold_result(result)).inc()

    def delivered(self, event: str, attempts: int, age_s: float) -> None:
        self._m.webhook_delivered.labels(event).inc()
        self._m.webhook_delivery_age.observe(age_s)

    def gave_up(self, event: str, reason: str) -> None:
        self._m.webhook_dropped.labels(event, reason).inc()

    def backlog(self, pending: int) -> None:
        self._m.webhook_pending.set(pending)


class AudioMetrics:
    """What one call's audio bridge reports (the bridge never sees the registry)."""

    def __init__(self, metrics: Metrics, provider: str) -> None:
        self._m = metrics
        self._provider = provider

    def provider_ready(self, seconds: float) -> None:
        self._m.provider_connect.labels(self._provider).observe(seconds)

    def turn_latency(self, seconds: float) -> None:
        self._m.turn_latency.labels(self._provider).observe(seconds)

    def failover(self, to: str) -> None:
        """The call moves from this provider to ``to`` (a provider, audio_file or apology)."""
        self._m.provider_failovers.labels(self._provider, to).inc()
        self._provider = to

    def tick_late(self, seconds: float) -> None:
        self._m.send_deviation.observe(seconds)

    def underruns(self, count: int) -> None:
        if count:
            self._m.underruns.inc(count)
