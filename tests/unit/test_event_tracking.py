"""Events and their parts stay out of the cycle collector (see service/domain/events.py)."""

from __future__ import annotations

import gc

from service.domain.events import CATALOG, Attempt, PanelCallSucceeded, Part
from service.store.codec import decode_event, encode_event


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_event_and_part_type_is_untracked() -> None:
    tracked = [
        cls.__name__
        for cls in [*CATALOG, *_subclasses(Part)]
        if cls.__struct_config__.gc  # type: ignore[attr-defined]
    ]
    assert tracked == []


def test_a_decoded_event_is_not_tracked() -> None:
    event = PanelCallSucceeded(
        member_id="m1",
        model="sim/a",
        provider="sim",
        text="Answer: B",
        finish_reason="stop",
        input_tokens=1,
        output_tokens=1,
        cost_usd=0.0,
        latency_ms=1.0,
        attempts=[Attempt(number=1, outcome="ok", latency_ms=1.0, http_status=200)],
    )
    decoded = decode_event(event.type, event.schema_version, encode_event(event))
    assert decoded == event
    assert not gc.is_tracked(decoded)
    assert isinstance(decoded, PanelCallSucceeded)
    assert not gc.is_tracked(decoded.attempts[0])
