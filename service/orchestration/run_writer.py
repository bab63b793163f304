"""Appends one run's events in order, with exact expected versions.

A run has a single writer: members finish concurrently, so appends go through a
lock, and each append names the version it expects. If anything else wrote to the
stream meanwhile (the sweeper closing it as abandoned), the writer gets
WrongExpectedVersion and the run stops instead of writing past a terminal event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from service.domain.events import Event
from service.store import NO_STREAM, EventStore, NewEvent


class RunWriter:
    """The single writer of one run or replay stream."""

    def __init__(
        self,
        store: EventStore,
        stream_id: str,
        tenant: str,
        actor: str,
        on_append: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        self.store = store
        self._on_append = on_append
        self.stream_id = stream_id
        self.correlation_id = stream_id.partition("-")[2]
        self.version = 0
        self._base = {"correlation_id": self.correlation_id, "tenant": tenant, "actor": actor}
        self._lock = asyncio.Lock()
        self.recorded: list[Event] = []

    async def append(self, *events: Event, caused_by: uuid.UUID | None = None) -> list[uuid.UUID]:
        """Append events atomically after everything this writer wrote; returns their ids."""
        async with self._lock:
            batch = [NewEvent(e, self._metadata(caused_by)) for e in events]
            expected = self.version if self.version else NO_STREAM
            result = await self.store.append_to_stream(self.stream_id, batch, expected)
            self.version = result.stream_version
            self.recorded.extend(events)
            if self._on_append is not None:
                self._on_append(events)
            return [n.event_id for n in batch]

    def _metadata(self, caused_by: uuid.UUID | None) -> dict[str, Any]:
        meta: dict[str, Any] = dict(self._base)
        meta["causation_id"] = None if caused_by is None else str(caused_by)
        return meta
