"""Every event type survives the store unchanged (property-based, hypothesis).

Strategies are derived from each Struct's msgspec type description, so a field added
to the catalog is covered without touching this file.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain.events import (
    CATALOG,
    Event,
    GenerationParams,
    JudgeDecided,
    JudgeIdentity,
    JudgeSpec,
    PanelCallSucceeded,
    RunFailed,
    RunRequested,
)
from service.store import NO_STREAM, EventStore, NewEvent, UnstorableEvent
from service.store.verify import verify_chains

# jsonb cannot hold NUL (U+0000) and UTF-8 cannot hold lone surrogates; the codec
# refuses both (see the tests below).
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
# Every finite float, from subnormals to 1.8e308. jsonb rewrites numbers on the way
# in (1e16 comes back as 10000000000000000, 2.5e-8 as 0.000000025); decoding into a
# float field turns them back into the same double, and this property checks that.
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
# msgspec encodes integers of at most 64 bits.
INTS = st.integers(-(2**63), 2**63 - 1)
CONSTRAINTS = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "pattern")
PER_TYPE = settings(
    max_examples=30,
    deadline=None,
    # One store per event type serves all of its examples, on purpose: they append
    # to fresh streams, and the chain check below covers everything appended so far.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def strategy_for(info: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """A strategy producing values of a msgspec type (Struct fields, nested)."""
    if any(getattr(info, c, None) is not None for c in CONSTRAINTS):
        raise TypeError(f"{info!r} is constrained (msgspec.Meta): extend strategy_for")
    match info:
        case msgspec.inspect.StrType():
            return TEXT
        case msgspec.inspect.FloatType():
            return FLOATS
        case msgspec.inspect.BoolType():
            return st.booleans()
        case msgspec.inspect.IntType():
            return INTS
        case msgspec.inspect.NoneType():
            return st.none()
        case msgspec.inspect.LiteralType(values=values):
            return st.sampled_from(values)
        case msgspec.inspect.ListType(item_type=item):
            return st.lists(strategy_for(item), max_size=4)
        case msgspec.inspect.DictType(key_type=key, value_type=value):
            return st.dictionaries(strategy_for(key), strategy_for(value), max_size=4)
        case msgspec.inspect.UnionType(types=types):
            return st.one_of(*(strategy_for(t) for t in types))
        case msgspec.inspect.StructType(cls=cls, fields=fields):
            drawn = {}
            for field in fields:
                value = strategy_for(field.type)
                if not field.required:
                    default = (
                        field.default
                        if field.default is not msgspec.NODEFAULT
                        else field.default_factory()
                    )
                    value = st.just(default) | value
                drawn[field.name] = value
            return st.builds(cls, **drawn)
    raise TypeError(f"no strategy for {info!r}: extend strategy_for")


def events_of(cls: type[Event]) -> st.SearchStrategy[Event]:
    return strategy_for(msgspec.inspect.type_info(cls))


# Metadata is read back untyped, so a float of 1e16 or more comes back as the integer
# jsonb rewrote it to (4.801317870379833e16 -> 48013178703798330, a different number
# once it is an int); below 1e15 every finite double keeps its float form.
METADATA_FLOATS = st.floats(-1e15, 1e15, exclude_min=True, exclude_max=True)
METADATA = st.fixed_dictionaries(
    {"correlation_id": st.uuids().map(str), "tenant": TEXT, "actor": TEXT},
    optional={"causation_id": st.uuids().map(str), "note": TEXT, "weight": METADATA_FLOATS},
)


@pytest.mark.parametrize("event_type", CATALOG, ids=lambda cls: cls.type)
@PER_TYPE
@given(data=st.data())
async def test_every_event_type_round_trips_through_the_store(
    store: EventStore, event_type: type[Event], data: st.DataObject
) -> None:
    events = data.draw(st.lists(events_of(event_type), min_size=1, max_size=3), label="events")
    metadata = data.draw(METADATA, label="metadata")
    stream = f"run-{uuid.uuid4()}"
    appended = [NewEvent(e, metadata=metadata) for e in events]
    await store.append_to_stream(stream, appended, NO_STREAM)

    stored = await store.read_stream(stream)
    assert [r.decode() for r in stored] == events
    assert [r.event_type for r in stored] == [event_type.type] * len(events)
    assert [r.event_id for r in stored] == [a.event_id for a in appended]
    assert all(r.metadata_dict() == metadata for r in stored)
    # The hash Python recomputes from jsonb's text matches the one SQL wrote.
    async with store.pool.acquire() as conn:
        report = await verify_chains(conn)
    assert report.ok, report.problems


async def test_extreme_floats_round_trip(store: EventStore) -> None:
    weights = {"tiny": 5e-324, "big": 1.7976931348623157e308, "1e16": 1e16, "neg": -2.5e-8}
    event = JudgeDecided(
        judge=JudgeIdentity(kind="vote", model=None, prompt_version="v1"),
        final_answer="4",
        verdicts=[],
        member_weights=weights,
    )
    stream = f"run-{uuid.uuid4()}"
    await store.append_to_stream(stream, [NewEvent(event)], NO_STREAM)
    [stored] = await store.read_stream(stream)
    assert '"1e16": 10000000000000000' in stored.data  # jsonb did rewrite it
    assert stored.decode() == event


@pytest.mark.parametrize(
    "event",
    [
        RunFailed(reason="timeout", message="before\x00after"),
        RunFailed(reason="timeout", message="lone \ud800 surrogate"),
        RunFailed(reason="timeout", message="x", latency_ms=math.nan),
        RunFailed(reason="timeout", message="x", cost_usd=math.inf),
        # built in code, structs are not validated: it would never decode again
        RunFailed(reason="not-a-reason", message="x"),  # type: ignore[arg-type]
        RunFailed(reason="timeout", message=42),  # type: ignore[arg-type]
    ],
    ids=["nul-in-text", "lone-surrogate", "nan", "infinity", "not-in-literal", "wrong-type"],
)
async def test_unstorable_values_are_refused_and_nothing_is_written(
    store: EventStore, event: Event
) -> None:
    stream = f"run-{uuid.uuid4()}"
    with pytest.raises(UnstorableEvent):
        await store.append_to_stream(stream, [NewEvent(event)], NO_STREAM)
    assert await store.read_stream(stream) == []


@pytest.mark.parametrize(
    ("event", "where"),
    [
        # with a null elsewhere: the NaN check's encoder raised OverflowError (a 500)
        (RunRequested(run_id="r", messages=[], category="c", panel="auto",
                      judge=JudgeSpec(kind="vote"), params=GenerationParams(seed=10**23)),
         "params.seed"),
        # 2**63 fits msgpack's unsigned 64 bits: stored, and the projections' ::bigint
        # cast failed on it for good
        (PanelCallSucceeded(member_id="m1", model="m", provider="p", text="4",
                            finish_reason="stop", input_tokens=2**63, output_tokens=1,
                            cost_usd=0.0, latency_ms=1.0, attempts=[]),
         "input_tokens"),
    ],
    ids=["seed-beyond-msgpack", "tokens-at-2**63"],
)  # fmt: skip
async def test_integers_beyond_64_bits_are_refused(
    store: EventStore, event: Event, where: str
) -> None:
    stream = f"run-{uuid.uuid4()}"
    with pytest.raises(UnstorableEvent, match=f"{where} is an integer beyond 64 bits"):
        await store.append_to_stream(stream, [NewEvent(event)], NO_STREAM)
    assert await store.read_stream(stream) == []
    # the largest 64-bit count is a count
    fine = PanelCallSucceeded(member_id="m1", model="m", provider="p", text="4",
                              finish_reason="stop", input_tokens=2**63 - 1, output_tokens=1,
                              cost_usd=0.0, latency_ms=1.0, attempts=[])  # fmt: skip
    await store.append_to_stream(stream, [NewEvent(fine)], NO_STREAM)


async def test_non_finite_floats_nested_deep_are_refused(store: EventStore) -> None:
    # msgspec would write NaN as null: stored silently as "no temperature".
    event = RunRequested(
        run_id="r",
        messages=[],
        category="c",
        panel="auto",
        judge=JudgeSpec(kind="vote"),
        params=GenerationParams(temperature=math.nan),
    )
    with pytest.raises(UnstorableEvent, match="temperature"):
        await store.append_to_stream(f"run-{uuid.uuid4()}", [NewEvent(event)], NO_STREAM)
    with pytest.raises(UnstorableEvent, match="weight"):
        await store.append_to_stream(
            f"run-{uuid.uuid4()}",
            [NewEvent(RunFailed(reason="timeout", message="x"), metadata={"weight": math.inf})],
            NO_STREAM,
        )
