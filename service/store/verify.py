"""Tamper evidence: recompute every stream's hash chain, and take or check a digest
of the whole log (a root hash over every event in commit order up to a checkpoint)
that can be kept outside the database."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Literal

import asyncpg
import msgspec

from service.store.codec import RecordedEvent, genesis_hash, recorded_event_hash

DIGEST_FORMAT: Literal["fusion-ledger-digest/1"] = "fusion-ledger-digest/1"

CHAIN_SQL = """
SELECT global_position, transaction_id::text::bigint AS transaction_id, stream_id,
       stream_version, event_id, event_type, schema_version, data, metadata, recorded_at,
       prev_hash, hash
FROM events ORDER BY stream_id, stream_version
"""
STREAM_HEADS_SQL = "SELECT stream_id, version, last_hash FROM streams"
# A digest covers a prefix of the log in commit order (check_digest re-reads exactly
# "everything up to the digest's checkpoint"). With a position limit the prefix ends
# before the first event beyond it: commit order and position order can differ, so
# filtering on position alone would leave holes that check_digest reads as tampering.
DIGEST_SQL = """
WITH beyond AS MATERIALIZED (
    SELECT transaction_id, global_position FROM events
    WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot()) AND global_position > $1
    ORDER BY transaction_id, global_position
    LIMIT 1
)
SELECT e.transaction_id::text::bigint AS transaction_id, e.global_position, e.stream_id, e.hash
FROM events e
WHERE e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND NOT EXISTS (
      SELECT 1 FROM beyond b
      WHERE (e.transaction_id, e.global_position) >= (b.transaction_id, b.global_position))
ORDER BY e.transaction_id, e.global_position
"""
EXTENDS_SQL = """
SELECT transaction_id::text::bigint AS transaction_id, global_position, stream_id, hash
FROM events
WHERE (transaction_id, global_position) <= ($1::text::xid8, $2)
ORDER BY events.transaction_id, events.global_position  -- the column, not the bigint alias
"""


@dataclass(frozen=True, slots=True)
class Problem:
    """One place where the log does not check out."""

    stream_id: str
    stream_version: int | None
    global_position: int | None
    event_id: str | None
    reason: str


@dataclass(slots=True)
class VerifyReport:
    """What verify found: counts and the first problem of each bad stream."""

    events: int = 0
    streams: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every chain checks out."""
        return not self.problems


Count = Annotated[int, msgspec.Meta(ge=0)]


class Digest(msgspec.Struct, frozen=True, kw_only=True):
    """A commitment to the log up to a checkpoint in commit order. Read back, a file
    of another format, a negative count or a root that is not a sha256 is refused as
    unreadable (exit 2), rather than checked, passed or called tampering."""

    format: Literal["fusion-ledger-digest/1"]  # required: a file without it is not one
    transaction_id: Count
    global_position: Count
    events: Count
    streams: Count
    root: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    taken_at: str


@dataclass(frozen=True, slots=True)
class DigestCheck:
    """Result of checking the log against a saved digest."""

    ok: bool
    events_now: int
    streams_now: int
    root_now: str
    message: str


Progress = Callable[[int], None]


async def verify_chains(conn: asyncpg.Connection, progress: Progress | None = None) -> VerifyReport:
    """Recompute every stream's chain; report the first bad event of each stream."""
    report = VerifyReport()
    heads: dict[str, asyncpg.Record] = {}  # read in the chains' snapshot, below
    current: str | None = None
    expected_prev = b""
    version = 0
    broken = False

    def close_stream() -> None:
        if current is None:
            return
        # Pop even a broken stream's head: one left behind reads as "all events missing".
        head = heads.pop(current, None)
        if broken:
            return
        if head is None:
            report.problems.append(
                Problem(current, None, None, None, "stream has no bookkeeping row")
            )
        elif head["version"] != version or head["last_hash"] != expected_prev:
            report.problems.append(
                Problem(
                    current,
                    version,
                    None,
                    None,
                    f"stream head says version {head['version']}, chain ends at {version}: "
                    "events were removed from its end",
                )
            )

    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # Heads and chains from one snapshot: an append between two reads would look
        # like events removed from a stream's end, or a stream without its head.
        heads.update((r["stream_id"], r) for r in await conn.fetch(STREAM_HEADS_SQL))
        async for row in conn.cursor(CHAIN_SQL, prefetch=2000):
            event = RecordedEvent(**dict(row))
            if event.stream_id != current:
                close_stream()
                current, version, broken = event.stream_id, 0, False
                expected_prev = genesis_hash(current)
                report.streams += 1
            report.events += 1
            if progress is not None and report.events % 10000 == 0:
                progress(report.events)
            if broken:
                continue
            reason = _check(event, version, expected_prev)
            if reason is not None:
                broken = True
                report.problems.append(
                    Problem(
                        event.stream_id,
                        event.stream_version,
                        event.global_position,
                        str(event.event_id),
                        reason,
                    )
                )
            version, expected_prev = event.stream_version, event.hash
        close_stream()
    for stream_id, head in heads.items():
        if head["version"] > 0:
            report.problems.append(
                Problem(
                    stream_id,
                    None,
                    None,
                    None,
                    f"all {head['version']} events of the stream are missing",
                )
            )
    return report


def _check(event: RecordedEvent, version: int, expected_prev: bytes) -> str | None:
    if event.stream_version != version + 1:
        return f"version gap: expected {version + 1}, found {event.stream_version}"
    if event.prev_hash != expected_prev:
        return "prev_hash does not match the previous event's hash"
    if recorded_event_hash(event.prev_hash, event) != event.hash:
        return "hash does not match the event's content (data, metadata or identity changed)"
    return None


async def take_digest(conn: asyncpg.Connection, up_to_position: int | None = None) -> Digest:
    """Digest of every committed event in commit order (optionally up to a position)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = conn.cursor(DIGEST_SQL, up_to_position or 2**62, prefetch=5000)
        root, count, streams, last = await _fold(rows)
    xid, pos = last
    return Digest(
        format=DIGEST_FORMAT,
        transaction_id=xid,
        global_position=pos,
        events=count,
        streams=streams,
        root=root.hex(),
        taken_at=datetime.now(UTC).isoformat(),
    )


async def check_digest(conn: asyncpg.Connection, digest: Digest) -> DigestCheck:
    """Does the log still extend the digest? Catches deleted or rewritten events."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = conn.cursor(
            EXTENDS_SQL, str(digest.transaction_id), digest.global_position, prefetch=5000
        )
        root, count, streams, _ = await _fold(rows)
    if root.hex() == digest.root and count == digest.events:
        return DigestCheck(True, count, streams, root.hex(), "the log extends the digest")
    parts = [f"the log no longer extends the digest taken at position {digest.global_position}"]
    if count != digest.events:
        parts.append(
            f"{digest.events - count} of {digest.events} events are gone"
            if count < digest.events
            else f"{count - digest.events} events appeared"
        )
    if streams != digest.streams:
        parts.append(
            f"{digest.streams - streams} streams are gone"
            if streams < digest.streams
            else f"{streams - digest.streams} streams appeared"
        )
    if count == digest.events:
        parts.append("an event's hash was rewritten")
    return DigestCheck(False, count, streams, root.hex(), "; ".join(parts))


async def _fold(
    rows: asyncpg.cursor.CursorFactory[asyncpg.Record],
) -> tuple[bytes, int, int, tuple[int, int]]:
    root = hashlib.sha256(DIGEST_FORMAT.encode()).digest()
    count = 0
    streams: set[str] = set()
    last = (0, 0)
    async for row in rows:
        root = hashlib.sha256(root + row["hash"]).digest()
        count += 1
        streams.add(row["stream_id"])
        last = (row["transaction_id"], row["global_position"])
    return root, count, len(streams), last
