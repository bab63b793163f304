"""POST /v1/route: the panel the router would pick now for a prompt, and why.

Runs nothing and writes nothing: the decision is made on the asking key's tenant's
current in-memory profiles as a dry run (no breaker probe is started). The answer holds
nothing of other tenants' runs but the breakers, which are the providers' health and
shared (README, Security).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from service.api.deps import Services, provide_services
from service.api.errors import Problem, problems
from service.api.fusions import MessageBody
from service.config import UnknownPreset, infer_category
from service.domain.events import Message, RouterDecision
from service.domain.judging import question_text
from service.domain.profiles import DEFAULT_TENANT
from service.domain.routing import RouteInfeasible
from service.orchestration.plan import stable_seed
from service.orchestration.router import Router, route_request

Seats = Annotated[int, msgspec.Meta(ge=1, le=16)]


class RouteBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    prompt: str | None = None
    messages: list[MessageBody] | None = None
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    preset: str | None = None
    k: Seats | None = None
    pool: list[str] | None = None
    max_cost_usd: Annotated[float, msgspec.Meta(ge=0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None


class BreakerBody(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    recent_failure_rate: float
    cooldown_s: float


class RouteResponse(msgspec.Struct, frozen=True, kw_only=True):
    category: str
    category_source: str
    category_rule: str | None
    panel: list[str]  # one model per seat, in seat order
    router: RouterDecision
    breakers: dict[str, BreakerBody]


def _invalid(field: str, detail: str) -> Problem:
    return Problem(422, "Invalid route request", f"{field}: {detail}", field=field)


def _messages(body: RouteBody) -> list[Message]:
    if (body.prompt is None) == (body.messages is None):
        raise _invalid("prompt", "give either prompt or messages")
    if body.prompt is not None:
        messages = [Message(role="user", content=body.prompt)]
    else:
        messages = [Message(role=m.role, content=m.content) for m in body.messages or []]
    if not any(m.content.strip() for m in messages):
        raise _invalid("prompt", "the prompt is empty")
    return messages


@post(
    "/v1/route",
    dependencies={"services": Provide(provide_services, sync_to_thread=False)},
    status_code=200,
    summary="What the router would pick now, and why",
    responses=problems(413, 422),
)
async def explain_route(
    request: Request[Any, Any, Any], data: JSONBody[RouteBody], services: NamedDependency[Services]
) -> RouteResponse:
    """Decide a panel for the prompt on the tenant's current profiles, without running it."""
    tenant: str = getattr(request.state, "tenant", DEFAULT_TENANT)
    router: Router = services.extras["router"]
    config = services.config
    messages = _messages(data)
    name = data.preset or config.default_preset
    try:
        preset = config.preset(name)
    except UnknownPreset:
        raise _invalid("preset", f"unknown preset {name!r}") from None
    text = question_text(messages)
    category, source, rule = data.category or "", "given", None
    if not category:
        category, source, rule = infer_category(config, text)
    seed = data.seed if data.seed is not None else stable_seed(text, category, "route")
    try:
        asked = route_request(
            config,
            preset,
            preset.judge_spec(),
            k=data.k,
            pool=data.pool,
            budget_usd=data.max_cost_usd,
        )
        decided = router.decide(
            category,
            asked,
            seed,
            tenant=tenant,
            messages=messages,
            output_tokens=data.max_tokens,
            dry_run=True,
        )
    except RouteInfeasible as exc:
        raise _invalid(exc.field, exc.message) from exc
    breakers: dict[str, Any] = {
        model: BreakerBody(
            state=view.state,
            recent_failure_rate=view.recent_failure_rate,
            cooldown_s=view.cooldown_s,
        )
        for model, view in router.breakers(asked.pool).items()
    }
    return RouteResponse(
        category=category,
        category_source=source,
        category_rule=rule,
        panel=list(decided.seats),
        router=decided.decision,
        breakers=breakers,
    )
