"""The default simulated world, shaped on SIMULATOR-CALIBRATION.md (RouterBench figures).

Part of the provider test double. Eleven panel models ``model-a`` ... ``model-k`` take
their multiple_choice (ARC), two_choice (Winogrande) and code (MBPP) accuracies from
the calibration table. Arithmetic and short_fact figures are invented so that no model
is best everywhere: a cheap model (model-e) leads arithmetic and the older flagship
(model-h) leads short facts, while model-a leads the three measured tasks.

Prices come from the table's milli-dollars per query, averaged over the three tasks,
assuming a typical query of 400 input and 100 output tokens with output priced at three
times input: cost = (400 p + 100 * 3 p) / 1e6 dollars, so p = m$/query / 0.7 per
million input tokens. They span two orders of magnitude (model-j to model-a: ~80x).

``shared_difficulty`` per category was fitted so that, with one sample per model, the
mean pairwise error correlation and the share of items defeating at least 8 of the 11
models come close to the measured ones (ARC 0.38 / 7.9%, MBPP 0.43 / 34%,
Winogrande 0.07 / 6.9%); ``calibration.measure`` reports what a world really gives.

Failure rates are zero for panel models so tests against the default world are
deterministic; the ``fault-*`` models fail on purpose, and ``judge-broken`` always
replies with invalid JSON. Change any of it at run time through the admin endpoint.
"""

from __future__ import annotations

from msgspec.structs import replace

from service.providers.simulator.world import CategorySpec, ModelSpec, World

_INPUT_TOKENS, _OUTPUT_TOKENS, _OUTPUT_PRICE_RATIO = 400, 100, 3.0

# name: (accuracy, m$ per query) on multiple_choice (ARC), two_choice (Winogrande), code (MBPP)
_TABLE: dict[str, tuple[tuple[float, float], ...]] = {
    "model-a": ((0.945, 5.07), (0.859, 3.53), (0.686, 9.38)),
    "model-b": ((0.826, 0.51), (0.641, 0.35), (0.653, 0.33)),
    "model-c": ((0.846, 0.30), (0.679, 0.21), (0.541, 0.17)),
    "model-d": ((0.900, 4.06), (0.562, 2.82), (0.597, 4.27)),
    "model-e": ((0.895, 0.40), (0.754, 0.28), (0.386, 0.23)),
    "model-f": ((0.821, 0.41), (0.517, 0.28), (0.604, 0.48)),
    "model-g": ((0.654, 0.39), (0.585, 0.27), (0.518, 0.16)),
    "model-h": ((0.582, 4.07), (0.478, 2.83), (0.642, 5.84)),
    "model-i": ((0.796, 0.46), (0.503, 0.32), (0.330, 0.30)),
    "model-j": ((0.664, 0.10), (0.566, 0.07), (0.344, 0.05)),
    "model-k": ((0.653, 0.15), (0.529, 0.11), (0.370, 0.08)),
}
# Invented: arithmetic, short_fact accuracy; latency median (expensive models are slower).
_INVENTED: dict[str, tuple[float, float, float]] = {
    "model-a": (0.90, 0.82, 1100),
    "model-b": (0.86, 0.70, 500),
    "model-c": (0.80, 0.66, 420),
    "model-d": (0.84, 0.86, 1300),
    "model-e": (0.93, 0.60, 450),
    "model-f": (0.78, 0.74, 600),
    "model-g": (0.70, 0.58, 380),
    "model-h": (0.62, 0.89, 1400),
    "model-i": (0.88, 0.52, 520),
    "model-j": (0.55, 0.48, 300),
    "model-k": (0.60, 0.63, 330),
}

DEFAULT_CATEGORIES: dict[str, CategorySpec] = {
    "multiple_choice": CategorySpec(shared_difficulty=0.66, distractor_pull=0.6),
    "two_choice": CategorySpec(shared_difficulty=0.12, distractor_pull=1.0),
    "code": CategorySpec(shared_difficulty=0.66, distractor_pull=0.6),
    "arithmetic": CategorySpec(shared_difficulty=0.45, distractor_pull=0.6),
    "short_fact": CategorySpec(shared_difficulty=0.55, distractor_pull=0.5),
}


def input_price_per_m(milli_dollars_per_query: float) -> float:
    """USD per million input tokens that make a typical query cost this much."""
    tokens = _INPUT_TOKENS + _OUTPUT_TOKENS * _OUTPUT_PRICE_RATIO
    return round(milli_dollars_per_query / 1000 / tokens * 1e6, 3)


def _panel_model(name: str) -> ModelSpec:
    (mc, mc_cost), (tc, tc_cost), (co, co_cost) = _TABLE[name]
    arithmetic, short_fact, latency = _INVENTED[name]
    price = input_price_per_m((mc_cost + tc_cost + co_cost) / 3)
    return ModelSpec(
        name=name,
        input_price_per_m=price,
        output_price_per_m=round(price * _OUTPUT_PRICE_RATIO, 3),
        accuracy={
            "arithmetic": arithmetic,
            "multiple_choice": mc,
            "two_choice": tc,
            "code": co,
            "short_fact": short_fact,
        },
        latency_median_ms=latency,
        latency_sigma=0.35,
    )


def _judges() -> list[ModelSpec]:
    strong = ModelSpec(
        name="judge-strong",
        role="judge",
        input_price_per_m=5.0,
        output_price_per_m=15.0,
        accuracy={
            "arithmetic": 0.92,
            "multiple_choice": 0.93,
            "two_choice": 0.84,
            "code": 0.70,
            "short_fact": 0.80,
        },
        judge_skill=0.9,
        latency_median_ms=900,
        latency_sigma=0.3,
    )
    weak = ModelSpec(
        name="judge-weak",
        role="judge",
        input_price_per_m=0.15,
        output_price_per_m=0.45,
        accuracy={
            "arithmetic": 0.60,
            "multiple_choice": 0.68,
            "two_choice": 0.55,
            "code": 0.38,
            "short_fact": 0.50,
        },
        judge_skill=0.55,
        latency_median_ms=350,
        latency_sigma=0.3,
    )
    return [strong, weak, replace(weak, name="judge-broken", malformed_rate=1.0)]  # fmt: skip


def _faults() -> list[ModelSpec]:
    base = ModelSpec(
        name="fault", role="fault", input_price_per_m=0.2, output_price_per_m=0.6,
        default_accuracy=0.7, latency_median_ms=300, latency_sigma=0.3,
    )  # fmt: skip
    return [
        replace(base, name="fault-timeout", timeout_rate=1.0),
        replace(base, name="fault-rate-limited", rate_limited_rate=1.0),
        replace(base, name="fault-rate-limited-once", failure_cycle="R."),
        replace(base, name="fault-server-error", server_error_rate=1.0),
        replace(base, name="fault-malformed", malformed_body_rate=1.0),
    ]


def default_world(seed: int = 7, fixed_latency_ms: float | None = None) -> World:
    """The calibrated default world: 11 panel models, 3 judges, 5 failure doubles."""
    models = [_panel_model(name) for name in _TABLE] + _judges() + _faults()
    return World(
        models={m.name: m for m in models},
        categories=dict(DEFAULT_CATEGORIES),
        seed=seed,
        fixed_latency_ms=fixed_latency_ms,
    )
