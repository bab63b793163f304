"""Shared set-up for batch-replay tests: recorded runs appended straight to the log,
a configuration that names the simulator's models without serving them, and a judge
caller that answers judge prompts only (any other call fails the test)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

from service.config import Config
from service.domain.events import (
    AnswerFinalized,
    Event,
    JudgeDecided,
    JudgeIdentity,
    JudgeSpec,
    Message,
    PanelCallSucceeded,
    PanelMember,
    PanelRequest,
    PanelSelected,
    RunRequested,
    Verdict,
)
from service.domain.judging import parse_judge_task
from service.providers.outcomes import CallSucceeded
from service.providers.simulator import default_world
from service.serving import simulator_config
from service.store import NO_STREAM, EventStore, NewEvent

PANEL = ("sim/model-b", "sim/model-c", "sim/model-e")
RUN_EVENTS_SQL = """
SELECT stream_id, stream_version, event_id, data::text, metadata::text, recorded_at,
       prev_hash, hash
FROM events WHERE stream_id LIKE 'run-%' ORDER BY stream_id, stream_version
"""


def offline_config() -> Config:
    """The simulator's models and presets, at an address nothing listens on."""
    world = default_world()
    names = sorted(world.models)
    prices = {
        n: (world.models[n].input_price_per_m, world.models[n].output_price_per_m) for n in names
    }
    return simulator_config(names, prices, "http://127.0.0.1:9/v1")


def recorded_run(run_id: uuid.UUID, answers: tuple[str, str, str]) -> list[Event]:
    """A finalized run: three panel answers and a majority vote."""
    members = [PanelMember(member_id=f"m{i + 1}", model=m) for i, m in enumerate(PANEL)]
    final = max(answers, key=answers.count)
    return [
        RunRequested(
            run_id=str(run_id),
            messages=[Message(role="user", content=f"Question {run_id}: A, B, C or D?")],
            category="multiple_choice",
            panel=[PanelRequest(model=m) for m in PANEL],
            judge=JudgeSpec(kind="vote"),
        ),
        PanelSelected(members=members, method="fixed"),
        *(
            PanelCallSucceeded(
                member_id=m.member_id,
                model=m.model,
                provider="sim",
                text=f"Answer: {text}",
                finish_reason="stop",
                input_tokens=20,
                output_tokens=5,
                cost_usd=0.0001,
                latency_ms=10.0,
                attempts=[],
            )
            for m, text in zip(members, answers, strict=True)
        ),
        JudgeDecided(
            judge=JudgeIdentity(kind="vote", model=None, prompt_version="vote-v1"),
            final_answer=final,
            verdicts=[
                Verdict(member_id=m.member_id, agrees=a == final)
                for m, a in zip(members, answers, strict=True)
            ],
        ),
        AnswerFinalized(
            answer=final,
            answer_sha256=hashlib.sha256(final.encode()).hexdigest(),
            decided_by="judge",
            latency_ms=30.0,
            cost_usd=0.0003,
            panel_cost_usd=0.0003,
        ),
    ]


async def record_runs(store: EventStore, count: int) -> list[str]:
    """Append ``count`` finalized runs; returns their ids, oldest first."""
    run_ids = []
    for n in range(count):
        run_id = uuid.uuid4()
        answers = ("ABCD"[n % 4], "ABCD"[n % 3], "ABCD"[n % 4])
        meta = {"correlation_id": str(run_id), "tenant": "default", "actor": "test"}
        events = [NewEvent(e, meta) for e in recorded_run(run_id, answers)]
        await store.append_to_stream(f"run-{run_id}", events, NO_STREAM)
        run_ids.append(str(run_id))
    return run_ids


class ScriptedJudge:
    """A judge-only caller (no panel model may be called): backs the first candidate;
    after ``allow`` calls it hangs, so a batch can be stopped midway on purpose."""

    def __init__(self, allow: int | None = None) -> None:
        self.allow = allow
        self.calls = 0
        self.models: list[str] = []

    async def complete(
        self, model_id: str, messages: list[Message], *_: object, **__: object
    ) -> CallSucceeded:
        self.models.append(model_id)
        self.calls += 1
        if self.allow is not None and self.calls > self.allow:
            await asyncio.Event().wait()  # never set: the process "dies" here
        task = parse_judge_task(messages[-1].content)
        assert task is not None, "only judge prompts may reach this caller"
        first = task.candidates[0]
        reply = {
            "chosen": first.label,
            "final_answer": first.answer,
            "verdicts": [{"label": c.label, "agrees": c is first} for c in task.candidates],
        }
        return CallSucceeded(
            text=json.dumps(reply),
            finish_reason="stop",
            input_tokens=100,
            output_tokens=20,
            cost_usd=0.001,
            latency_ms=1.0,
            attempts=[],
        )

    def provider_of(self, model_id: str) -> str:
        return "scripted"
