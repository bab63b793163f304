"""The OpenAPI document names the error answers each route gives, not only its success:
a client generated from it knows a 429 or a 503 (retry) from a 422 (do not)."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

PROBLEM = {"$ref": "#/components/schemas/ProblemBody"}


def schema_of(response: dict[str, Any]) -> Any:
    return next(iter(response["content"].values()))["schema"]


async def test_every_v1_route_documents_its_error_answers(client: AsyncTestClient[Any]) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    routes = {(m.upper(), p): op["responses"] for p, ops in paths.items() for m, op in ops.items()}
    v1 = {route: responses for route, responses in routes.items() if route[1].startswith("/v1/")}
    assert len(v1) == 15
    for route, responses in v1.items():
        for code in ("400", "401", "403", "429", "503"):
            assert schema_of(responses[code]) == PROBLEM, (route, code)
    fusion = v1[("POST", "/v1/fusions")]
    assert schema_of(fusion["422"]) == PROBLEM and schema_of(fusion["413"]) == PROBLEM
    for code in ("502", "504"):  # a failed run answers with the run itself
        assert schema_of(fusion[code]) == schema_of(fusion["200"]), code
    for route in (("POST", "/v1/runs/{run_id}/outcomes"), ("POST", "/v1/runs/{run_id}/replays")):
        assert {"200", "201", "404", "409", "422"} <= set(v1[route]), route
    for route in (("GET", "/v1/runs/{run_id}"), ("GET", "/v1/replays/{batch_id}"),
                  ("GET", "/v1/models/{model_id}"), ("POST", "/v1/chat/completions")):  # fmt: skip
        assert schema_of(v1[route]["404"]) == PROBLEM, route
    assert "503" in routes[("GET", "/readyz")]


async def test_the_documented_problem_is_what_an_error_answers(
    client: AsyncTestClient[Any],
) -> None:
    components = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]
    fields = set(components["ProblemBody"]["properties"])
    answer = (await client.post("/v1/fusions", json={"prompt": ""})).json()
    assert fields - {"field"} <= set(answer), answer
