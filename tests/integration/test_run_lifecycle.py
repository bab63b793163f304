"""Every run ends in answer.finalized or run.failed: shutdown, client disconnect, crash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import asyncpg
import httpx
import pytest
import uvicorn
from litestar import Litestar

from service.api.fusions import FusionBody, ask_from_body
from service.app import create_app
from service.config import Config, parse_config
from service.domain.events import (
    ClientIdentity,
    GenerationParams,
    JudgeSpec,
    Message,
    PanelRequest,
    PanelSelected,
    RunFailed,
    RunRequested,
)
from service.domain.scoring import CURRENT_NORMALIZER
from service.orchestration import fusion
from service.orchestration.fusion import FusionRunner
from service.orchestration.plan import FusionPlan
from service.orchestration.planning import plan_fusion
from service.orchestration.sweeper import FULL_SWEEP_EVERY, Sweeper, sweep_once
from service.providers.registry import ProviderRegistry
from service.serving import RUNS_CLOSE_MARGIN_S, ClosingServer
from service.settings import Settings
from service.store import NO_STREAM, EventStore, NewEvent, WrongExpectedVersion
from service.store.database import create_pool
from tests.conftest import TestDatabase

CONFIG = """
[providers.p]
base_url = "http://provider.test/v1"
max_attempts = 1
[models.fast]
provider = "p"
[models.hang]
provider = "p"
[models.slow]
provider = "p"
[presets.default]
panel = ["fast"]
judge = { kind = "vote" }
"""


class Remote:
    """The remote provider: `hang` and `slow` never answer until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release_slow = asyncio.Event()
        self.calls = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        model = json.loads(request.content)["model"]
        if model == "hang":
            await self.release.wait()
        if model == "slow":
            await self.release_slow.wait()
        return httpx.Response(
            200, json={"choices": [{"message": {"content": "Answer: 7"}, "finish_reason": "stop"}]}
        )


def plan(models: list[str], timeout_s: float = 30.0) -> FusionPlan:
    return FusionPlan(
        messages=[Message(role="user", content="3+4?")],
        category="arithmetic",
        category_source="given",
        category_rule=None,
        tags=[],
        preset=None,
        panel=[PanelRequest(model=m) for m in models],
        panel_method="fixed",
        judge=JudgeSpec(kind="vote"),
        params=GenerationParams(),
        client=ClientIdentity(),
        idempotency_key=None,
        max_cost_usd=None,
        timeout_s=timeout_s,
        member_timeout_s=timeout_s,
        min_successes=1,
    )


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG)


async def types_of(store: EventStore, stream_id: str) -> list[str]:
    return [e.event_type for e in await store.read_stream(stream_id)]


async def wait_for(store: EventStore, stream_id: str, count: int) -> None:
    for _ in range(500):
        if len(await store.read_stream(stream_id)) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{stream_id} never reached {count} events")


async def test_shutdown_fails_open_runs(store: EventStore, config: Config) -> None:
    remote = Remote()
    async with httpx.MockTransport(remote.handle) as http:
        runner = FusionRunner(store, ProviderRegistry(config, http, lambda _: None))
        run_id = uuid.uuid4()
        task = asyncio.create_task(runner.fuse(plan(["fast", "hang"]), run_id))
        await wait_for(store, f"run-{run_id}", 3)  # requested, selected, fast's answer
        await runner.close("shutdown")
        # The waiting request gets the run's recorded end to answer with (not a
        # cancellation, which the server would turn into a bare 500).
        state = await task
    assert state.failed is not None and state.failed.reason == "shutdown"
    types = await types_of(store, f"run-{run_id}")
    assert types[-1] == "run.failed"
    last = (await store.read_stream(f"run-{run_id}"))[-1].decode()
    assert last.reason == "shutdown"  # type: ignore[attr-defined]


async def hold_stream(blocker: asyncpg.Connection, stream_id: str) -> None:
    """Create the stream's row uncommitted on ``blocker``: an append to it waits."""
    await blocker.execute("BEGIN")
    await blocker.execute(
        "INSERT INTO streams (stream_id, category, version, last_hash) VALUES ($1, 'run', 1, '')",
        stream_id,
    )


async def until_an_append_waits(store: EventStore) -> None:
    # Not on the blocker: inside its transaction the statistics views stay as first read.
    for _ in range(500):
        if await store.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%append%'"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the run's first append never waited")


@pytest.mark.parametrize("landed", [True, False])
async def test_shutdown_during_the_first_append(
    store: EventStore, config: Config, landed: bool
) -> None:
    # Before: the cancellation cut the first append short, the run task ended
    # cancelled, and the waiting request got a bare 500; a run whose first events did
    # land stayed open until a sweeper closed it as abandoned.
    remote = Remote()
    run_id = uuid.uuid4()
    async with httpx.MockTransport(remote.handle) as http, store.pool.acquire() as blocker:
        runner = FusionRunner(store, ProviderRegistry(config, http, lambda _: None))
        await hold_stream(blocker, f"run-{run_id}")
        task = asyncio.create_task(runner.fuse(plan(["fast"]), run_id))
        await until_an_append_waits(store)
        closing = asyncio.create_task(runner.close("shutdown"))
        await asyncio.sleep(0.05)
        assert not task.done()  # the append is not cut midway: it waits for the lock
        # landed: the row goes away and the append goes on; else the row stays and the
        # append finds the stream taken: nothing of this run is written
        await blocker.execute("ROLLBACK" if landed else "COMMIT")
        await closing
        if landed:
            state = await task
            assert state.failed is not None and state.failed.reason == "shutdown"
        else:
            with pytest.raises(fusion.ShuttingDown):
                await task
    types = await types_of(store, f"run-{run_id}")
    if landed:
        assert types == ["run.requested", "panel.selected", "run.failed"]
    else:
        assert types == []
    assert remote.calls == 0  # no member was called for a run closed before it began


async def test_shutdown_while_waiting_for_another_replicas_run(
    store: EventStore, config: Config
) -> None:
    # The same Idempotency-Key's run, open in another process: this one polls it until
    # it closes. Stopping, it answers "retry" (a 503), not a cancellation (a bare 500).
    remote = Remote()
    run_id = uuid.uuid4()
    asked = plan(["fast"])
    elsewhere = [NewEvent(fusion._requested(run_id, asked, 1), {"tenant": "t1"})]
    await store.append_to_stream(f"run-{run_id}", elsewhere, NO_STREAM)
    async with httpx.MockTransport(remote.handle) as http:
        runner = FusionRunner(store, ProviderRegistry(config, http, lambda _: None))
        task = asyncio.create_task(runner.fuse(asked, run_id))
        await asyncio.sleep(0.2)
        assert not task.done()  # polling the other run
        await runner.close("shutdown")
        with pytest.raises(fusion.ShuttingDown):
            await task
    assert await types_of(store, f"run-{run_id}") == ["run.requested"]  # left to its owner


async def test_a_run_left_open_elsewhere_is_still_open_not_failed(
    store: EventStore, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key's run was left open by a process killed mid-run (the sweeper has not
    # closed it yet). Waiting out its deadline, the request got the open run back and
    # the API answered it as a failed run (502, status "running"); eval then stopped.
    monkeypatch.setattr(fusion, "EXISTING_GRACE_S", 0.3)
    run_id = uuid.uuid4()
    asked = plan(["fast"], timeout_s=0.1)
    left = [NewEvent(fusion._requested(run_id, asked, CURRENT_NORMALIZER), {"tenant": "t1"})]
    await store.append_to_stream(f"run-{run_id}", left, NO_STREAM)
    async with httpx.MockTransport(Remote().handle) as http:
        runner = FusionRunner(store, ProviderRegistry(config, http, lambda _: None))
        waiting = asyncio.create_task(runner.fuse(asked, run_id))
        await asyncio.sleep(0.1)
        # Only waited on here, not driven: the sweeper may close it (it was hidden).
        assert not waiting.done() and run_id not in runner.owned_run_ids()
        with pytest.raises(fusion.StillOpen, match="still open"):
            await waiting
    assert await types_of(store, f"run-{run_id}") == ["run.requested"]  # not touched


async def test_client_disconnect_does_not_stop_the_run(store: EventStore, config: Config) -> None:
    remote = Remote()
    async with httpx.MockTransport(remote.handle) as http:
        runner = FusionRunner(store, ProviderRegistry(config, http, lambda _: None))
        run_id = uuid.uuid4()
        request = asyncio.create_task(runner.fuse(plan(["fast", "hang"]), run_id))
        await wait_for(store, f"run-{run_id}", 3)
        request.cancel()  # what the server does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await request
        remote.release.set()
        await wait_for(store, f"run-{run_id}", 6)
    assert (await types_of(store, f"run-{run_id}"))[-1] == "answer.finalized"


async def test_run_deadline_fails_or_finalizes_in_time(store: EventStore, config: Config) -> None:
    remote = Remote()
    async with httpx.MockTransport(remote.handle) as http:
        runner = FusionRunner(store, ProviderRegistry(config, http, lambda _: None))
        state = await runner.fuse(plan(["hang"], timeout_s=0.3))
    # the deadline stopped the member, it did not fail on its own: the run timed out
    assert state.failed is not None and state.failed.reason == "timeout"
    assert state.members["m1"].error_kind == "timeout"


def opened(timeout_s: float) -> list[NewEvent]:
    """A run's first two events, as a process that then crashed wrote them."""
    requested = RunRequested(
        run_id="x",
        messages=[Message(role="user", content="q")],
        category="c",
        panel=[PanelRequest(model="fast")],
        judge=JudgeSpec(kind="vote"),
        timeout_s=timeout_s,
    )
    return [
        NewEvent(requested, {"tenant": "t1"}),
        NewEvent(PanelSelected(members=[], method="fixed")),
    ]


async def backdate(store: EventStore, streams: list[str]) -> None:
    """Make the streams' rows say they were created an hour ago (events stay as written)."""
    async with store.pool.acquire() as conn:
        await conn.execute(
            "UPDATE streams SET created_at = now() - interval '1 hour'"
            " WHERE stream_id = ANY($1::text[])",
            streams,
        )


async def test_sweeper_closes_abandoned_runs_only(store: EventStore) -> None:
    crashed, recent, owned = (f"run-{uuid.uuid4()}" for _ in range(3))
    await store.append_to_stream(crashed, opened(0.01), NO_STREAM)
    await store.append_to_stream(recent, opened(600), NO_STREAM)
    await store.append_to_stream(owned, opened(0.01), NO_STREAM)
    await asyncio.sleep(0.05)
    closed = await sweep_once(
        store, grace_s=0.0, owned=frozenset({uuid.UUID(owned.partition("-")[2])})
    )
    assert closed == 1
    assert (await types_of(store, crashed))[-1] == "run.failed"
    event = (await store.read_stream(crashed))[-1]
    assert event.decode().reason == "abandoned"  # type: ignore[attr-defined]
    assert event.metadata_dict()["tenant"] == "t1"
    assert (await types_of(store, recent))[-1] == "panel.selected"
    assert (await types_of(store, owned))[-1] == "panel.selected"
    assert await sweep_once(store, grace_s=0.0) == 1  # now the unowned one
    assert await sweep_once(store, grace_s=0.0) == 0  # closed runs stay closed
    with pytest.raises(WrongExpectedVersion):  # and its writer can no longer append
        await store.append_to_stream(crashed, opened(1)[1:], 2)


async def test_later_sweeps_look_only_past_the_watermark_and_keep_what_they_left_open(
    store: EventStore,
) -> None:
    old_owned, old_other, fresh = (f"run-{uuid.uuid4()}" for _ in range(3))
    for stream in (old_owned, old_other):
        await store.append_to_stream(stream, opened(0.01), NO_STREAM)
    await backdate(store, [old_owned, old_other])
    await asyncio.sleep(0.05)
    sweeper = Sweeper(store, grace_s=0.0)
    owned = frozenset({uuid.UUID(old_owned.partition("-")[2])})
    assert await sweeper.sweep(owned) == 1  # first sweep: every stream; the owned one stays
    assert (await types_of(store, old_other))[-1] == "run.failed"
    assert sweeper.since is not None
    hour_ago = (await store.read_stream(old_owned))[0].recorded_at - timedelta(minutes=59)
    assert sweeper.since <= hour_ago  # not past the run it left open

    await store.append_to_stream(fresh, opened(0.01), NO_STREAM)
    await asyncio.sleep(0.05)
    assert await sweeper.sweep() == 2  # the fresh crash, and the one no longer owned
    assert (await types_of(store, old_owned))[-1] == "run.failed"
    assert (await types_of(store, fresh))[-1] == "run.failed"

    # Past the watermark only: an old stream found open now (its creating transaction
    # outlasted the window) is the periodic full sweep's job.
    stale = f"run-{uuid.uuid4()}"
    await store.append_to_stream(stale, opened(0.01), NO_STREAM)
    await backdate(store, [stale])
    await asyncio.sleep(0.05)
    assert await sweeper.sweep() == 0
    sweeper.sweeps = FULL_SWEEP_EVERY  # every so often a sweep looks at every stream
    assert await sweeper.sweep() == 1
    assert (await types_of(store, stale))[-1] == "run.failed"


async def test_a_run_closed_elsewhere_while_members_answer_ends_as_the_log_says(
    store: EventStore, config: Config
) -> None:
    # Another process (a sweeper that judged it abandoned) closes the run while its
    # members are still answering: the first member event that cannot be written stops
    # the members still calling, no judge is called, nothing is written after the
    # close, and the runner returns the run as the log has it.
    remote = Remote()
    async with httpx.MockTransport(remote.handle) as http:
        runner = FusionRunner(store, ProviderRegistry(config, http, lambda _: None))
        run_id = uuid.uuid4()
        stream = f"run-{run_id}"
        judged = replace(plan(["hang", "slow"]), judge=JudgeSpec(kind="synthesize", model="fast"))
        task = asyncio.create_task(runner.fuse(judged, run_id))
        await wait_for(store, stream, 2)  # requested, selected
        closing = RunFailed(reason="abandoned", message="closed by another process")
        await store.append_to_stream(stream, [NewEvent(closing)], 2)
        remote.release.set()  # hang answers; its event can no longer be written
        state = await asyncio.wait_for(task, 10)  # slow is never released
    assert remote.calls == 2  # the two members; no judge
    assert state.status == "failed" and state.failed is not None
    assert state.failed.reason == "abandoned"
    assert await types_of(store, stream) == ["run.requested", "panel.selected", "run.failed"]


async def test_members_answering_close_together_share_one_append(
    store: EventStore, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fast answers first and lingers (here far longer than the test takes) for slow,
    # which answers 50 ms later: slow's append carries both, at once, and the last
    # member to answer never lingers, so the run ends well within the 5 s.
    monkeypatch.setattr(fusion, "MEMBER_LINGER_S", 5.0)
    remote = Remote()
    async with httpx.MockTransport(remote.handle) as http:
        runner = FusionRunner(store, ProviderRegistry(config, http, lambda _: None))
        run_id = uuid.uuid4()
        asyncio.get_running_loop().call_later(0.05, remote.release_slow.set)
        state = await asyncio.wait_for(runner.fuse(plan(["fast", "slow"]), run_id), 2)
    assert state.status == "finalized"
    transactions: dict[int, list[str]] = {}
    for event in await store.read_stream(f"run-{run_id}"):
        transactions.setdefault(event.transaction_id, []).append(event.event_type)
    assert list(transactions.values()) == [
        ["run.requested", "panel.selected"],
        ["panel.call.succeeded", "panel.call.succeeded"],
        ["judge.decided", "answer.finalized"],
    ]


@contextlib.asynccontextmanager
async def stopping_server(
    database: TestDatabase, config: Config, remote: Remote
) -> AsyncIterator[tuple[Litestar, ClosingServer, httpx.AsyncClient]]:
    """The service in a real server, as `serve` runs it, its providers answered by
    ``remote``, and a client of it; stop it with ``server.should_exit = True`` (as
    SIGTERM does): leaving the block waits for the server to end. What is in flight
    is closed 1 s after the stop."""
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=5)
    app = create_app(
        settings,
        config,
        sweeper=False,
        projections=False,
        http_transport=httpx.MockTransport(remote.handle),
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    grace = RUNS_CLOSE_MARGIN_S + 1
    server = ClosingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                       timeout_graceful_shutdown=int(grace)),
        app,
    )  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            yield app, server, client
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 30)


async def test_a_stopping_server_answers_a_waiting_request_with_its_runs_end(
    database: TestDatabase, config: Config
) -> None:
    # Before: the server waited its grace, cancelled the request (a bare text/plain
    # 500), and only then did the app's shutdown record the run as failed.
    remote = Remote()  # `hang` never answers
    async with stopping_server(database, config, remote) as (app, server, client):
        body = {"prompt": "3+4?", "panel": ["fast", "hang"]}
        waiting = asyncio.create_task(client.post("/v1/fusions", json=body))
        # Another request's key names a run another replica drives (still open).
        key = {"idempotency-key": "elsewhere"}
        elsewhere = plan_fusion(
            config,
            ask_from_body(FusionBody(prompt="1+1?"), ClientIdentity(), key["idempotency-key"]),
        )
        other = await create_pool(database.url, min_size=1, max_size=1)
        try:
            await EventStore(other).append_to_stream(
                f"run-{elsewhere.run_id()}",
                [
                    NewEvent(
                        fusion._requested(elsewhere.run_id(), elsewhere, CURRENT_NORMALIZER), {}
                    )
                ],
                NO_STREAM,
            )
        finally:
            await other.close()
        polling = asyncio.create_task(
            client.post("/v1/fusions", json={"prompt": "1+1?"}, headers=key)
        )
        for _ in range(400):  # both members called: the run is open, waiting on `hang`;
            # and the second request arrived (it waits on the other replica's run)
            if remote.calls >= 2 and app.state.services.runner.open_runs >= 2:
                break
            await asyncio.sleep(0.01)
        server.should_exit = True  # as SIGTERM does
        response = await waiting
        retry = await polling
    # Nothing ran here for this one: "retry", and the retry finds the other replica's run.
    assert retry.status_code == 503, retry.text
    assert retry.headers["retry-after"] == "1"
    assert retry.json()["title"] == "Shutting down"
    assert response.status_code == 502, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["failure_reason"] == "shutdown"
    run_id = response.json()["run_id"]
    store_conn = await asyncpg.connect(database.url)
    try:
        last = await store_conn.fetchval(
            "SELECT event_type FROM events WHERE stream_id = $1 "
            "ORDER BY stream_version DESC LIMIT 1",
            f"run-{run_id}",
        )
    finally:
        await store_conn.close()
    assert last == "run.failed"
