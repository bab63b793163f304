"""POST /v1/fusions: run a fusion and answer with its outcome."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from service.api.deps import IdempotencyKey, Services, provide_services
from service.api.errors import Problem, problems
from service.api.views import FusionResponse, fusion_view
from service.config import BoundedParams, PanelEntry
from service.domain.events import ClientIdentity, JudgeSpec, Message
from service.orchestration.fusion import (
    Fused,
    IdempotencyConflict,
    Overloaded,
    ShuttingDown,
    StillOpen,
)
from service.orchestration.planning import FusionAsk, InvalidRequest, plan_fusion
from service.store import UnstorableEvent

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class MessageBody(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str


class PanelEntryBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: str
    samples: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    params: BoundedParams = BoundedParams()


class JudgeBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["synthesize", "select", "vote"]
    model: str | None = None
    weighted: bool = False
    informed: bool = False
    fallback: Literal["vote", "first_success", "fail"] = "vote"
    allow_panel_model: bool = False

    def spec(self) -> JudgeSpec:
        """As the event catalog records it."""
        return JudgeSpec(
            kind=self.kind,
            model=self.model,
            weighted=self.weighted,
            informed=self.informed,
            allow_panel_model=self.allow_panel_model,
            fallback=self.fallback,
        )


class FusionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    prompt: str | None = None
    messages: list[MessageBody] | None = None
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    tags: list[Annotated[str, msgspec.Meta(max_length=64)]] = []
    preset: str | None = None
    panel: Literal["auto"] | list[str | PanelEntryBody] | None = None
    judge: JudgeBody | None = None
    params: BoundedParams = BoundedParams()
    max_cost_usd: NonNegative | None = None
    timeout_s: Positive | None = None
    min_successes: Annotated[int, msgspec.Meta(ge=1)] | None = None


def ask_from_body(body: FusionBody, client: ClientIdentity, key: str | None) -> FusionAsk:
    """Translate the HTTP body into the orchestration's request."""
    if body.prompt is not None and body.messages is not None:
        raise InvalidRequest("prompt", "give either prompt or messages, not both")
    if body.prompt is not None:
        messages = [Message(role="user", content=body.prompt)]
    else:
        messages = [Message(role=m.role, content=m.content) for m in body.messages or []]
    panel: Any = body.panel
    if isinstance(body.panel, list):
        panel = [
            p
            if isinstance(p, str)
            else PanelEntry(model=p.model, samples=p.samples, params=p.params.generation())
            for p in body.panel
        ]
    return FusionAsk(
        messages=messages, category=body.category, tags=list(body.tags), preset=body.preset,
        panel=panel, judge=body.judge.spec() if body.judge else None,
        params=body.params.generation(), client=client, idempotency_key=key,
        max_cost_usd=body.max_cost_usd, timeout_s=body.timeout_s,
        min_successes=body.min_successes,
    )  # fmt: skip


def client_identity(request: Request[Any, Any, Any]) -> ClientIdentity:
    """Who is asking (tenant and actor come from the API key once keys exist)."""
    return ClientIdentity(
        tenant=getattr(request.state, "tenant", "default"),
        actor=getattr(request.state, "actor", "anonymous"),
        user_agent=request.headers.get("user-agent"),
    )


class ProviderTiming(msgspec.Struct, frozen=True):
    """One fusion's split: time waiting on providers and the service's own overhead."""

    overhead_ms: float
    providers_ms: float

    def server_timing(self) -> str:
        """As a Server-Timing header value, so a client can read the exact split."""
        return f"overhead;dur={self.overhead_ms:.3f}, providers;dur={self.providers_ms:.3f}"


def received_at(request: Request[Any, Any, Any]) -> float:
    """When the request came in (perf_counter), as the outermost middleware saw it."""
    started: float | None = getattr(request.state, "received_at", None)
    return time.perf_counter() if started is None else started


def observe_overhead(services: Services, fused: Fused, started: float) -> ProviderTiming | None:
    """Time not spent waiting on a provider: total minus slowest member and judge.

    Only for finalized runs this call ran: the run an Idempotency-Key returns again
    waited on no provider in this request, and must not count as a fusion.
    """
    state = fused.state
    if state.finalized is None or not fused.ran_here:
        return None
    slowest = max((m.latency_ms or 0.0 for m in state.members.values()), default=0.0)
    judge = state.judge.latency_ms if state.judge else 0.0
    if state.judge_failure is not None:
        judge = state.judge_failure.latency_ms
    total = (time.perf_counter() - started) * 1000
    overhead_ms = max(total - slowest - judge, 0.0)
    services.runner.metrics.overhead.observe(overhead_ms / 1000)
    return ProviderTiming(overhead_ms=overhead_ms, providers_ms=slowest + judge)


async def run_ask(services: Services, ask: FusionAsk) -> tuple[str, Fused]:
    """Plan and run; InvalidRequest and IdempotencyConflict become 4xx problems, a full
    or stopping process a 503 with Retry-After."""
    try:
        plan = plan_fusion(services.config, ask)
    except InvalidRequest as exc:
        raise Problem(exc.status, "Invalid fusion request", str(exc), field=exc.field) from exc
    run_id = plan.run_id()
    try:
        fused = await services.runner.fuse_here(plan, run_id)
    except UnstorableEvent as exc:  # the request itself could not be recorded
        raise Problem(422, "Invalid fusion request", str(exc)) from exc
    except IdempotencyConflict as exc:
        raise Problem(422, "Idempotency-Key reused", str(exc)) from exc
    except Overloaded as exc:
        detail = f"the service is at capacity ({exc}); retry shortly"
        raise Problem(503, "Overloaded", detail, headers={"retry-after": "1"}) from exc
    except StillOpen as exc:  # not a failed run: the 502 it was said nothing of the kind
        raise Problem(503, "Run still open", str(exc), headers={"retry-after": "10"}) from exc
    except ShuttingDown as exc:
        detail = f"{exc}; retry (with the same Idempotency-Key, if any)"
        raise Problem(503, "Shutting down", detail, headers={"retry-after": "1"}) from exc
    return str(run_id), fused


@post(
    "/v1/fusions",
    dependencies={"services": Provide(provide_services, sync_to_thread=False)},
    status_code=200,
    summary="Run a fusion",
    responses={
        **problems(413, 422),
        502: ResponseSpec(FusionResponse, description="The run failed: failure_reason says why"),
        504: ResponseSpec(FusionResponse, description="The run's timeout_s cut it off"),
    },
)
async def create_fusion(
    request: Request[Any, Any, Any],
    data: JSONBody[FusionBody],
    services: NamedDependency[Services],
    idempotency_key: IdempotencyKey = None,
) -> Response[FusionResponse]:
    """Fan the prompt out to the panel, judge, and answer with the final answer."""
    try:
        ask = ask_from_body(data, client_identity(request), idempotency_key)
    except InvalidRequest as exc:
        raise Problem(422, "Invalid fusion request", str(exc), field=exc.field) from exc
    run_id, fused = await run_ask(services, ask)
    state = fused.state
    view = fusion_view(run_id, state)
    timing = observe_overhead(services, fused, received_at(request))
    status = 200 if state.status == "finalized" else 502
    if state.failed is not None and state.failed.reason == "timeout":
        status = 504
    headers = {"x-fusion-run-id": run_id}
    if status != 200:  # failed on record: a retry is a new run (OpenAI's clients honour it)
        headers["x-should-retry"] = "false"
    if timing is not None:
        headers["server-timing"] = timing.server_timing()
    return Response(view, status_code=status, headers=headers)
