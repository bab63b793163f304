"""Turn what a client asked for into a FusionPlan, or say precisely what is wrong.

Every check happens here, before anything is written, so bad input writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from service.config import (
    Config,
    PanelEntry,
    PresetConfig,
    UnknownModel,
    UnknownPreset,
    infer_category,
)
from service.domain.events import (
    ClientIdentity,
    GenerationParams,
    JudgeSpec,
    Message,
    PanelRequest,
)
from service.domain.routing import RouteInfeasible, price_estimate, prompt_tokens
from service.orchestration.judge import FALLBACKS
from service.orchestration.plan import FusionPlan, RouteRequest
from service.orchestration.router import check_affordable, pool_models, route_request

PanelMethod = Literal["fixed", "preset", "router"]
MAX_PROMPT_CHARS = 200_000
MAX_MESSAGES = 1_000
MAX_TAGS = 32
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 control characters
MAX_PANEL_SEATS = 16
MAX_TIMEOUT_S = 600.0


class InvalidRequest(ValueError):
    """The request cannot be run; ``field`` names the offending input."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class FusionAsk:
    """A fusion request as the API or CLI received it (already type-checked)."""

    messages: list[Message]
    category: str | None = None
    tags: list[str] = field(default_factory=list)
    preset: str | None = None
    panel: str | Sequence[str | PanelEntry] | None = None
    judge: JudgeSpec | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    client: ClientIdentity = field(default_factory=ClientIdentity)
    idempotency_key: str | None = None
    max_cost_usd: float | None = None
    timeout_s: float | None = None
    min_successes: int | None = None


def plan_fusion(config: Config, ask: FusionAsk) -> FusionPlan:
    """Validate an ask against the configuration; raises InvalidRequest."""
    _check_messages(ask.messages)
    _check_labels(ask.category, ask.tags)
    preset_name = ask.preset or config.default_preset
    try:
        preset = config.preset(preset_name)
    except UnknownPreset:
        known = ", ".join(sorted(config.presets)) or "none configured"
        raise InvalidRequest("preset", f"unknown preset {preset_name!r} (known: {known})") from None
    panel, method = _panel(config, ask, preset.panel_entries(), preset.panel == "auto")
    judge = ask.judge or preset.judge_spec()
    _check_judge(config, judge, panel, preset.allow_panel_judge)
    if ask.max_cost_usd is not None and ask.max_cost_usd < 0:
        raise InvalidRequest("max_cost_usd", "must be zero or more")
    if method != "router":
        _check_budget(config, ask, panel)
    route = _route(config, ask, preset, judge) if method == "router" else None
    timeout = ask.timeout_s if ask.timeout_s is not None else preset.timeout_s
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise InvalidRequest("timeout_s", f"must be in (0, {MAX_TIMEOUT_S:g}] seconds")
    seats = route.k if route is not None else sum(p.samples for p in panel)
    quorum = ask.min_successes if ask.min_successes is not None else preset.min_successes
    quorum = min(quorum, seats) if ask.min_successes is None else quorum
    if not 1 <= quorum <= seats:
        raise InvalidRequest("min_successes", f"must be between 1 and the panel size ({seats})")
    text = ask.messages[-1].content
    source: Literal["given", "inferred", "default"] = "given"
    category, rule = ask.category or "", None
    if not category:
        category, source, rule = infer_category(config, text)
    return FusionPlan(
        messages=ask.messages, category=category, category_source=source,
        category_rule=rule, tags=list(ask.tags), preset=preset_name, panel=panel,
        panel_method=method, judge=judge, params=ask.params, client=ask.client,
        idempotency_key=ask.idempotency_key, max_cost_usd=ask.max_cost_usd,
        timeout_s=timeout, member_timeout_s=min(preset.member_timeout_s, timeout),
        min_successes=quorum, route=route,
    )  # fmt: skip


def _check_labels(category: str | None, tags: Sequence[str]) -> None:
    """Labels are shown in tables, CSV and terminals: no control characters (NUL, which
    Postgres text cannot hold, escape sequences, line breaks), and a bounded number of
    tags (the request is stored for good)."""
    if len(tags) > MAX_TAGS:
        raise InvalidRequest("tags", f"{len(tags)} tags; the limit is {MAX_TAGS}")
    for name, values in (("category", [category or ""]), ("tags", tags)):
        for value in values:
            control = _CONTROL.search(value)
            if control:
                raise InvalidRequest(
                    name, f"the control character U+{ord(control.group()):04X} is not allowed"
                )


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise InvalidRequest("messages", "give a prompt or at least one message")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest("messages", f"{len(messages)} messages; the limit is {MAX_MESSAGES}")
    if not any(m.content.strip() for m in messages):
        raise InvalidRequest("prompt", "the prompt is empty")
    size = sum(len(m.content) for m in messages)
    if size > MAX_PROMPT_CHARS:
        raise InvalidRequest("prompt", f"{size} characters; the limit is {MAX_PROMPT_CHARS}", 413)
    for m in messages:
        if m.role not in ("system", "user", "assistant"):
            raise InvalidRequest("messages", f"unknown role {m.role!r}")
        if "\x00" in m.content:
            raise InvalidRequest("messages", "the NUL character is not allowed")


def _panel(
    config: Config, ask: FusionAsk, preset_panel: list[PanelEntry], preset_auto: bool
) -> tuple[list[PanelRequest], PanelMethod]:
    if ask.panel == "auto" or (ask.panel is None and preset_auto):
        return [], "router"
    if isinstance(ask.panel, str):
        raise InvalidRequest("panel", 'must be "auto" or a list of models')
    entries = (
        preset_panel
        if ask.panel is None
        else [PanelEntry(model=p) if isinstance(p, str) else p for p in ask.panel]
    )
    if not entries:
        raise InvalidRequest("panel", "the panel is empty")
    for index, entry in enumerate(entries):
        try:
            config.model(entry.model)
        except UnknownModel:
            raise InvalidRequest(f"panel[{index}]", f"unknown model {entry.model!r}") from None
        if not 1 <= entry.samples <= MAX_PANEL_SEATS:
            raise InvalidRequest(f"panel[{index}].samples", f"must be 1..{MAX_PANEL_SEATS}")
    if sum(e.samples for e in entries) > MAX_PANEL_SEATS:
        raise InvalidRequest("panel", f"at most {MAX_PANEL_SEATS} seats")
    requests = [PanelRequest(model=e.model, samples=e.samples, params=e.params) for e in entries]
    return requests, ("preset" if ask.panel is None else "fixed")


def _check_budget(config: Config, ask: FusionAsk, panel: list[PanelRequest]) -> None:
    """A budget a fixed panel could never keep: the prompt's input tokens alone, at the
    seats' list prices, cost more. (Within it the run goes ahead; when the panel alone
    reaches it, the judge becomes the free vote.)"""
    if ask.max_cost_usd is None:
        return
    tokens = prompt_tokens(ask.messages)
    seats = pool_models(config, [p.model for p in panel])  # one per entry, in order
    floor = sum(p.samples * price_estimate(m, tokens, 0) for p, m in zip(panel, seats, strict=True))
    if floor > ask.max_cost_usd:
        raise InvalidRequest(
            "max_cost_usd",
            f"{ask.max_cost_usd:.6g} USD cannot pay for this panel: the prompt alone costs "
            f"at least {floor:.6g} USD at its models' input prices",
        )


def _route(config: Config, ask: FusionAsk, preset: PresetConfig, judge: JudgeSpec) -> RouteRequest:
    """An automatic panel: checked now, picked by the router when the run starts."""
    try:
        request = route_request(config, preset, judge, budget_usd=ask.max_cost_usd)
        check_affordable(config, request, ask.messages)
    except RouteInfeasible as exc:
        field = "panel" if exc.field in ("k", "pool") else exc.field
        raise InvalidRequest(field, exc.message) from None
    return request


def _check_judge(
    config: Config, judge: JudgeSpec, panel: list[PanelRequest], preset_allows: bool
) -> None:
    if judge.fallback not in FALLBACKS:
        raise InvalidRequest("judge.fallback", f"must be one of {', '.join(FALLBACKS)}")
    if judge.kind == "vote":
        if judge.model is not None:  # it would be recorded, and never called
            raise InvalidRequest("judge.model", "a vote judge calls no model; leave it out")
        return
    if judge.model is None:
        raise InvalidRequest("judge.model", f"a {judge.kind} judge needs a model")
    try:
        config.model(judge.model)
    except UnknownModel:
        raise InvalidRequest("judge.model", f"unknown model {judge.model!r}") from None
    on_panel = judge.model in {p.model for p in panel}
    if on_panel and not (preset_allows or judge.allow_panel_model):
        raise InvalidRequest(
            "judge.model",
            f"{judge.model} sits on the panel; a generator does not grade its own answers "
            "unless the request allows it (judge.allow_panel_model: true) or the preset "
            "does (allow_panel_judge)",
        )
