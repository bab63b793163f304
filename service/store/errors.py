"""Typed errors of the event store."""

from __future__ import annotations


class EventStoreError(Exception):
    """Base of the event store's errors."""


class WrongExpectedVersion(EventStoreError):
    """The stream was not at the expected version; nothing was written."""

    def __init__(self, stream_id: str, expected: int, actual: str) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"wrong expected version for {stream_id}: expected {expected}, actual {actual}"
        )


class EventIdConflict(EventStoreError):
    """Event ids were already used by a different append; nothing was written."""


class StreamNotFound(EventStoreError):
    """No stream has that id."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id} does not exist")
