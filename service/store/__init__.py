"""Postgres adapter: the event store, its codec, migrations and verification."""

from service.store.codec import NewEvent, RecordedEvent, UnstorableEvent
from service.store.errors import EventIdConflict, EventStoreError, WrongExpectedVersion
from service.store.postgres import ANY, NO_STREAM, START, AppendResult, Checkpoint, EventStore

__all__ = [
    "ANY",
    "NO_STREAM",
    "START",
    "AppendResult",
    "Checkpoint",
    "EventIdConflict",
    "EventStore",
    "EventStoreError",
    "NewEvent",
    "RecordedEvent",
    "UnstorableEvent",
    "WrongExpectedVersion",
]
