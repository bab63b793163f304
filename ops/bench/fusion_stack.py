"""The stack a fusion benchmark runs: simulator and service as their own processes, a
scratch Postgres schema, an API key, and CPU accounting per process.

The service's database connections carry an application_name, so the Postgres
backends serving them can be found in pg_stat_activity and their CPU counted too:
CPU per fusion holds up on a shared, noisy machine far better than latency does.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import msgspec

from service.config import parse_config
from service.providers.simulator import default_world
from service.serving import simulator_config_text

REPO = Path(__file__).resolve().parents[2]
TICKS = os.sysconf("SC_CLK_TCK")
PACKAGES = (
    "litestar",
    "uvicorn",
    "uvloop",
    "httptools",
    "httpx",
    "httpx-aiohttp",
    "aiohttp",
    "asyncpg",
    "msgspec",
    "prometheus-client",
)


def log(message: str) -> None:
    """Progress on stderr; stdout carries only the JSON."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(*args: str) -> list[str]:
    """The fusion-ledger command of this interpreter's environment."""
    script = Path(sys.executable).parent / "fusion-ledger"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "service", *args]


@contextlib.contextmanager
def process(
    args: list[str], logs: Path, name: str, env: dict[str, str], stop: int = signal.SIGTERM
) -> Iterator[subprocess.Popen[str]]:
    """A child whose stderr goes to logs/<name>.log; sent ``stop`` on exit, killed after 15 s."""
    with open(logs / f"{name}.log", "w") as err:
        child = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=err, env=env, text=True, cwd=REPO
        )
        try:
            yield child
        finally:
            child.send_signal(stop)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


async def start_simulator(stack: contextlib.ExitStack, latency_ms: float, logs: Path) -> Any:
    """The simulator (fixed latency) in its own process; returns (process, base_url)."""
    args = command(
        "simulate", "--port", str(free_port()), "--fixed-latency-ms", f"{latency_ms:g}", "--json"
    )
    child = stack.enter_context(process(args, logs, "simulator", dict(os.environ)))
    assert child.stdout is not None
    ready = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
    if not ready:
        raise RuntimeError(f"the simulator exited; see {logs / 'simulator.log'}")
    return child, msgspec.json.decode(ready)["base_url"]


def simulator_toml(base_url: str) -> str:
    """The simulator's presets (default: 3-member panel + LLM judge) as a config file."""
    world = default_world()
    names = sorted(world.models)
    prices = {
        n: (world.models[n].input_price_per_m, world.models[n].output_price_per_m) for n in names
    }
    text = simulator_config_text(names, prices, base_url)
    parse_config(text, source="<bench>")  # fail here, not in the service, if it is wrong
    return text


async def wait_ready(url: str, child: subprocess.Popen[str], name: str) -> None:
    """Poll url until it answers 200; fail if the child exits first."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"{name} exited with {child.returncode}; see its log")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready within 60 s")


def with_params(url: str, **params: str) -> str:
    """The URL with server settings added (asyncpg passes unknown query params on)."""
    parts = urlsplit(url)
    query = "&".join(q for q in [parts.query, urlencode(params)] if q)
    return urlunsplit(parts._replace(query=query))


@contextlib.asynccontextmanager
async def scratch_schema(url: str) -> AsyncIterator[str]:
    """A new empty schema, dropped afterwards; yields its name."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


async def bench_key(url: str) -> str:
    """An API key for the load, its rate limit far above anything offered."""
    from service.auth import create_key
    from service.store.database import connect

    conn = await connect(url)
    try:
        _, key = await create_key(conn, "bench", ["fuse"], "fusion_overhead", 10**9)
        return key
    finally:
        await conn.close()


async def ledger_counts(url: str) -> dict[str, Any]:
    """Events and runs the service wrote: proves every event was written."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT stream_id) AS runs "
            "FROM events WHERE stream_id LIKE 'run-%'"
        )
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    assert row is not None
    events, runs = int(row["n"]), int(row["runs"])
    per_run = round(events / runs, 3) if runs else None
    return {"events": events, "runs": runs, "events_per_run": per_run, "postgres": version}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (0 if it is gone or unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


@dataclass
class CpuMeter:
    """CPU of our processes (and of the service's Postgres backends) over one phase."""

    pids: dict[str, int]
    backends: asyncpg.Connection | None = None
    app_name: str = ""
    start: dict[str, float] = field(default_factory=dict)
    pg_start: dict[int, float] = field(default_factory=dict)
    machine: tuple[int, int] = (0, 0)

    async def _backend_pids(self) -> list[int]:
        if self.backends is None:
            return []
        rows = await self.backends.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", self.app_name
        )
        return [int(r["pid"]) for r in rows]

    async def begin(self) -> None:
        """Take the starting readings."""
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.pg_start = {pid: cpu_seconds(pid) for pid in await self._backend_pids()}
        self.machine = machine_jiffies()

    async def report(self, requests: int) -> dict[str, Any]:
        """CPU ms per request for each process; machine busy % over the phase, all cores."""
        used = {n: cpu_seconds(p) - self.start[n] for n, p in self.pids.items()}
        if self.backends is not None:
            pids = await self._backend_pids()
            used["postgres"] = sum(cpu_seconds(p) - self.pg_start.get(p, 0.0) for p in pids)
        busy, total = machine_jiffies()
        per = {n: round(1000 * s / max(requests, 1), 3) for n, s in used.items()}
        share = 100 * (busy - self.machine[0]) / max(total - self.machine[1], 1)
        return {"cpu_ms_per_request": per, "machine_busy_pct": round(share, 1)}


def _git(*args: str) -> str:
    """A git command's output in this checkout (empty when the command fails)."""
    run = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, check=False)
    return run.stdout


def environment() -> dict[str, Any]:
    """Versions, machine and load: the context needed to read the numbers."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    commit = _git("rev-parse", "--short", "HEAD").strip()
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "versions": versions,
        "git_commit": commit or None,
        "working_tree_modified": bool(dirty.strip()),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "note": "generator, service, simulator and Postgres share these cores; other work on "
        "the machine shows as machine_busy_pct above what our processes account for",
    }
