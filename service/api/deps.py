"""What request handlers are given: one Services object, built by the lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

from litestar.datastructures import State
from litestar.params import HeaderParameter

from service.config import Config
from service.orchestration.fusion import FusionRunner
from service.store import EventStore


@dataclass(slots=True)
class Services:
    """The application's long-lived parts, owned by the lifespan."""

    config: Config
    store: EventStore
    runner: FusionRunner
    extras: dict[str, Any]
    # as_of answers rebuild a projection up to the point asked (seconds on a large log,
    # in a transaction that holds back every reader of the log): one at a time here.
    as_of_slot: asyncio.Lock = field(default_factory=asyncio.Lock)


def provide_services(state: State) -> Services:
    """Litestar dependency: the Services the lifespan put in app state."""
    services: Services = state.services
    return services


# The Idempotency-Key header of every route that takes one: an empty value is refused
# (it would make all of a tenant's keyless-looking requests one), as is a long one.
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False, min_length=1, max_length=200),
]
