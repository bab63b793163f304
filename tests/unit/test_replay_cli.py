"""``fusion-ledger replay`` against a scripted local service: a batch is named on stderr
as soon as it is accepted, so an interrupted command can be re-attached to, and it
is submitted under an Idempotency-Key derived from what it asks for."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from service import cli_replay
from service.cli import main
from service.cli_replay import parse_moment
from tests.unit.http_double import local_http

BATCH_ID = "0b7c1f3e-2d4a-4c5b-9e6f-7a8b9c0d1e2f"
RUN_ID = "5f0e9a1c-3b2d-4e6f-8a7b-1c2d3e4f5a6b"
RUNNING = {"batch_id": BATCH_ID, "status": "running", "runs": 3, "done": 1}


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the command remembers the batches it submitted: this test's own."""
    monkeypatch.setenv("FUSION_LEDGER_DATA_DIR", str(tmp_path / "data"))


@dataclass
class BatchService:
    """Accepts every batch as BATCH_ID and says it is still running; keeps the
    requests it got (method, path, Idempotency-Key, body)."""

    url: str = ""
    requests: list[tuple[str, str, str | None, Any]] = field(default_factory=list)


@contextlib.contextmanager
def batch_service(running: dict[str, Any] = RUNNING) -> Iterator[BatchService]:
    service = BatchService()

    def answer(method: str, path: str, headers: Message, sent: bytes) -> tuple[int, str, bytes]:
        key = headers.get("idempotency-key")
        service.requests.append((method, path, key, json.loads(sent) if sent else None))
        status, body = (200, running)
        if method == "POST":
            url = f"/v1/replays/{BATCH_ID}"
            status = 202
            body = {"batch_id": BATCH_ID, "status": "accepted", "runs": 3}
            posts = [r for r in service.requests if r[0] == "POST"]
            body |= {"existing": len(posts) > 1, "status_url": url}
        return status, "application/json", json.dumps(body).encode()

    with local_http(answer, "batch-service") as url:
        service.url = url
        yield service


def invoke(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200", "FUSION_LEDGER_API_KEY": None}).invoke(
        main, ["replay", *args]
    )


def interrupt(_: float) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("as_json", [[], ["--json"]], ids=["table", "json"])
def test_an_interrupted_batch_was_named_on_stderr_when_accepted(
    monkeypatch: pytest.MonkeyPatch, as_json: list[str]
) -> None:
    monkeypatch.setattr(cli_replay, "time", SimpleNamespace(sleep=interrupt))  # Ctrl-C
    with batch_service() as service:
        done = invoke("--judge", "vote", "--since", "2025-03-01", "--url", service.url, *as_json)
    assert done.exit_code == 130, done.output
    assert done.stdout == ""  # nothing for a --json reader but the report
    named, interrupted = done.stderr.strip().splitlines()
    assert f"batch {BATCH_ID} accepted: 3 runs" in named
    assert f"{service.url}/v1/replays/{BATCH_ID}" in named
    assert interrupted.startswith("error: interrupted")
    assert f"fusion-ledger replay --batch {BATCH_ID}" in interrupted
    assert [r[:2] for r in service.requests] == [
        ("GET", "/v1/replays/00000000-0000-4000-8000-000000000000"),  # may this key read?
        ("POST", "/v1/replays"),
        ("GET", f"/v1/replays/{BATCH_ID}"),
    ]


@pytest.mark.parametrize(("done", "says"), [(2, True), (1, False)], ids=["stuck", "working"])
def test_a_batch_left_to_an_upgraded_replica_says_so_while_followed(
    monkeypatch: pytest.MonkeyPatch, done: int, says: bool
) -> None:
    polls = iter([None])  # one pause, then Ctrl-C: two polls

    def pause(_: float) -> None:
        if next(polls, "stop") == "stop":
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_replay, "time", SimpleNamespace(sleep=pause))
    waiting = RUNNING | {"done": done, "waiting_for_upgrade": 1}
    with batch_service(waiting) as service:
        followed = invoke("--batch", BATCH_ID, "--url", service.url)
    assert followed.exit_code == 130, followed.output  # it keeps following until Ctrl-C
    assert [r[:2] for r in service.requests].count(("GET", f"/v1/replays/{BATCH_ID}")) == 2
    # Only once nothing else is left: until then the batch is still replaying.
    assert ("1 of its runs were recorded by a newer release" in followed.stderr) is says
    assert followed.stderr.count("waits:") == int(says)  # said once, polled twice


def test_the_idempotency_key_is_the_filter_and_judge_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_replay, "time", SimpleNamespace(sleep=interrupt))
    with batch_service() as service:
        common = ["--since", "2025-03-01T02:00:00+02:00", "--url", service.url]
        for args in (
            ["--judge", "vote", "--concurrency", "4"],
            ["--judge", "vote", "--concurrency", "2"],  # the same batch, asked again
            ["--judge", "vote", "--category", "arithmetic"],
            ["--judge", "select:sim/judge-strong"],
        ):
            assert invoke(*args, *common).exit_code == 130
    posts = [r for r in service.requests if r[0] == "POST"]
    keys = [key for _, _, key, _ in posts]
    assert all(key and key.startswith("replay:") and len(key) <= 200 for key in keys)
    # the batch asked again (another concurrency) is followed, not submitted again
    assert len(keys) == len(set(keys)) == 3
    again = {**posts[0][3], "concurrency": 2}
    assert cli_replay.batch_key(again) == keys[0]  # and its key would be the same
    # the times sent are absolute and in UTC: the key stands for what the service records
    assert posts[0][3]["filter"] == {"since": "2025-03-01T00:00:00+00:00"}


def test_a_span_counts_back_from_a_whole_minute_or_hour() -> None:
    # the same command run again shortly after asks for the same runs (and batch)
    now = datetime(2025, 3, 10, 12, 34, 56, 789, tzinfo=UTC)
    assert parse_moment("90m", now) == datetime(2025, 3, 10, 11, 4, tzinfo=UTC)
    assert parse_moment("12h", now) == datetime(2025, 3, 10, 0, 34, tzinfo=UTC)
    assert parse_moment("7d", now) == datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    assert parse_moment("2w", now) == datetime(2025, 2, 24, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--force"], "it needs --run"),
        (["--run", RUN_ID, "--batch", BATCH_ID], "give one of them"),
        # the filters were ignored with --run: one run was replayed, whatever they said
        (
            ["--run", RUN_ID, "--since", "1h", "--category", "x"],
            "--since, --category select a batch",
        ),
    ],
)
def test_options_that_cannot_go_together_are_refused(args: list[str], says: str) -> None:
    refused = invoke("--judge", "vote", *args, "--url", "http://127.0.0.1:9")
    assert refused.exit_code == 2 and says in refused.output, refused.output


def test_a_service_gone_while_following_names_the_batch_to_follow_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It said only "cannot reach the service" (exit 2): the batch, kept and resumed by
    # the service, was not named, and a re-run after a minute made a new one.
    def gone(_: float) -> None:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(cli_replay, "time", SimpleNamespace(sleep=gone))
    with batch_service() as service:
        done = invoke("--judge", "vote", "--since", "2025-03-01", "--url", service.url)
    assert done.exit_code == 1, done.output
    assert f"fusion-ledger replay --batch {BATCH_ID}" in done.stderr.splitlines()[-1]


def test_the_same_command_follows_its_unfinished_batch_without_submitting_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Re-run after a restart once the minute had turned, `--since 1h` resolved to other
    # times, so another Idempotency-Key: a second batch, the judge paid twice.
    monkeypatch.setattr(cli_replay, "time", SimpleNamespace(sleep=interrupt))  # Ctrl-C
    with batch_service() as service:
        first = invoke("--judge", "vote", "--since", "1h", "--url", service.url)
        again = invoke("--judge", "vote", "--since", "1h", "--url", service.url)
        other = invoke("--judge", "vote", "--since", "2h", "--url", service.url)
    assert first.exit_code == again.exit_code == other.exit_code == 130
    assert "submitted before by this command, is still running" in again.stderr
    posts = [r for r in service.requests if r[0] == "POST"]
    assert len(posts) == 2  # the first command's and the other command's, not a repeat
