"""The projection and statistics commands against a real database, as subprocesses:
`worker --once`, `projections status|rebuild`, `stats ...`, `profile` (--json and
tables), and a clear usage error for a bad filter."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from service.domain.events import (
    AnswerFinalized,
    JudgeDecided,
    JudgeIdentity,
    JudgeSpec,
    Message,
    PanelCallFailed,
    PanelCallSucceeded,
    PanelMember,
    PanelRequest,
    PanelSelected,
    RunRequested,
    Verdict,
)
from service.projections import runner
from service.store import NO_STREAM, EventStore, NewEvent
from service.store.database import connect
from tests.conftest import TestDatabase

CLI = Path(sys.executable).parent / "fusion-ledger"


async def cli(database: TestDatabase, *args: str, columns: int = 200) -> tuple[int, str, str]:
    command = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "service"]
    process = await asyncio.create_subprocess_exec(
        *command, "--database-url", database.url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
             "COLUMNS": str(columns)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def record_run(store: EventStore, i: int) -> None:
    """A run with one success and one failure, in the catalog's own events."""
    run_id = f"00000000-0000-4000-8000-{i:012d}"
    members = [
        PanelMember(member_id="m0", model="x/good"),
        PanelMember(member_id="m1", model="x/bad"),
    ]
    events: list[Any] = [
        RunRequested(run_id=run_id, messages=[Message(role="user", content="2+2?")],
                     category="arithmetic", panel=[PanelRequest(model="x/good")],
                     judge=JudgeSpec(kind="vote")),
        PanelSelected(members=members, method="fixed"),
        PanelCallSucceeded(member_id="m0", model="x/good", provider="x", text="4",
                           finish_reason="stop", input_tokens=5, output_tokens=1,
                           cost_usd=0.001, latency_ms=120.0, attempts=[]),
        PanelCallFailed(member_id="m1", model="x/bad", provider="x", error_kind="timeout",
                        http_status=None, attempts=[], latency_ms=3000.0, message="timed out"),
        JudgeDecided(judge=JudgeIdentity(kind="vote", model=None, prompt_version="v1"),
                     final_answer="4", verdicts=[Verdict(member_id="m0", agrees=True)]),
        AnswerFinalized(answer="4", answer_sha256="-", decided_by="judge", latency_ms=3100.0,
                        cost_usd=0.001, answer_normalized="4"),
    ]  # fmt: skip
    meta = {"correlation_id": run_id, "tenant": "default", "actor": "test"}
    await store.append_to_stream(f"run-{run_id}", [NewEvent(e, meta) for e in events], NO_STREAM)


async def test_worker_status_rebuild_and_statistics_commands(
    database: TestDatabase, store: EventStore
) -> None:
    for i in range(4):
        await record_run(store, i)

    code, out, err = await cli(database, "projections", "status", "--json")
    assert code == 0, err
    assert {s["name"]: s["lag"]["events"] for s in json.loads(out)} == {
        "runs": 24,
        "model_stats": 24,
    }

    # A running worker owns `runs` (it holds the lock while it lives): --once leaves
    # that one to it and says so, instead of waiting for ever.
    owner = await connect(database.url)
    try:
        assert await owner.fetchval(runner.LOCK_SQL, "runs")
        code, out, err = await cli(database, "worker", "--once", "--json")
    finally:
        await owner.close()
    assert code == 0, err
    assert json.loads(out) == {"applied": 24, "owned_elsewhere": ["runs"]}

    code, out, err = await cli(database, "worker", "--once", "--json")
    assert code == 0, err
    assert json.loads(out) == {"applied": 24, "owned_elsewhere": []}  # the rest, `runs`

    code, out, err = await cli(
        database, "stats", "failures", "--group-by", "model,error_kind", "--json"
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["lag"]["events"] == 0
    assert answer["rows"] == [
        {"model": "x/bad", "error_kind": "timeout", "calls": 4, "failures": 4,
         "failure_rate": 1.0, "mean_latency_ms": 3000.0},
    ]  # fmt: skip

    code, out, err = await cli(database, "profile", "--model", "x/good")
    assert code == 0, err
    assert "x/good" in out and "arithmetic" in out and "x/bad" not in out

    code, out, err = await cli(database, "stats", "judges", "--json")
    assert code == 0, err
    judged = json.loads(out)["rows"]
    assert [(r["judge"], r["runs"]) for r in judged] == [("vote", 4)]
    # At 80 columns the figures go to as many tables as they need, each cell whole
    # (every one was squeezed to "…" before), the labels repeated in each.
    for command, header in ((["stats", "judges"], "posterior_accuracy"),
                            (["profile"], "judge_agreement")):  # fmt: skip
        code, out, err = await cli(database, *command, columns=80)
        assert code == 0, err
        assert "…" not in out and max(map(len, out.splitlines())) <= 80, out
        assert header in out  # headers whole too
    # Narrower than the labels and one figure: a table per row, a field a line (the
    # judge and category columns collapsed to nothing at 60 columns).
    code, out, err = await cli(database, "stats", "judges", columns=40)
    assert code == 0, err
    assert "…" not in out and max(map(len, out.splitlines())) <= 40, out
    assert "vote" in out and "posterior_accuracy" in out

    code, out, err = await cli(database, "projections", "rebuild", "model_stats", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["events"] == 24

    code, out, err = await cli(database, "stats", "failures", "--group-by", "colour")
    assert code == 2 and "colour" in err
