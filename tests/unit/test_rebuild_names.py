"""Rebuild scratch schemas: one per (live schema, projection), within 63 bytes."""

from __future__ import annotations

from service.projections.definitions import PROJECTIONS
from service.projections.runner import _shadow_schema


def test_shadow_schemas_are_distinct_and_fit_postgres_names() -> None:
    for live in ("public", "t_0123456789ab", "x" * 60, "x" * 59 + "y"):
        names = {_shadow_schema(live, p.name) for p in PROJECTIONS}
        assert len(names) == len(PROJECTIONS)
        assert all(len(n.encode()) <= 63 for n in names)
    assert _shadow_schema("public", "runs") == "public__rebuild_runs"
    assert _shadow_schema("x" * 60, "runs") != _shadow_schema("x" * 59 + "y", "runs")
