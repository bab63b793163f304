"""OpenTelemetry spans by the GenAI semantic conventions; run-bound log lines."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from litestar.testing import AsyncTestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


async def test_spans_follow_genai_conventions(client: AsyncTestClient[Any]) -> None:
    EXPORTER.clear()
    body = (
        await client.post(
            "/v1/fusions", json={"prompt": "2+2?", "panel": ["mock/a", "mock/b", "mock/down"]}
        )
    ).json()
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    run = spans["fusion"]
    assert run.attributes["fusion.run_id"] == body["run_id"]
    chats = [s for s in EXPORTER.get_finished_spans() if s.name.startswith("chat ")]
    assert sorted(s.name for s in chats) == [
        "chat mock/a",
        "chat mock/b",
        "chat mock/down",
        "chat mock/judge",
    ]
    for span in chats:
        assert span.context.trace_id == run.context.trace_id
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert span.attributes["gen_ai.operation.name"] == "chat"
        assert span.attributes["gen_ai.provider.name"] == "mock"
        assert span.attributes["gen_ai.request.model"] == span.name.removeprefix("chat ")
    ok = spans["chat mock/a"].attributes
    assert ok["gen_ai.usage.input_tokens"] == 10 and ok["gen_ai.usage.output_tokens"] == 5
    assert spans["chat mock/down"].attributes["error.type"] == "server_error"


async def test_run_log_lines_carry_the_run_id(client: AsyncTestClient[Any]) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        body = (await client.post("/v1/fusions", json={"prompt": "2+2?"})).json()
    summary = [entry for entry in logs if entry["event"] == "run.summary"]
    assert len(summary) == 1
    assert summary[0]["run_id"] == body["run_id"]
    assert summary[0]["status"] == "finalized"
