"""`fusion-ledger route explain RUN_ID`: redo a recorded router decision and show it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import msgspec

from service.cli import _database_url, _emit_json, _open_pool, _run, database_url_option
from service.cli_output import DataTable, console, fail, id_column, inline
from service.config import Config, ConfigError
from service.orchestration.route_explain import Explanation, NotRouted, explain_run
from service.store import EventStore


@click.group("route")
def route_group() -> None:
    """The router: why a run got its panel."""


@route_group.command("explain")
@database_url_option
@click.argument("run_id")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration for model prices (or FUSION_LEDGER_CONFIG; default: the "
    "simulator's, as `serve` uses when no provider is configured).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def explain_command(
    ctx: click.Context, run_id: str, config_path: Path | None, as_json: bool
) -> None:
    """Rebuild the run's tenant's profiles at the recorded checkpoint, decide again with
    the recorded seed, and compare; exit 1 when the decision is not reproduced."""
    url = _database_url(ctx)
    try:
        config = _prices_config(ctx, config_path)
    except ConfigError as exc:
        fail(str(exc))

    async def work() -> Explanation:
        pool = await _open_pool(url, min_size=1, max_size=2)
        try:
            return await explain_run(EventStore(pool), config, run_id)
        finally:
            await pool.close()

    try:
        explanation = _run(work())
    except NotRouted as exc:  # nothing to compare: exit 1 says a decision differed
        fail(str(exc))
    if as_json:
        _emit_json(_as_json(explanation))
    else:
        _print(explanation)
    raise SystemExit(0 if explanation.identical else 1)


def _prices_config(ctx: click.Context, path: Path | None) -> Config:
    from service.serving import read_config, simulator_config

    config = read_config(ctx.obj["settings"], path)
    if config.models:
        return config
    from service.providers.simulator import default_world

    world = default_world()
    names = sorted(world.models)
    prices = {
        n: (world.models[n].input_price_per_m, world.models[n].output_price_per_m) for n in names
    }
    return simulator_config(names, prices, "http://127.0.0.1:8001/v1")


def _as_json(e: Explanation) -> dict[str, Any]:
    return {
        "run_id": e.run_id,
        "tenant": e.tenant,
        "category": e.category,
        "category_source": e.category_source,
        "category_rule": e.category_rule,
        "seats": e.seats,
        "reproduced_seats": e.reproduced_seats,
        "identical": e.identical,
        "differences": e.differences,
        "recorded": msgspec.to_builtins(e.recorded),
        "reproduced": msgspec.to_builtins(e.reproduced),
    }


def _print(e: Explanation) -> None:
    d = e.recorded
    rule = f", rule {e.category_rule}" if e.category_rule else ""
    budget = "none" if d.budget_usd is None else f"${d.budget_usd:.6g}"
    console.print(
        inline(
            f"run {e.run_id} (tenant {e.tenant}): category {e.category} ({e.category_source}{rule})"
        )
    )
    console.print(
        f"router {d.version}  profile checkpoint {d.profile_checkpoint}  seed {d.seed}  "
        f"k {d.k}  budget {budget}"
    )
    models = [c.model for c in d.candidates]  # whole: two names may share their start
    table = DataTable(id_column("model", models), "score", "reproduced", "expected $", "chosen",
                      "reason")  # fmt: skip
    for old, new in zip(d.candidates, e.reproduced.candidates, strict=True):
        table.add_row(
            old.model,
            f"{old.score:.6f}",
            f"{new.score:.6f}",
            f"{old.expected_cost_usd or 0.0:.3g}",
            "yes" if old.chosen else "",
            old.reason,
        )
    console.print(table)
    console.print(f"panel: {inline(', '.join(e.seats))}")
    if e.identical:
        console.print("[green]reproduced: the same decision from the log[/green]")
    else:
        console.print("[red]not reproduced:[/red]")
        for difference in e.differences:
            console.print(f"  {inline(difference)}")
