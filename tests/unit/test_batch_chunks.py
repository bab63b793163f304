"""How a batch replay cuts its runs into round trips."""

from __future__ import annotations

from service.orchestration.batch_worker import MAX_RUNS_IN_FLIGHT, VOTE_CHUNK, chunk_size


def test_a_vote_batch_takes_big_chunks_but_keeps_every_worker_busy() -> None:
    assert chunk_size("vote", 10_000, 8) == VOTE_CHUNK == 256
    assert chunk_size("vote", 500, 8) == 63  # 8 chunks for 8 workers, not 2 of 256
    assert chunk_size("vote", 3, 8) == 1
    assert chunk_size("vote", 0, 8) == 1


def test_a_vote_batch_holds_a_bounded_number_of_runs_in_memory() -> None:
    assert chunk_size("vote", 100_000, 64) * 64 <= MAX_RUNS_IN_FLIGHT
    assert chunk_size("vote", 100_000, 64) == 32
    assert chunk_size("vote", 100_000, 10_000) == 1  # never zero


def test_a_judge_that_calls_a_model_replays_one_run_at_a_time() -> None:
    assert chunk_size("select", 10_000, 8) == 1
    assert chunk_size("synthesize", 10, 1) == 1
