"""A run's writer: events that arrive during an append share the next one, in order;
a failed append fails every caller whose events it carried."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from service.domain.events import RunFailed
from service.orchestration.run_writer import RunWriter
from service.store import ANY, EventStore, WrongExpectedVersion


def note(text: str) -> RunFailed:
    """A small event to append (the store does not check a run's grammar)."""
    return RunFailed(reason="internal_error", message=text)


def writer_for(store: EventStore) -> tuple[RunWriter, str]:
    stream_id = f"run-{uuid.uuid4()}"
    return RunWriter(store, stream_id, "tenant-a", "tester"), stream_id


async def test_events_waiting_for_an_append_share_the_next_one(store: EventStore) -> None:
    writer, stream_id = writer_for(store)
    await writer.append(note("requested"))
    # Three members answer at once: the first append takes the lock, two wait for it.
    ids = await asyncio.gather(*(writer.append(note(f"member {i}")) for i in range(3)))
    recorded = await store.read_stream(stream_id)
    assert [e.decode() for e in recorded] == [
        note(t) for t in ("requested", "member 0", "member 1", "member 2")
    ]
    assert [e.stream_version for e in recorded] == [1, 2, 3, 4]
    assert [e.event_id for e in recorded[1:]] == [i[0] for i in ids]
    # member 0 alone, members 1 and 2 in one transaction
    xids = [e.transaction_id for e in recorded[1:]]
    assert xids[0] != xids[1] and xids[1] == xids[2]
    assert writer.version == 4 and len(writer.recorded) == 4


async def test_a_failed_append_fails_every_event_it_carried(store: EventStore) -> None:
    writer, stream_id = writer_for(store)
    await writer.append(note("requested"))
    # Someone else (the sweeper) closes the run: this writer's version is stale.
    await store.append_to_stream(stream_id, [writer.new(note("abandoned"))], ANY)
    results = await asyncio.gather(
        *(writer.append(note(f"member {i}")) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, WrongExpectedVersion) for r in results), results
    assert len(await store.read_stream(stream_id)) == 2
    with pytest.raises(WrongExpectedVersion):
        await writer.append(note("late"))


async def test_a_lingering_event_shares_the_append_of_one_that_follows(store: EventStore) -> None:
    writer, stream_id = writer_for(store)
    await writer.append(note("requested"))
    # Member 0 answers and lingers; member 1 answers within that time and writes at once.
    first = asyncio.create_task(writer.append(note("member 0"), linger_s=5.0))
    await asyncio.sleep(0.01)
    assert not first.done()  # still lingering: nothing written yet
    await writer.append(note("member 1"))
    await first  # carried by member 1's append, long before its 5 s were up
    recorded = await store.read_stream(stream_id)
    assert [e.decode() for e in recorded] == [
        note(t) for t in ("requested", "member 0", "member 1")
    ]
    assert recorded[1].transaction_id == recorded[2].transaction_id


async def test_a_lingering_event_is_written_alone_when_nothing_follows(store: EventStore) -> None:
    writer, stream_id = writer_for(store)
    await writer.append(note("requested"))
    await asyncio.wait_for(writer.append(note("member 0"), linger_s=0.01), timeout=5)
    recorded = await store.read_stream(stream_id)
    assert [e.decode() for e in recorded] == [note("requested"), note("member 0")]
    assert writer.version == 2
