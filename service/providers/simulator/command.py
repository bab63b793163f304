"""``fusion-ledger simulate``: run the provider test double from the command line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import click
import msgspec

from service.cli_output import fail
from service.logging import configure_logging
from service.providers.simulator.default_world import default_world
from service.providers.simulator.server import SimulatorHandle, serve_simulator
from service.providers.simulator.world import LABEL, World, WorldError, load_world


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8001,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--world",
    "world_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="World TOML file (default: the calibrated default world).",
)
@click.option("--seed", type=int, default=None, help="Override the world's seed.")
@click.option(
    "--export-bank",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the question bank as a JSONL dataset and exit.",
)
@click.option(
    "--fixed-latency-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="Every model answers in exactly this many milliseconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line when ready.")
def simulate_command(
    host: str,
    port: int,
    world_file: Path | None,
    seed: int | None,
    export_bank: Path | None,
    fixed_latency_ms: float | None,
    as_json: bool,
) -> None:
    """Serve simulated model providers (a test double) over the OpenAI protocol."""
    configure_logging()
    try:
        world = load_world(world_file) if world_file is not None else default_world()
    except (OSError, WorldError) as exc:
        fail(str(exc))
    if seed is not None:
        world = world.with_options(seed=seed)
    if fixed_latency_ms is not None:
        world = world.with_options(fixed_latency_ms=fixed_latency_ms)
    if export_bank is not None:
        try:
            count = world.bank.export_jsonl(export_bank)
        except OSError as exc:
            fail(f"cannot write the bank to {export_bank}: {exc.strerror or exc}")
        _say(as_json, {"exported": count, "path": str(export_bank)},
             f"wrote {count} questions to {export_bank}")  # fmt: skip
        return
    try:
        asyncio.run(_serve_until_stopped(world, host, port, as_json))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


async def _serve_until_stopped(world: World, host: str, port: int, as_json: bool) -> None:
    handle = await serve_simulator(world, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    _announce(handle, as_json)
    try:
        await stop.wait()
    finally:
        await handle.close()


def _announce(handle: SimulatorHandle, as_json: bool) -> None:
    world = handle.world
    summary = {
        "base_url": handle.base_url,
        "note": LABEL,
        "seed": world.seed,
        "models": world.names(),
        "questions": len(world.bank),
        "fixed_latency_ms": world.fixed_latency_ms,
    }
    text = (
        f"{LABEL}\nserving {len(world.models)} simulated models at {handle.base_url} "
        f"(seed {world.seed}, {len(world.bank)} bank questions); Ctrl-C stops"
    )
    _say(as_json, summary, text)


def _say(as_json: bool, value: object, text: str) -> None:
    line = msgspec.json.encode(value).decode() if as_json else text
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
