"""An evaluation line whose run the service could not close (its database failed under
the run) runs again, as for a run the service cut short, rather than stop the
evaluation as if the service had refused the line.

The service is answered here as its HTTP API answers (the way tests/unit/
test_evaluation.py does): the evaluation is a client of that API.
"""

from __future__ import annotations

import json

import httpx

from service.evaluation import EvalSpec, parse_dataset, run_eval

LINE = {"prompt": "What is 2+2?", "category": "arithmetic", "expected": "4"}


class ServiceLosingOneRun:
    """POST /v1/fusions answers the first run as the service does when it lost track of
    it mid-run (502, status "running": its end could not be written); the next runs
    finalize. An outcome on the open run is refused (409) as the service refuses it."""

    def __init__(self) -> None:
        self.runs: dict[str, str] = {}  # Idempotency-Key -> run id
        self.outcomes: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/fusions":
            key = request.headers["idempotency-key"]
            run_id = self.runs.setdefault(key, f"run-{len(self.runs) + 1}")
            lost = run_id == "run-1"
            body = {
                "run_id": run_id,
                "status": "running" if lost else "finalized",
                "answer": None if lost else "4",
                "members": [],
                "cost_usd": 0.0,
                "latency_ms": None,
                "failure_reason": None,
            }
            return httpx.Response(502 if lost else 200, json=body)
        run_id = request.url.path.split("/")[3]
        if run_id == "run-1":
            problem = {"title": "Run still open", "detail": "grade it once it has ended"}
            return httpx.Response(409, json=problem)
        self.outcomes.append(run_id)
        body = {"final_correct": json.loads(request.content)["expected"] == "4", "members": []}
        return httpx.Response(201, json=body | {"existing": False})


async def test_a_line_whose_run_was_left_open_runs_again() -> None:
    [item] = parse_dataset([json.dumps(LINE).encode()])
    spec = EvalSpec(name="bank")
    service = ServiceLosingOneRun()
    transport = httpx.MockTransport(service)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        [result] = await run_eval(client, spec, [item])
    assert (result.run.run_id, result.run.status) == ("run-2", "finalized")
    assert result.outcome.final_correct is True
    assert service.outcomes == ["run-2"]
    assert list(service.runs) == [spec.idempotency_key(item), spec.idempotency_key(item, 1)]
