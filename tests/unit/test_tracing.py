"""Spans cost nothing until a tracer provider is configured."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from service import tracing


@pytest.mark.parametrize("unset", [trace.ProxyTracerProvider(), trace.NoOpTracerProvider()])
def test_no_spans_are_made_while_no_provider_is_configured(
    monkeypatch: pytest.MonkeyPatch, unset: trace.TracerProvider
) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: unset)
    with tracing.model_call_span("sim", "sim/model-a", "member") as span:
        assert span is None
    with tracing.run_span("run-1", "arithmetic", None) as span:
        assert span is None


def test_spans_are_made_once_a_provider_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = TracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    with tracing.model_call_span("sim", "sim/model-a", "member") as span:
        assert span is not None and span.is_recording()
