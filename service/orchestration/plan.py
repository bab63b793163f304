"""What a run will do, decided before anything is called: the validated request."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Literal

from service.domain.events import (
    ClientIdentity,
    GenerationParams,
    JudgeSpec,
    Message,
    PanelMember,
    PanelRequest,
    RouterDecision,
)

IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c2d0e-8a55-4c3e-9b7a-0f1e2d3c4b5a")


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """An automatic panel, still to be picked by the router: k seats from the pool."""

    k: int
    pool: tuple[str, ...]
    budget_usd: float | None = None


@dataclass(frozen=True, slots=True)
class FusionPlan:
    """A fusion request after validation against the configuration."""

    messages: list[Message]
    category: str
    category_source: Literal["given", "inferred", "default"]
    category_rule: str | None
    tags: list[str]
    preset: str | None
    panel: list[PanelRequest]
    panel_method: Literal["fixed", "preset", "router"]
    judge: JudgeSpec
    params: GenerationParams
    client: ClientIdentity
    idempotency_key: str | None
    max_cost_usd: float | None
    timeout_s: float
    member_timeout_s: float
    min_successes: int
    route: RouteRequest | None = None  # panel "auto": the router fills ``panel``
    router_decision: RouterDecision | None = None  # set once the router has picked

    def run_id(self) -> uuid.UUID:
        """A new run id, or the one the idempotency key always maps to."""
        if self.idempotency_key is None:
            return uuid.uuid4()
        name = f"{self.client.tenant}\n{self.idempotency_key}"
        return uuid.uuid5(IDEMPOTENCY_NAMESPACE, name)

    def members(self) -> list[PanelMember]:
        """Panel seats: one per sample of each requested model (self-fusion allowed)."""
        seats: list[PanelMember] = []
        for request in self.panel:
            for sample in range(request.samples):
                seats.append(
                    PanelMember(
                        member_id=f"m{len(seats) + 1}",
                        model=request.model,
                        sample_index=sample,
                        params=_merge(self.params, request.params),
                    )
                )
        return seats


def _merge(base: GenerationParams, override: GenerationParams) -> GenerationParams:
    return GenerationParams(
        temperature=override.temperature if override.temperature is not None else base.temperature,
        max_tokens=override.max_tokens if override.max_tokens is not None else base.max_tokens,
        top_p=override.top_p if override.top_p is not None else base.top_p,
        seed=override.seed if override.seed is not None else base.seed,
    )


def stable_seed(*parts: str) -> int:
    """A 31-bit seed derived from text, the same in every process."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
