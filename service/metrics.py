"""Prometheus metrics: one registry per application (so several apps in one process,
as in tests, do not collide), rendered at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.providers.outcomes import CallFailed, CallOutcome

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5)


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_latency = Histogram(
            "fusion_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_latency = Histogram(
            "fusion_provider_call_duration_seconds",
            "Provider call latency (all attempts).",
            ["model", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            "fusion_provider_call_errors_total",
            "Failed provider calls by error kind.",
            ["model", "error_kind"],
            registry=r,
        )
        self.judge_outcomes = Counter(
            "fusion_judge_outcomes_total",
            "Judge results (decided, or the fallback taken).",
            ["kind", "outcome"],
            registry=r,
        )
        self.runs = Counter(
            "fusion_runs_total",
            "Runs closed, by status and reason.",
            ["status", "reason"],
            registry=r,
        )
        self.events_appended = Counter(
            "fusion_events_appended_total",
            "Events appended by this process.",
            ["event_type"],
            registry=r,
        )
        self.open_runs = Gauge("fusion_open_runs", "Runs this process is driving.", registry=r)
        self.shed = Counter(
            "fusion_requests_shed_total",
            "Fusion requests refused with 503 because the open-runs bound was reached.",
            registry=r,
        )
        self.overhead = Histogram(
            "fusion_orchestration_overhead_seconds",
            "Time a fusion spends not waiting on a provider: request in to response out, "
            "minus the slowest member and the judge.",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.projection_lag_events = Gauge(
            "fusion_projection_lag_events",
            "Events not yet applied, per projection.",
            ["projection"],
            registry=r,
        )
        self.projection_lag_seconds = Gauge(
            "fusion_projection_lag_seconds",
            "Age of the oldest unapplied event.",
            ["projection"],
            registry=r,
        )

    def record_provider_call(self, model: str, outcome: CallOutcome) -> None:
        """One model call (a member's or a judge's): its latency, and its error if any."""
        kind = outcome.error_kind if isinstance(outcome, CallFailed) else "ok"
        self.provider_latency.labels(model, kind).observe(outcome.latency_ms / 1000)
        if isinstance(outcome, CallFailed):
            self.provider_errors.labels(model, kind).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
