"""Running an evaluation through a service's HTTP API, resumably.

Each line is one fusion and one dataset outcome, both sent with an Idempotency-Key
derived from the evaluation (its name, preset, panel and judge) and the line's key.
A re-run of an interrupted evaluation therefore gets back the runs it made before
(the service answers with the existing run) and records an outcome only on runs that
have none from this evaluation yet (the service answers 200 with the earlier one).

A run the service cut short (stopped or crashed mid-run: failed with reason shutdown,
abandoned, ...; or answered still open, when the service could not record its end)
says nothing about the panel, so it is neither graded nor scored: the line runs again
under the next derived key (``<key>:retry-1``, ...), which a later re-run finds in
turn. A run that failed on its own terms (quorum, judge, budget,
timeout) is the line's result and is scored as failed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec

from service.evaluation.dataset import EvalItem
from service.evaluation.results import FusionReply, ItemResult, OutcomeReply

T = TypeVar("T")
_FUSION_ANSWERED = (200, 502, 504)  # finalized, failed, timed out: all are recorded runs
_ASK_AGAIN_TRIES = 8  # both requests are idempotent, so a retry is always safe
# 429: rate limited; 503: the service's open-run bound is reached. Both carry Retry-After.
_ASK_AGAIN = (429, 503)
# Failure reasons of the service, not of the fusion: the run stopped with its process
# (shutdown), died with it (abandoned: closed later by the sweeper), or was cancelled.
# internal_error is not one: a bug that failed the run would fail its rerun too.
_CUT_SHORT = frozenset({"shutdown", "abandoned", "cancelled", "client_disconnected"})
_RERUNS = 3  # a line the service cut short runs again this often at most


class EvalFailed(Exception):
    """A line the service could not run or grade; what ran so far is kept.
    ``resumable``: running again may get further (the service was out of reach, or cut
    the line's runs short); else the service refused the request as it is (an unknown
    preset, a missing scope), and so would again."""

    def __init__(
        self, item: EvalItem, message: str, *, resumable: bool = False, key_reused: bool = False
    ) -> None:
        super().__init__(f"{item.name}: {message}")
        self.item = item
        self.resumable = resumable
        self.key_reused = key_reused  # the line's key made another ask before


def _refused(item: EvalItem, what: str, response: httpx.Response) -> EvalFailed:
    """The service refused a line's request: running again helps only after a 5xx."""
    return EvalFailed(
        item,
        f"{what}: {_problem(response)}",
        resumable=response.status_code >= 500,
        key_reused=_title(response) == "Idempotency-Key reused",
    )


@dataclass(frozen=True, slots=True)
class EvalSpec:
    """What an evaluation is: its name and how each line is fused."""

    name: str
    preset: str | None = None
    panel: tuple[str, ...] | None = None
    judge: tuple[tuple[str, str], ...] | None = None  # e.g. (("kind", "vote"),)

    @property
    def label(self) -> str:
        """The label its outcomes carry."""
        return f"eval:{self.name}"

    def idempotency_key(self, item: EvalItem, rerun: int = 0) -> str:
        """Stable for this evaluation and line; a different panel or judge is a new run.
        ``rerun`` n > 0 is the line's n-th run after ones the service cut short."""
        identity = msgspec.json.encode(
            [self.name, self.preset, self.panel, self.judge, item.key], order="sorted"
        )
        key = f"eval:{hashlib.sha256(identity).hexdigest()[:40]}"
        return f"{key}:retry-{rerun}" if rerun else key

    def fusion_body(self, item: EvalItem) -> dict[str, Any]:
        """POST /v1/fusions body for one line."""
        body: dict[str, Any] = {
            "prompt": item.prompt,
            "category": item.category,
            "tags": [self.label[:64]],
        }
        if self.preset is not None:
            body["preset"] = self.preset
        if self.panel is not None:
            body["panel"] = list(self.panel)
        if self.judge is not None:
            body["judge"] = dict(self.judge)
        return body


async def run_eval(
    client: httpx.AsyncClient,
    spec: EvalSpec,
    items: Sequence[EvalItem],
    *,
    concurrency: int = 4,
    on_done: Callable[[ItemResult], None] | None = None,
) -> list[ItemResult]:
    """Fuse and grade every item, at most ``concurrency`` at once; results in item order.

    The first line that fails stops the rest (EvalFailed): a service refusing one line
    (an unknown preset, a missing scope) would refuse them all, and a re-run resumes.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(item: EvalItem) -> ItemResult:
        async with gate:
            result = await evaluate_item(client, spec, item)
        if on_done is not None:
            on_done(result)
        return result

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
    except* EvalFailed as failures:
        first = min(
            (e for e in failures.exceptions if isinstance(e, EvalFailed)),
            key=lambda e: e.item.line,
        )
        raise first from None
    return [t.result() for t in tasks]


async def evaluate_item(client: httpx.AsyncClient, spec: EvalSpec, item: EvalItem) -> ItemResult:
    """One line: its fusion (or the earlier one) and its dataset outcome (or the earlier one)."""
    run, key = await _fuse(client, spec, item)
    headers = {"Idempotency-Key": key}
    outcome = {"expected": item.expected, "source": "dataset", "label": spec.label}
    graded = await _post(client, item, f"/v1/runs/{run.run_id}/outcomes", outcome, headers)
    if graded.status_code not in (200, 201):
        raise _refused(item, f"outcome refused on run {run.run_id}", graded)
    return ItemResult(item, run, _decode(item, graded, OutcomeReply))


async def _fuse(
    client: httpx.AsyncClient, spec: EvalSpec, item: EvalItem
) -> tuple[FusionReply, str]:
    """The line's run and its key: the first, under the line's keys in turn, that the
    service did not cut short. The keys are fixed, so a re-run walks the same runs."""
    for rerun in range(_RERUNS + 1):
        key = spec.idempotency_key(item, rerun)
        body, headers = spec.fusion_body(item), {"Idempotency-Key": key}
        answer = await _post(client, item, "/v1/fusions", body, headers)
        if answer.status_code not in _FUSION_ANSWERED:
            raise _refused(item, "fusion refused", answer)
        run = _decode(item, answer, FusionReply)
        if not _cut_short(run):
            return run, key
    raise EvalFailed(
        item,
        f"the service cut its run short {_RERUNS + 1} times, last {run.run_id} "
        f"({run.failure_reason or run.status}); not scored",
        resumable=True,
    )


def _cut_short(run: FusionReply) -> bool:
    """The service ended the run for reasons of its own, or lost track of it: a run
    answered still open (its end could not be recorded, the database failing under it)
    is closed later by the sweeper (abandoned), and cannot be graded while open."""
    return run.failure_reason in _CUT_SHORT or run.status == "running"


async def _post(
    client: httpx.AsyncClient,
    item: EvalItem,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> httpx.Response:
    for _ in range(_ASK_AGAIN_TRIES):
        try:
            response = await client.post(path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise EvalFailed(item, f"cannot reach the service: {exc!r}", resumable=True) from exc
        if response.status_code not in _ASK_AGAIN:
            return response
        await asyncio.sleep(_retry_after(response))
    return response


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.1), 30.0)
    except ValueError:
        return 1.0


def _decode(item: EvalItem, response: httpx.Response, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(response.content, type=kind)
    except msgspec.DecodeError as exc:
        raise EvalFailed(item, f"unexpected answer (HTTP {response.status_code}): {exc}") from exc


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('title', response.status_code)}: {body.get('detail', '')}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"


def _title(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("title") if isinstance(body, dict) else None
