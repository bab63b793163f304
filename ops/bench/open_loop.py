"""An open-loop HTTP load generator (aiohttp) and the summary of what it measured.

Open loop: requests start on a fixed schedule whatever the server's latency, so a
server that falls behind shows it as latency and a lower achieved rate instead of
slowing the sender down (a closed loop hides exactly the queueing we want to see).
The generator shares the machine with the server, so it also reports how late it
started requests itself (``generator_lag_ms``).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

SERVER_TIMING = re.compile(r"([\w-]+);dur=([\d.]+)")


@dataclass(slots=True)
class Sample:
    """One request: when it was due, sent and done (loop seconds), and what came back."""

    due: float
    sent: float = 0.0
    done: float = 0.0
    status: int = 0
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # Server-Timing, ms


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, sample: Sample) -> Sample:
    loop = asyncio.get_running_loop()
    sample.sent = loop.time()
    try:
        async with session.post(url, data=body) as response:
            await response.read()
            sample.status = response.status
            header = response.headers.get("server-timing", "")
            sample.timings = {name: float(ms) for name, ms in SERVER_TIMING.findall(header)}
    except (aiohttp.ClientError, TimeoutError) as exc:
        sample.error = type(exc).__name__
    sample.done = loop.time()
    return sample


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    body_of: Callable[[int], bytes],
    rate: float,
    seconds: float,
) -> list[Sample]:
    """POST rate*seconds bodies on a fixed schedule; wait for every answer."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(session, url, body_of(i), Sample(due))))
    return list(await asyncio.gather(*tasks))


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank), in the values' unit, to three decimals."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and max (nearest rank) and the count."""
    return {
        "p50": pct(values, 0.50),
        "p90": pct(values, 0.90),
        "p99": pct(values, 0.99),
        "max": pct(values, 1.0),
        "n": len(values),
    }


def summarize(samples: list[Sample], rate: float, seconds: float) -> dict[str, Any]:
    """Offered and achieved rate, client latency, Server-Timing metrics and errors."""
    ok = [s for s in samples if s.status == 200]
    errors = Counter(s.error or f"http_{s.status}" for s in samples if s.status != 200)
    span = max(s.done for s in samples) - min(s.due for s in samples) if samples else 0.0
    summary: dict[str, Any] = {
        "offered_per_s": rate,
        "seconds": seconds,
        "requests": len(samples),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        # answered per second from the first scheduled start to the last answer
        "achieved_per_s": round(len(ok) / span, 1) if span > 0 else None,
        "client_latency_ms": quantiles([(s.done - s.sent) * 1000 for s in ok]),
    }
    for name in sorted({name for s in ok for name in s.timings}):
        summary[f"{name}_ms"] = quantiles([s.timings[name] for s in ok if name in s.timings])
    summary["generator_lag_ms"] = quantiles([(s.sent - s.due) * 1000 for s in samples])
    return summary


def sustained(phase: dict[str, Any], max_p99_ms: float) -> bool:
    """Achieved >= 97% of offered, no error, client p99 within max_p99_ms."""
    p99 = phase["client_latency_ms"]["p99"]
    achieved = phase["achieved_per_s"]
    return bool(
        phase["errors"] == 0
        and achieved is not None
        and achieved >= 0.97 * phase["offered_per_s"]
        and p99 is not None
        and p99 <= max_p99_ms
    )
