"""Appends one run's events in order, with exact expected versions.

A run has a single writer: members finish concurrently, so appends go through a
lock, and each append names the version it expects. If anything else wrote to the
stream meanwhile (the sweeper closing it as abandoned), the writer gets
WrongExpectedVersion and the run stops instead of writing past a terminal event.

Events that arrive while an append is in flight wait for it, then go to the log
together in the next append (one transaction, in arrival order): members that
answer at the same moment cost one round trip, not three, and such an event waits no
longer than it would have waited for the lock anyway. A caller may also let its events
linger a moment for others it expects (``linger_s``, the only wait added): members
answering together then share one append even when the first finds none in flight.
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
        # Batches waiting for the next append, each with the future its caller awaits.
        self._queue: list[tuple[list[NewEvent], asyncio.Future[None]]] = []
        self.recorded: list[Event] = []

    def new(self, event: Event, caused_by: uuid.UUID | None = None) -> NewEvent:
        """The event with this run's metadata and a fresh id, ready for ``write``."""
        return NewEvent(event, self._metadata(caused_by))

    async def append(
        self, *events: Event, caused_by: uuid.UUID | None = None, linger_s: float = 0.0
    ) -> list[uuid.UUID]:
        """Append events atomically after everything this writer wrote; returns their ids."""
        batch = [self.new(e, caused_by) for e in events]
        await self.write(batch, linger_s=linger_s)
        return [n.event_id for n in batch]

    async def write(self, batch: list[NewEvent], *, linger_s: float = 0.0) -> None:
        """Append the batch atomically, after everything queued before it.

        ``linger_s``: first wait up to that long for a later write to carry this batch
        along (one round trip for both); the order stays the order of the calls."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((batch, done))
        if linger_s > 0:
            await asyncio.wait([done], timeout=linger_s)  # never cancels ``done``
        async with self._lock:
            if not done.done():  # else an append made while we waited carried it
                await self._flush(done)
        done.result()  # raises what the append that carried the batch raised

    async def _flush(self, mine: asyncio.Future[None]) -> None:
        taken, self._queue = self._queue, []
        events = [n for batch, _ in taken for n in batch]
        expected = self.version if self.version else NO_STREAM
        try:
            result = await self.store.append_to_stream(self.stream_id, events, expected)
        except asyncio.CancelledError:
            # Only this caller is cancelled: the others' batches go to the next append.
            self._queue[:0] = [item for item in taken if item[1] is not mine]
            raise
        except Exception as exc:
            for _, done in taken:
                done.set_exception(exc)
            return
        self.version = result.stream_version
        appended = [n.event for n in events]
        self.recorded.extend(appended)
        if self._on_append is not None:
            self._on_append(appended)
        for _, done in taken:
            done.set_result(None)

    def _metadata(self, caused_by: uuid.UUID | None) -> dict[str, Any]:
        meta: dict[str, Any] = dict(self._base)
        meta["causation_id"] = None if caused_by is None else str(caused_by)
        return meta
