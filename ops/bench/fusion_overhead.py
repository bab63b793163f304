"""Orchestration overhead and sustained rate of POST /v1/fusions against the simulator.

Everything on this machine, as issue 3 asks: the simulator in its own process (every
model answers in exactly --latency-ms), the service (``fusion-ledger serve``, uvicorn,
a scratch Postgres schema, its default API-key auth with a key of the benchmark's
own) and, in this process, an open-loop load generator (open_loop.py). Phases:

1. warm-up at the steady rate;
2. the steady rate (100 fusions/s): overhead read exactly per fusion from the
   ``Server-Timing`` header (request in to response out, minus slowest member and
   judge), client latency, CPU per fusion of every process involved;
3. a ramp of rates, stopping at the first one not sustained (criterion in the JSON);
4. the baseline, same run: the steady rate sent straight to the simulator's chat
   endpoint, one bare provider call per request.

One JSON document goes to stdout, progress to stderr::

    .venv/bin/python ops/bench/fusion_overhead.py            # about 2 minutes
    .venv/bin/python ops/bench/fusion_overhead.py --rates "" --profile /tmp/prof  # cProfile
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import click
import msgspec
import structlog
from fusion_stack import (
    CpuMeter,
    bench_key,
    command,
    environment,
    free_port,
    ledger_counts,
    log,
    process,
    scratch_schema,
    simulator_toml,
    start_simulator,
    wait_ready,
    with_params,
)
from open_loop import open_loop, summarize, sustained

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/test"
OVERHEAD_TARGET_MS = 5.0
RATE_TARGET = 300


@dataclass(frozen=True)
class Options:
    """What the command line chose."""

    database_url: str
    latency_ms: float
    steady_rate: float
    steady_s: float
    warmup_s: float
    rates: list[float]
    step_s: float
    max_p99_ms: float
    pool_size: int | None
    auth: bool
    profile: Path | None
    service_tree: Path | None
    prefill_runs: int


def fusion_body(i: int) -> bytes:
    """A different arithmetic question per request (no two runs alike)."""
    return msgspec.json.encode({"prompt": question(i)})


def chat_body(i: int) -> bytes:
    """The same question as one bare chat completion to one panel model."""
    messages = [{"role": "user", "content": question(i)}]
    return msgspec.json.encode({"model": "model-b", "messages": messages})


def question(i: int) -> str:
    """The i-th prompt of the load."""
    return f"What is {i % 97} + {i % 89} * 2? Reply with the number."


@dataclass
class Stack:
    """The running service, as the phases need it."""

    api: str
    simulator_url: str
    pids: dict[str, int]
    backends: asyncpg.Connection
    app_name: str


async def run(opts: Options, logs: Path) -> dict[str, Any]:
    """Start the stack, run every phase, stop the stack; returns the JSON document."""
    async with scratch_schema(opts.database_url) as schema:
        app_name = f"fl-{schema}"
        db_url = with_params(opts.database_url, search_path=schema, application_name=app_name)
        env = dict(
            os.environ,
            DATABASE_URL=db_url,
            FUSION_LEDGER_LOG_FORMAT="json",
            FUSION_LEDGER_AUTH="on" if opts.auth else "off",
        )
        if opts.pool_size:
            env["FUSION_LEDGER_POOL_SIZE"] = str(opts.pool_size)
        if opts.prefill_runs:
            await prefill(db_url, opts.prefill_runs)
        if opts.service_tree:  # A/B: the service's code from another checkout
            env["PYTHONPATH"] = str(opts.service_tree.resolve())
        with contextlib.ExitStack() as procs:
            simulator, sim_url = await start_simulator(procs, opts.latency_ms, logs)
            config = logs / "config.toml"
            config.write_text(simulator_toml(sim_url))
            api_port = free_port()
            serve = ["serve", "--host", "127.0.0.1", "--port", str(api_port), "--config"]
            args = command(*serve, str(config))
            if opts.profile:  # the whole life of the service; the file is written on exit
                opts.profile.mkdir(parents=True, exist_ok=True)
                out = opts.profile / "service.prof"
                args = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "service"]
                args += [*serve, str(config)]
                log(f"profiling the service with cProfile into {out}")
            # SIGINT, as Ctrl-C: uvicorn re-raises a SIGTERM after its shutdown, which
            # would kill the process before cProfile writes its file
            service = procs.enter_context(process(args, logs, "service", env, signal.SIGINT))
            api = f"http://127.0.0.1:{api_port}"
            await wait_ready(f"{api}/readyz", service, "the service")
            pids = {"service": service.pid, "simulator": simulator.pid, "generator": os.getpid()}
            backends = await asyncpg.connect(opts.database_url)
            try:
                stack = Stack(api, sim_url, pids, backends, app_name)
                key = await bench_key(db_url) if opts.auth else None
                result = await drive(opts, stack, key)
            finally:
                await backends.close()
        result["ledger"] = await ledger_counts(db_url)
    return result


async def prefill(url: str, runs: int) -> None:
    """A log that already holds ``runs`` runs (projection_rebuild.py's generated ones,
    about 7.3 events each), its read models caught up, before the service starts: the
    cost of a fusion where the log and read models have grown, not in an empty one."""
    from projection_rebuild import generate

    from service.projections import runner
    from service.store.database import connect, create_pool
    from service.store.migrations import migrate

    conn = await connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    loader = await asyncpg.connect(url)  # asyncpg's own jsonb codec: binary COPY
    try:
        events, made, seconds = await generate(loader, int(runs * 7.33), seed=1)
        log(f"prefilled {made} runs ({events} events) in {seconds:.0f} s; catching up")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        pool = await create_pool(url, min_size=1, max_size=2)
        try:
            await asyncio.gather(*(runner.rebuild(pool, p.name) for p in runner.PROJECTIONS))
        finally:
            await pool.close()
        # Not autovacuum's work, nor the writes of the load's dirty pages, in the middle
        # of the measurement.
        await loader.execute("VACUUM (ANALYZE)")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await loader.execute("CHECKPOINT")
    finally:
        await loader.close()


async def drive(opts: Options, stack: Stack, key: str | None) -> dict[str, Any]:
    """Warm-up, steady rate, ramp, baseline."""
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as s:
        fusions = f"{stack.api}/v1/fusions"
        log(f"warm-up {opts.warmup_s:g} s at {opts.steady_rate:g}/s")
        await open_loop(s, fusions, fusion_body, opts.steady_rate, opts.warmup_s)
        await drained(s, stack.api)
        log(f"steady {opts.steady_s:g} s at {opts.steady_rate:g}/s")
        before = await overhead_histogram(s, stack.api)
        steady = await phase(s, stack, fusions, fusion_body, opts.steady_rate, opts.steady_s)
        after = await overhead_histogram(s, stack.api)
        steady["histogram_estimate_ms"] = histogram_delta(before, after)
        log(
            f"  overhead p50 {steady['overhead_ms']['p50']} p99 {steady['overhead_ms']['p99']} "
            f"ms; client p99 {steady['client_latency_ms']['p99']} ms"
        )
        ramp, best = await ramp_up(s, stack, fusions, opts)
        await drained(s, stack.api)
        log(f"baseline: bare chat completions, {opts.steady_s / 2:g} s at {opts.steady_rate:g}/s")
        bare = await phase(
            s,
            stack,
            f"{stack.simulator_url}/chat/completions",
            chat_body,
            opts.steady_rate,
            opts.steady_s / 2,
            service=False,
        )
    return report(opts, steady, ramp, best, bare)


async def ramp_up(
    s: aiohttp.ClientSession, stack: Stack, url: str, opts: Options
) -> tuple[list[dict[str, Any]], float | None]:
    """Each rate in turn until one is not sustained; returns the steps and the best rate."""
    steps: list[dict[str, Any]] = []
    best = None
    for rate in opts.rates:
        await drained(s, stack.api)  # the previous phase's backlog, projections too
        log(f"ramp {opts.step_s:g} s at {rate:g}/s")
        step = await phase(s, stack, url, fusion_body, rate, opts.step_s)
        step["sustained"] = sustained(step, opts.max_p99_ms)
        steps.append(step)
        verdict = "sustained" if step["sustained"] else "NOT sustained"
        log(
            f"  achieved {step['achieved_per_s']}/s, client p99 "
            f"{step['client_latency_ms']['p99']} ms, {step['errors']} errors: {verdict}"
        )
        if not step["sustained"]:
            break
        best = rate
    return steps, best


async def phase(
    s: aiohttp.ClientSession,
    stack: Stack,
    url: str,
    body_of: Callable[[int], bytes],
    rate: float,
    seconds: float,
    *,
    service: bool = True,
) -> dict[str, Any]:
    """One open-loop phase with CPU accounting."""
    pids = dict(stack.pids)
    if not service:
        del pids["service"]
    meter = CpuMeter(pids, stack.backends if service else None, stack.app_name)
    await meter.begin()
    samples = await open_loop(s, url, body_of, rate, seconds)
    if service:  # runs outlive a client timeout: count their CPU too
        await drained(s, stack.api)
    cpu = await meter.report(len(samples))
    return summarize(samples, rate, seconds) | cpu


async def drained(s: aiohttp.ClientSession, api: str, limit_s: float = 60) -> None:
    """Wait until the service drives no run and its projections have caught up (at most
    limit_s), so one phase's backlog does not spend the next phase's CPU."""
    for _ in range(int(limit_s * 5)):
        async with s.get(f"{api}/metrics") as response:
            text = await response.text()
        open_runs = re.findall(r"^fusion_open_runs (\S+)", text, re.MULTILINE)
        lag = re.findall(r"^fusion_projection_lag_events\{[^}]*\} (\S+)", text, re.MULTILINE)
        if sum(float(v) for v in open_runs + lag) == 0:
            return
        await asyncio.sleep(0.2)
    log(f"still busy after {limit_s:g} s (open runs or projection lag); going on")


async def overhead_histogram(s: aiohttp.ClientSession, api: str) -> dict[float, float]:
    """Cumulative bucket counts of fusion_orchestration_overhead_seconds from /metrics."""
    async with s.get(f"{api}/metrics") as response:
        text = await response.text()
    found = re.findall(r'fusion_orchestration_overhead_seconds_bucket\{le="([^"]+)"\} (\S+)', text)
    return {float(le): float(count) for le, count in found}


def histogram_delta(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Upper bounds of the buckets holding p50 and p99 over a phase (the metric's view)."""
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = delta.get(float("inf"), 0.0)

    def bound(q: float) -> float | str | None:
        for le, count in delta.items():
            if total and count >= q * total:
                return round(le * 1000, 3) if le != float("inf") else "above the last bucket"
        return None

    return {"p50_le": bound(0.5), "p99_le": bound(0.99), "n": total}


def report(
    opts: Options,
    steady: dict[str, Any],
    ramp: list[dict[str, Any]],
    best: float | None,
    bare: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document: figures, baseline, targets and their pass flags."""
    floor = 2 * opts.latency_ms
    overhead_p99 = steady.get("overhead_ms", {}).get("p99")
    fused = _minus(steady["client_latency_ms"]["p50"], floor)
    bare_extra = _minus(bare["client_latency_ms"]["p50"], opts.latency_ms)
    return {
        "benchmark": "fusion_overhead",
        "shape": "POST /v1/fusions, preset default: 3-member panel + synthesize judge "
        "(sim/judge-strong), 7 events written per run",
        "simulator_fixed_latency_ms": opts.latency_ms,
        "provider_floor_ms": floor,
        "steady": steady,
        "ramp": ramp,
        "max_sustained_per_s": best,
        "sustained_criterion": f"achieved >= 97% of offered, no errors, client p99 <= "
        f"{opts.max_p99_ms:g} ms, over {opts.step_s:g} s per step; the ramp stops at the "
        "first rate that fails",
        "baseline_bare_call": bare,
        "comparison": {
            "fusion_client_p50_above_floor_ms": fused,
            "bare_call_client_p50_above_floor_ms": bare_extra,
            "ratio": round(fused / bare_extra, 2) if fused and bare_extra else None,
            "note": "client-side time above the provider floor at the steady rate: one fusion "
            "(3 members in parallel, then the judge: floor 2 x latency) against one bare "
            "simulator call (floor 1 x latency), same run",
        },
        "targets": {
            "overhead_p99_ms_at_steady_rate": _target(overhead_p99, OVERHEAD_TARGET_MS, below=True),
            "sustained_fusions_per_s": _target(best, RATE_TARGET, below=False),
        },
        "settings": {
            "auth": opts.auth,
            "pool_size": opts.pool_size or "service default",
            "service_tree": str(opts.service_tree) if opts.service_tree else "this checkout",
            "prefill_runs": opts.prefill_runs,
            "steady_rate_per_s": opts.steady_rate,
            "steady_s": opts.steady_s,
            "warmup_s": opts.warmup_s,
            "step_s": opts.step_s,
        },
        "environment": environment(),
    }


def _minus(value: float | None, floor: float) -> float | None:
    return None if value is None else round(value - floor, 3)


def _target(measured: float | None, target: float, *, below: bool) -> dict[str, Any]:
    passed = measured is not None and (measured <= target if below else measured >= target)
    return {"target": target, "measured": measured, "pass": passed}


@click.command()
@click.option(
    "--database-url",
    envvar="FUSION_LEDGER_BENCH_DATABASE_URL",
    default=DEFAULT_DB,
    show_default=True,
    help="Postgres server; a scratch schema is made and dropped.",
)
@click.option("--latency-ms", default=20.0, show_default=True, help="Simulator fixed latency.")
@click.option("--steady-rate", default=100.0, show_default=True, help="Fusions/s, overhead.")
@click.option("--steady-s", default=20.0, show_default=True, help="Seconds at the steady rate.")
@click.option("--warmup-s", default=5.0, show_default=True, help="Seconds of warm-up.")
@click.option(
    "--rates",
    default="50,75,100,150,200,250,300,400",
    show_default=True,
    help="Ramp in fusions/s, comma-separated (empty: no ramp).",
)
@click.option("--step-s", default=10.0, show_default=True, help="Seconds per ramp step.")
@click.option("--max-p99-ms", default=1000.0, show_default=True, help="Sustained: p99 bound.")
@click.option("--pool-size", type=int, default=None, help="FUSION_LEDGER_POOL_SIZE.")
@click.option(
    "--auth/--no-auth",
    default=True,
    show_default=True,
    help="Requests carry an API key (the service's default) or auth is off.",
)
@click.option(
    "--profile",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run the service under cProfile; service.prof lands in this folder.",
)
@click.option(
    "--logs",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the service and simulator logs here (default: a temporary folder).",
)
@click.option(
    "--service-tree",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Run the service from this source tree (e.g. a git worktree "
    "of another commit) to compare two versions on the same machine.",
)
@click.option(
    "--prefill-runs",
    type=int,
    default=0,
    show_default=True,
    help="Runs already in the log (and read models) before the service starts.",
)
def main(**kwargs: Any) -> None:
    """Measure orchestration overhead and the sustained fusion rate; print JSON."""
    logs: Path | None = kwargs.pop("logs")
    kwargs["rates"] = [float(r) for r in kwargs["rates"].split(",") if r.strip()]
    opts = Options(**kwargs)
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as scratch:
        folder = logs or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run(opts, folder))
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")


if __name__ == "__main__":
    main()
