"""Projection and statistics commands: `worker`, `projections status|rebuild`,
`stats failures|co-failures|judges` and `profile`. They talk to the database
directly (like `verify`), so they work with or without a running service."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import click
from rich.cells import cell_len

from service.cli import (
    NOT_MIGRATED,
    _database_url,
    _emit_json,
    _open_pool,
    _run,
    _with_connection,
    database_url_option,
)
from service.cli_output import DataTable, console, fail, inline, note, progress_bar
from service.logging import configure_logging
from service.projections import runner
from service.projections.definitions import BY_NAME, PROJECTIONS
from service.projections.queries import (
    GROUP_DIMENSIONS,
    BadQuery,
    Query,
    StatsAnswer,
    answer,
    failures_query,
)
from service.store.migrations import is_up_to_date, load_migrations


async def _require_migrated(pool: asyncpg.Pool) -> None:
    """Exit 2 with one line unless every migration is applied: before any work, so
    nothing is half done (a rebuild's shadow schema, say) on a database without them."""
    async with pool.acquire() as conn:
        if not await is_up_to_date(conn, load_migrations()):
            fail(NOT_MIGRATED)


@click.command("worker")
@database_url_option
@click.option("--once", is_flag=True, help="Apply what is in the log now, then exit.")
@click.option(
    "--poll-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between reads of the log when no NOTIFY wakes the worker.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --once).")
@click.pass_context
def worker_command(ctx: click.Context, once: bool, poll_interval: float, as_json: bool) -> None:
    """Keep the read models up to date (the projection worker alone, without the API).

    Safe to run beside `serve` and on several machines: one process owns each
    projection at a time; the others wait and take over if it stops."""
    url = _database_url(ctx)
    settings = ctx.obj["settings"]
    configure_logging(settings.log_format, settings.log_level)

    owned_elsewhere: list[str] = []  # --once: projections a running worker keeps

    async def work() -> int:
        pool = await _open_pool(url, 1, 2)
        try:
            await _require_migrated(pool)
            if once:
                return await runner.run_until_caught_up(pool, owned_elsewhere=owned_elsewhere)
            worker = runner.ProjectionWorker(pool, poll_interval=poll_interval)
            await worker.run()
            return worker.applied
        finally:
            await pool.close()

    with contextlib.suppress(KeyboardInterrupt):
        applied = _run(work())
        if as_json:
            _emit_json({"applied": applied, "owned_elsewhere": owned_elsewhere})
        else:
            console.print(f"applied {applied} event(s) to the read models")
            if owned_elsewhere:
                note(
                    f"left to the worker that owns them (a running service or worker "
                    f"keeps them current): {', '.join(owned_elsewhere)}"
                )


@click.group("projections")
def projections_group() -> None:
    """The read models: where they stand, and rebuilding them."""


def _status_table(rows: list[runner.ProjectionStatus]) -> DataTable:
    table = DataTable(title="projections")
    for name in ("projection", "checkpoint", "events", "lag (events)", "lag (s)"):
        table.add_column(name, justify="left" if name in ("projection", "checkpoint") else "right")
    for s in rows:
        table.add_row(
            s.name, str(s.checkpoint), str(s.events), str(s.lag.events), f"{s.lag.seconds:.1f}"
        )
    return table


@projections_group.command("status")
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status_command(ctx: click.Context, as_json: bool) -> None:
    """Each projection's checkpoint and how far it is behind the log."""
    rows = _run(_with_connection(_database_url(ctx), runner.status))
    if as_json:
        _emit_json([_status_json(s) for s in rows])
    else:
        console.print(_status_table(rows))


def _status_json(s: runner.ProjectionStatus) -> dict[str, Any]:
    return {
        "name": s.name,
        "checkpoint": str(s.checkpoint),
        "events": s.events,
        "lag": s.lag,
    }


@projections_group.command("rebuild")
@database_url_option
@click.argument("name", required=False, type=click.Choice(sorted(BY_NAME)))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def rebuild_command(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Rebuild NAME (default: every projection) from position zero into shadow tables,
    then swap them in. The service keeps serving the old tables meanwhile. Run it as
    the schema's owner (it creates a scratch schema and swaps tables)."""
    url = _database_url(ctx)
    names = [name] if name else [p.name for p in PROJECTIONS]
    settings = ctx.obj["settings"]
    configure_logging(settings.log_format, settings.log_level)  # to stderr: stdout is the answer

    async def work() -> list[runner.RebuildResult]:
        pool = await _open_pool(url, 1, len(names))  # one connection per projection
        try:
            await _require_migrated(pool)
            with progress_bar(
                "{task.description}", on=console, quiet=as_json, transient=False
            ) as progress:

                async def one(n: str) -> runner.RebuildResult:
                    task = progress.add_task(f"rebuild {n}", total=None)

                    def report(done: int, total: int) -> None:
                        progress.update(task, completed=done, total=total)

                    return await runner.rebuild(pool, n, progress=report)

                # At once: each reads the log and writes its own tables (two cores used);
                # if one fails, the others are cancelled (and their shadows dropped).
                try:
                    async with asyncio.TaskGroup() as group:
                        tasks = [group.create_task(one(n)) for n in names]
                except ExceptionGroup as failed:
                    raise failed.exceptions[0] from None
                return [t.result() for t in tasks]
        finally:
            await pool.close()

    results = _run(work())
    if as_json:
        _emit_json(
            [
                {"name": r.name, "events": r.events, "seconds": round(r.seconds, 3),
                 "checkpoint": str(r.checkpoint)}
                for r in results
            ]
        )  # fmt: skip
        return
    for r in results:
        rate = r.events / r.seconds if r.seconds else 0.0
        console.print(
            f"rebuilt {r.name}: {r.events} events in {r.seconds:.2f} s ({rate:,.0f} events/s), "
            f"checkpoint {r.checkpoint}"
        )


# --- statistics -----------------------------------------------------------------------


def _print_answer(result: StatsAnswer, title: str, as_json: bool) -> None:
    if as_json:
        _emit_json(result)
        return
    if not result.rows:
        console.print(inline(f"{title}: no rows"))
    else:
        for table in _tables(result.rows, title, console.width):
            console.print(table)
    note = f"checkpoint {result.checkpoint}, lag {result.lag.events} event(s)"
    if result.as_of:
        note += f" (as of {result.as_of})"
    console.print(f"[dim]{inline(note)}[/dim]")


def _tables(rows: list[dict[str, Any]], title: str, width: int) -> list[DataTable]:
    """The rows as aligned tables no wider than the terminal: the labels (model,
    category, ...) on the left of each, and as many of the figures as fit beside them,
    the rest in the next table, instead of every column squeezed to "…". When not
    even one figure fits beside the labels, each row is a table of its own, one
    field a line (a narrow terminal, long judge or model names)."""
    columns = list(rows[0])
    # A column with text in it labels the rows; the others are figures (or empty).
    numeric = {c for c in columns if not any(isinstance(r.get(c), str) for r in rows)}
    labels = [c for c in columns if c not in numeric]
    figures = [c for c in columns if c in numeric]
    # Each column's natural width, measured once: header or widest cell, plus its
    # padding and rule (rich's default box: 3 cells a column, 1 more for the edge).
    wide = {c: max(cell_len(c), *(cell_len(_cell(r.get(c))) for r in rows)) + 3 for c in columns}
    room = width - 1 - sum(wide[c] for c in labels)

    def table(chosen: list[str], part: str) -> DataTable:
        made = DataTable(title=title + part)
        for column in labels + chosen:
            made.add_column(column, justify="right" if column in numeric else "left",
                            no_wrap=column in numeric)  # fmt: skip
        for row in rows:
            made.add_row(*(_cell(row.get(c)) for c in labels + chosen))
        return made

    if sum(wide[c] for c in figures) <= room:
        return [table(figures, "")]
    if max((wide[c] for c in figures), default=0) > room:
        return [_record(row, f"{title} ({i} of {len(rows)})") for i, row in enumerate(rows, 1)]
    parts: list[list[str]] = [[]]
    used = 0
    for column in figures:
        if parts[-1] and used + wide[column] > room:
            parts.append([])
            used = 0
        parts[-1].append(column)
        used += wide[column]
    return [table(chosen, f" ({i} of {len(parts)})") for i, chosen in enumerate(parts, 1)]


def _record(row: dict[str, Any], title: str) -> DataTable:
    made = DataTable("field", "value", title=title, show_header=False)
    for column, value in row.items():
        made.add_row(column, _cell(value))
    return made


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value)


def _ask(ctx: click.Context, build: Any, title: str, as_json: bool) -> None:
    try:
        query: Query = build()
    except BadQuery as exc:
        raise click.BadParameter(str(exc)) from None

    async def work(conn: Any) -> StatsAnswer:
        try:
            return await answer(conn, query)
        except BadQuery as exc:
            fail(str(exc))

    _print_answer(_run(_with_connection(_database_url(ctx), work)), title, as_json)


_tenant = click.option(
    "--tenant",
    default="default",
    show_default=True,
    help="The tenant asked about (an API key's; without keys every run is 'default').",
)
_as_of = click.option("--as-of", default=None, help="A checkpoint 'xid:pos', a position or a time.")
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("stats")
def stats_group() -> None:
    """Model failure statistics from the read models."""


@stats_group.command("failures")
@database_url_option
@click.option(
    "--group-by",
    default="model",
    show_default=True,
    help=f"Comma-separated: {', '.join(GROUP_DIMENSIONS)}.",
)
@click.option("--model", default=None)
@click.option("--category", default=None)
@click.option("--error-kind", default=None)
@click.option("--since", default=None, help="First UTC day counted (ISO date, e.g. 2026-11-01).")
@click.option("--until", default=None, help="First UTC day not counted (ISO date).")
@_tenant
@_as_of
@_json
@click.pass_context
def failures_command(
    ctx: click.Context, group_by: str, model: str | None, category: str | None,
    error_kind: str | None, since: str | None, until: str | None, tenant: str,
    as_of: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Calls, failures and failure rates grouped as asked."""
    _ask(
        ctx,
        lambda: failures_query(
            tenant,
            group_by=group_by,
            model=model,
            category=category,
            error_kind=error_kind,
            since=since,
            until=until,
            as_of=as_of,
        ),
        "failures",
        as_json,
    )


@stats_group.command("co-failures")
@database_url_option
@click.option("--model", default=None)
@click.option("--category", default=None)
@click.option(
    "--min-n", type=int, default=1, show_default=True,
    help="Only pairs graded together on at least this many runs.",
)  # fmt: skip
@_tenant
@_as_of
@_json
@click.pass_context
def co_failures_command(
    ctx: click.Context, model: str | None, category: str | None, min_n: int, tenant: str,
    as_of: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Pairs of graded panel seats on the same runs: both wrong, one wrong, both right."""
    _ask(
        ctx,
        lambda: Query(
            "co-failures", tenant, model=model, category=category, min_n=min_n, as_of=as_of
        ),
        "co-failures",
        as_json,
    )


@stats_group.command("judges")
@database_url_option
@click.option("--category", default=None)
@click.option("--judge", default=None, help="kind[:model][+weighted][+informed]")
@_tenant
@_as_of
@_json
@click.pass_context
def judges_command(
    ctx: click.Context, category: str | None, judge: str | None, tenant: str,
    as_of: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Judges ranked on the same runs, replays included."""
    _ask(
        ctx,
        lambda: Query("judges", tenant, category=category, judge=judge, as_of=as_of),
        "judges",
        as_json,
    )


@click.command("profile")
@database_url_option
@click.option("--model", default=None)
@click.option("--category", default=None)
@_tenant
@_as_of
@_json
@click.pass_context
def profile_command(
    ctx: click.Context, model: str | None, category: str | None, tenant: str,
    as_of: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Model error profiles: accuracy (Beta posterior), judge agreement, failures."""
    _ask(
        ctx,
        lambda: Query("profiles", tenant, model=model, category=category, as_of=as_of),
        "profiles",
        as_json,
    )


COMMANDS = [worker_command, projections_group, stats_group, profile_command]
__all__ = ["COMMANDS"]
