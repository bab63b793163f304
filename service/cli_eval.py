"""``fusion-ledger eval DATASET.jsonl``: run a dataset through a running service's
HTTP API (like ``fuse`` and ``replay``), record each line's expected answer as a
dataset outcome, and print the final answer against each panel model.

Interrupted? Run the same command again: lines already run come back as their
recorded runs and outcomes (see service/evaluation/runner.py), the rest run now.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
import httpx
import msgspec

from service.cli_http import (
    api_key_option,
    bearer,
    fail_response,
    refused_scope,
    scope_probe,
    unanswered,
)
from service.cli_output import DataTable, console, fail, inline, progress_bar
from service.evaluation import (
    DatasetError,
    EvalFailed,
    EvalItem,
    EvalSpec,
    ItemResult,
    SummaryRow,
    load_dataset,
    run_eval,
    summarize,
)

_RESUME = "runs made so far are kept: run the same command again to resume"


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What ``--json`` prints."""

    eval: str
    dataset: str
    lines: int
    outcomes_recorded: int
    outcomes_existing: int
    summary: list[SummaryRow]
    items: list[dict[str, Any]]


def _spec(name: str, preset: str | None, panel: str | None, judge: str | None) -> EvalSpec:
    models = tuple(p.strip() for p in panel.split(",") if p.strip()) if panel else None
    judge_spec = None
    if judge:
        kind, _, model = judge.partition(":")
        judge_spec = (("kind", kind),) + ((("model", model),) if model else ())
    return EvalSpec(name=name, preset=preset, panel=models or None, judge=judge_spec)


def _report(name: str, dataset: Path, results: list[ItemResult]) -> Report:
    existing = sum(r.outcome.existing for r in results)
    return Report(
        eval=name,
        dataset=str(dataset),
        lines=len(results),
        outcomes_recorded=len(results) - existing,
        outcomes_existing=existing,
        summary=summarize(results),
        items=[
            {
                "line": r.item.line,
                "id": r.item.id,
                "run_id": r.run.run_id,
                "status": r.run.status,
                "final_correct": r.outcome.final_correct,
                "outcome": "existing" if r.outcome.existing else "recorded",
            }
            for r in results
        ],
    )


def _cell(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def print_report(report: Report) -> None:
    """The summary as an aligned table."""
    resumed = (
        f", {report.outcomes_existing} recorded before (resumed)"
        if report.outcomes_existing
        else ""
    )
    console.print(
        f"eval [bold]{inline(report.eval)}[/bold]: {report.lines} lines, "
        f"{report.outcomes_recorded} outcomes recorded now{resumed}"
    )
    table = DataTable(
        title="final answer vs each panel model",
        caption="accuracy = correct / n; a failed call or run counts as not correct",
    )
    table.add_column("system")
    for header in ("n", "correct", "failed", "accuracy", "mean cost $", "mean latency ms"):
        table.add_column(header, justify="right")
    for row in report.summary:
        table.add_row(
            row.system,
            str(row.n),
            str(row.correct),
            str(row.failed),
            _cell(row.accuracy, ".1%"),
            _cell(row.mean_cost_usd, ".6f"),
            _cell(row.mean_latency_ms, ".1f"),
        )
    console.print(table)


async def _evaluate(
    url: str,
    api_key: str | None,
    request_timeout_s: float,
    spec: EvalSpec,
    items: list[EvalItem],
    concurrency: int,
    quiet: bool,
) -> list[ItemResult]:
    progress = progress_bar("evaluating", quiet=quiet)
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), headers=bearer(api_key), timeout=request_timeout_s, limits=limits
    ) as client:
        method, path, probe = scope_probe("label")  # before any fusion is paid for
        try:
            answered = await client.request(method, path, json=probe)
        except httpx.HTTPError as exc:
            fail(f"{unanswered(url, exc)}; nothing was run")
        if refused_scope(answered):
            fail_response(answered)
        with progress:
            bar = progress.add_task("eval", total=len(items))
            return await run_eval(
                client,
                spec,
                items,
                concurrency=concurrency,
                on_done=lambda _: progress.advance(bar),
            )


@click.command("eval")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--name",
    default=None,
    help="The evaluation's name (default: the dataset file's name); the same name resumes.",
)
@click.option("--preset", default=None)
@click.option("--panel", default=None, help="Comma-separated model ids.")
@click.option("--judge", default=None, help="vote, or KIND:MODEL (synthesize:sim/judge-strong).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N lines.")
@click.option(
    "--url",
    envvar="FUSION_LEDGER_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The service's base URL.",
)
@api_key_option("the fuse and label scopes")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Per request, s.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def eval_command(
    dataset: Path,
    name: str | None,
    preset: str | None,
    panel: str | None,
    judge: str | None,
    concurrency: int,
    limit: int | None,
    url: str,
    api_key: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Run DATASET (JSON lines: prompt, category, expected, optional id) through
    fusion, record each expected answer as a dataset outcome, and compare the final
    answer with each panel model: accuracy, cost, latency. Re-running resumes."""
    try:
        items = load_dataset(dataset)
    except DatasetError as exc:
        fail(f"{dataset} {exc}; nothing was run")
    except OSError as exc:
        fail(f"cannot read {dataset}: {exc}")
    spec = _spec(name or dataset.name, preset, panel, judge)
    chosen = items[:limit] if limit else items
    try:
        results = asyncio.run(
            _evaluate(url, api_key, timeout, spec, chosen, concurrency, quiet=as_json)
        )
    except EvalFailed as exc:
        if exc.resumable:  # exit 1: stopped partway, and running again goes on
            fail(f"{exc}; {_RESUME}", 1)
        if exc.key_reused:  # this name's line was run as another ask
            fail(
                f"{exc}; the eval's name (--name, by default the file's name) and each "
                "line's id name its runs: give another --name for a changed dataset"
            )
        fail(f"{exc}; runs made so far are kept")
    except KeyboardInterrupt:
        fail(f"interrupted; {_RESUME}", 130)
    report = _report(spec.name, dataset, results)
    if as_json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        print_report(report)
