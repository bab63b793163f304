"""``fusion-ledger replay``: re-judge past runs through a running service's HTTP API,
with a progress bar while the batch runs and the judge comparison as aligned tables.

A batch runs in the service, not in the command: it is named on stderr as soon as it
is accepted, ``--batch ID`` follows it again, and it is submitted under an
Idempotency-Key derived from its filter and judge, so the same command run again finds
it instead of replaying (and paying for) every run twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
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
from service.cli_output import DataTable, console, fail, inline, note, progress_bar

_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 date or time, or a span back from now ('30m', '12h', '7d', '2w').

    A span counts back from the start of the current minute (m, h) or hour (d, w): the
    same command run again shortly after asks for the same times, and so for the batch
    it submitted before (its Idempotency-Key is made of them)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        try:
            return _whole(now or datetime.now(UTC), unit) - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:  # before year 1
            raise click.BadParameter(f"{text!r}: reaches back beyond any date") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: give an ISO date/time or a span like 7d") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _whole(now: datetime, unit: str) -> datetime:
    """``now`` down to its minute, or to its hour for spans of days and weeks: the
    span grows by at most a 60th of an hour or a 24th of a day."""
    minute = now.replace(second=0, microsecond=0)
    return minute.replace(minute=0) if unit in ("d", "w") else minute


def _utc_text(text: str) -> str:
    return parse_moment(text).astimezone(UTC).isoformat()


def batch_key(body: dict[str, Any]) -> str:
    """The Idempotency-Key of a batch: its filter (absolute times) and judge as sent.
    Not its concurrency: the service does not compare that either, and a batch asked
    again with another is still the same batch."""
    return f"replay:{_digest(body['filter'], body['judge'])}"


def _digest(*parts: Any) -> str:
    """A short stable name for JSON-able parts (keys sorted)."""
    return hashlib.sha256(msgspec.json.encode(parts, order="sorted")).hexdigest()[:40]


def judge_body(
    judge: str, weighted: bool, informed: bool, fallback: str, allow_panel_model: bool
) -> dict[str, Any]:
    """The judge spec from KIND[:MODEL]."""
    kind, _, model = judge.partition(":")
    body: dict[str, Any] = {"kind": kind, "fallback": fallback}
    if model:
        body["model"] = model
    if weighted:
        body["weighted"] = True
    if informed:
        body["informed"] = True
    if allow_panel_model:
        body["allow_panel_model"] = True
    return body


def _emit_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


@click.command("replay")
@click.option(
    "--judge", "judge", default=None, help="vote, or KIND:MODEL (select:sim/judge-strong)."
)
@click.option("--run", "run_id", default=None, help="Replay this one run instead of a batch.")
@click.option(
    "--batch",
    "batch_id",
    default=None,
    help="Follow and report this batch, submitted before: nothing new is submitted, "
    "and the judge and filter options are not used.",
)
@click.option("--since", default=None, help="Runs from this time (ISO 8601, or 7d / 12h back).")
@click.option("--until", default=None, help="Runs before this time (ISO 8601, or a span back).")
@click.option("--category", default=None)
@click.option("--preset", default=None)
@click.option("--model", default=None, help="Only runs with this model on the panel.")
@click.option(
    "--ground-truth/--no-ground-truth",
    "has_ground_truth",
    default=None,
    help="Only runs with (or without) a recorded expected answer.",
)
@click.option("--weighted", is_flag=True, help="Weighted vote.")
@click.option("--informed", is_flag=True, help="Give an LLM judge the members' track records.")
@click.option(
    "--fallback", type=click.Choice(["vote", "first_success", "fail"]), default="vote",
    show_default=True, help="What answers when the judge fails.",
)  # fmt: skip
@click.option("--allow-panel-model", is_flag=True, help="Let a panel model judge.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--force", is_flag=True, help="With --run: a new replay even if one exists.")
@click.option(
    "--url",
    envvar="FUSION_LEDGER_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The service's base URL.",
)
@api_key_option("the fuse and read scopes")
@click.option(
    "--poll", "poll_s", type=click.FloatRange(0.05), default=0.5, show_default=True,
    help="Seconds between progress checks.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def replay_command(
    judge: str | None,
    run_id: str | None,
    batch_id: str | None,
    since: str | None,
    until: str | None,
    category: str | None,
    preset: str | None,
    model: str | None,
    has_ground_truth: bool | None,
    weighted: bool,
    informed: bool,
    fallback: str,
    allow_panel_model: bool,
    concurrency: int,
    force: bool,
    url: str,
    api_key: str | None,
    poll_s: float,
    as_json: bool,
) -> None:
    """Re-judge past runs with another judge (the panel is not called again) and
    compare: agreement, accuracy on ground truth with 95% intervals, cost, latency.
    The same command run again reports the batch it submitted before."""
    if force and run_id is None:
        fail("--force makes a new replay of one run: it needs --run")
    filters = {"--since": since, "--until": until, "--category": category, "--preset": preset,
               "--model": model, "--ground-truth": has_ground_truth}  # fmt: skip
    chosen = [name for name, value in filters.items() if value is not None]
    if run_id is not None and chosen:  # they were ignored
        fail(f"--run replays one run; {', '.join(chosen)} select a batch: give one or the other")
    if batch_id is not None:
        if run_id is not None:
            fail("--batch follows a batch and --run replays one run: give one of them")
        _check_batch_id(batch_id)
    elif judge is None:
        fail("give --judge KIND[:MODEL], or --batch ID to follow a batch submitted before")
    base = url.rstrip("/")
    with httpx.Client(base_url=base, timeout=120.0, headers=bearer(api_key)) as client:
        try:
            if batch_id is None:
                assert judge is not None  # checked above
                spec = judge_body(judge, weighted, informed, fallback, allow_panel_model)
                if run_id is not None:
                    _replay_one(client, run_id, spec, force, as_json)
                    return
                selection: dict[str, Any] = {
                    "category": category,
                    "preset": preset,
                    "model": model,
                    "has_ground_truth": has_ground_truth,
                    "since": _utc_text(since) if since else None,
                    "until": _utc_text(until) if until else None,
                }
                body = {
                    "filter": {k: v for k, v in selection.items() if v is not None},
                    "judge": spec,
                    "concurrency": concurrency,
                }
                # As typed (spans unresolved): the same command after a restart, or
                # when the minute has turned, finds the batch it left unfinished.
                asked = {**selection, "since": since, "until": until}
                batch_id = _unfinished(client, base, asked, spec) or _submit(client, base, body)
                _remember(base, asked, spec, batch_id)
            report = _follow(client, batch_id, poll_s, quiet=as_json)
        except KeyboardInterrupt:  # before the batch was named (_follow says its own)
            if run_id is not None:
                fail("interrupted; a replay the service received is kept there", 130)
            fail(
                "interrupted; if the service accepted the batch it runs on there: the "
                "same command run again finds it while its spans resolve alike (within "
                "the minute for m and h, the hour for d and w)",
                130,
            )
        except httpx.HTTPError as exc:
            if batch_id is None:
                fail(unanswered(url, exc))
            # Exit 1, as eval's: a batch is kept by the service and resumes after a
            # restart, so following it again goes on.
            fail(
                f"{unanswered(url, exc)}; batch {batch_id} is kept there and resumes when "
                f"the service is back: fusion-ledger replay --batch {batch_id} follows it",
                1,
            )
    if as_json:
        _emit_json(report)
    else:
        print_report(report)


def _check_batch_id(batch_id: str) -> None:
    try:
        uuid.UUID(batch_id)
    except ValueError:
        fail(f"--batch {batch_id!r} is not a batch id (a UUID)")


# A batch submitted by this command is found again by the same command for a day,
# while unfinished (the spans it was given resolve to other times a minute later, so
# the Idempotency-Key alone finds it only within that minute or hour).
REMEMBER_S = 24 * 3600


def _now() -> float:
    return datetime.now(UTC).timestamp()


def _remembered_path() -> Path:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    settings = obj.get("settings") if isinstance(obj, dict) else None
    return (settings.data_dir if settings is not None else Path(".fusion-ledger")) / "replays.json"


def _remembered() -> dict[str, Any]:
    try:
        known = json.loads(_remembered_path().read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _remember(base: str, asked: dict[str, Any], spec: dict[str, Any], batch_id: str) -> None:
    """Note the batch under the command that made it (best effort: a folder that cannot
    be written only loses the convenience)."""
    now = _now()
    known = {k: v for k, v in _remembered().items() if now - v.get("at", 0) < REMEMBER_S}
    known[_digest(base, asked, spec)] = {"batch_id": batch_id, "at": now}
    path = _remembered_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known))


def _unfinished(
    client: httpx.Client, base: str, asked: dict[str, Any], spec: dict[str, Any]
) -> str | None:
    """The batch this command submitted in the last day, if the service still runs it."""
    entry = _remembered().get(_digest(base, asked, spec))
    if not isinstance(entry, dict) or _now() - entry.get("at", 0) >= REMEMBER_S:
        return None
    batch_id = str(entry.get("batch_id"))
    response = client.get(f"/v1/replays/{batch_id}")
    if response.status_code != 200 or response.json().get("status") == "completed":
        return None
    note(
        f"batch {batch_id}, submitted before by this command, is still running: following "
        f"it (fusion-ledger replay --batch {batch_id})"
    )
    return batch_id


def _submit(client: httpx.Client, base: str, body: dict[str, Any]) -> str:
    """Submit the batch (or find the one this request made before) and name it on
    stderr at once: it runs on in the service if this command is interrupted. A key
    that may not read the batch's progress is refused first: the batch would run."""
    method, path, probe = scope_probe("read")
    answered = client.request(method, path, json=probe)
    if refused_scope(answered):
        fail_response(answered)
    headers = {"Idempotency-Key": batch_key(body)}
    response = client.post("/v1/replays", json=body, headers=headers)
    if response.status_code != 202:
        fail_response(response)
    accepted = response.json()
    batch_id: str = accepted["batch_id"]
    how = "submitted before with this filter and judge" if accepted["existing"] else "accepted"
    note(
        f"batch {batch_id} {how}: {accepted['runs']} runs, status at "
        f"{base}{accepted['status_url']} (fusion-ledger replay --batch {batch_id} follows it)"
    )
    return batch_id


def _replay_one(
    client: httpx.Client, run_id: str, spec: dict[str, Any], force: bool, as_json: bool
) -> None:
    response = client.post(f"/v1/runs/{run_id}/replays", json={"judge": spec, "force": force})
    if response.status_code not in (200, 201):
        fail_response(response)
    body = response.json()
    if as_json:
        _emit_json(body)
        return
    table = DataTable("", "original", "replay", title=f"replay {body['replay_id']}")
    table.add_row("answer", str(body["original_answer"]), str(body["answer"]))
    judge = body.get("judge") or {}
    table.add_row("judge", "", f"{judge.get('kind')} {judge.get('model') or ''}".strip())
    table.add_row("decided by", "", str(judge.get("decided_by")))
    table.add_row("agrees", "", str(body["agrees_with_original"]))
    table.add_row("judge cost $", "", f"{body['cost_usd']:.6f}")
    console.print(table)
    if body["existing"]:
        console.print("[yellow]this replay existed already; --force makes a new one[/yellow]")


def _follow(client: httpx.Client, batch_id: str, poll_s: float, *, quiet: bool) -> dict[str, Any]:
    """Poll the batch until it completes, with a progress bar on stderr; Ctrl-C stops
    the polling, not the batch, and says how to follow it again."""
    progress = progress_bar("replaying", quiet=quiet)
    try:
        with progress:
            bar = progress.add_task("replay", total=None)
            told = False
            while True:
                response = client.get(f"/v1/replays/{batch_id}")
                if response.status_code != 200:
                    fail_response(response)
                body: dict[str, Any] = response.json()
                progress.update(bar, total=body["runs"], completed=body["done"])
                if body["status"] == "completed":
                    return body
                why = None if told else upgrade_note(body)
                if why:
                    told = True  # once: the batch may wait for a long time
                    note(why)
                time.sleep(poll_s)
    except KeyboardInterrupt:
        fail(
            f"interrupted; batch {batch_id} runs on in the service: "
            f"fusion-ledger replay --batch {batch_id} follows it",
            130,
        )


def upgrade_note(batch: dict[str, Any]) -> str | None:
    """What to tell a user whose batch has nothing left but runs that only a newer
    release can replay (the batch then waits; ops/runbook.md), else None."""
    waiting = batch.get("waiting_for_upgrade", 0)
    if not waiting or batch["done"] + waiting < batch["runs"]:
        return None
    batch_id = batch["batch_id"]
    return (
        f"batch {batch_id} waits: {waiting} of its runs were recorded by a newer release "
        "(an answer normaliser version this service lacks), and only a replica that knows "
        "it can replay them; the batch completes once one drives it. Ctrl-C stops "
        f"following, and fusion-ledger replay --batch {batch_id} follows it again"
    )


def _rate(p: dict[str, Any]) -> str:
    if p["rate"] is None:
        return "-"
    return f"{p['rate']:.1%} [{p['ci_low']:.1%}, {p['ci_high']:.1%}]  ({p['successes']}/{p['n']})"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_report(batch: dict[str, Any]) -> None:
    """The judge comparison as aligned tables."""
    report = batch["report"]
    judge = batch["judge"]
    name = f"{judge['kind']} {judge['model'] or ''}".strip()
    console.print(
        f"batch {batch['batch_id']}: {report['replayed']} of {batch['runs']} runs replayed "
        f"with [bold]{inline(name)}[/bold] "
        f"({report['failed']} failed, {report['fallbacks']} fallbacks)"
    )
    summary = DataTable("", "original judge", "replay judge", title="judges on the same runs")
    truth = report["ground_truth"]
    summary.add_row(
        f"accuracy on ground truth (n={truth['n']})",
        _rate(truth["original"]),
        _rate(truth["replay"]),
    )
    summary.add_row("agreement with the original", "", _rate(report["agreement"]))
    original, replay = report["original_judge"], report["replay_judge"]
    summary.add_row(
        "judge cost $ total",
        f"{original['cost']['total_usd']:.6f}",
        f"{replay['cost']['total_usd']:.6f}",
    )
    for label, key in (("mean", "mean_ms"), ("p50", "p50_ms"), ("p95", "p95_ms")):
        summary.add_row(
            f"judge latency ms {label}",
            _ms(original["latency"][key]),
            _ms(replay["latency"][key]),
        )
    console.print(summary)
    if report["by_category"]:
        table = DataTable(
            "category", "n", "original", "replay", "difference", title="accuracy by category"
        )
        for row in report["by_category"]:
            difference = row["difference"]
            table.add_row(
                row["category"],
                str(row["n"]),
                _rate(row["original"]),
                _rate(row["replay"]),
                "-" if difference is None else f"{difference:+.1%}",
            )
        console.print(table)
