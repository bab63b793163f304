"""Measure a simulated world the way SIMULATOR-CALIBRATION.md measured real models.

Part of the provider test double: one sample per model per bank question, then per
category each model's accuracy, the mean pairwise correlation of two models' errors,
and the share of questions that defeat most models (8 of 11 in the calibration).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from service.providers.simulator.answering import is_correct
from service.providers.simulator.bank import CATEGORIES
from service.providers.simulator.world import World


@dataclass(frozen=True, slots=True)
class CategoryCalibration:
    """What one category of a world looks like when measured."""

    category: str
    questions: int
    accuracy: dict[str, float]  # measured, per model
    mean_error_correlation: float  # mean Pearson correlation of two models' error indicators
    defeat_threshold: int  # "defeated" means at least this many models were wrong
    defeated_share: float


def defeat_threshold(models: int) -> int:
    """The calibration's "at least 8 of 11", scaled to the panel size."""
    return max(1, math.ceil(models * 8 / 11))


def measure(
    world: World,
    models: Sequence[str] | None = None,
    categories: Sequence[str] = CATEGORIES,
    sample: int = 0,
) -> dict[str, CategoryCalibration]:
    """Answer every bank question once with every model and measure each category."""
    names = list(models) if models is not None else world.names("panel")
    specs = [world.models[name] for name in names]
    threshold = defeat_threshold(len(names))
    report: dict[str, CategoryCalibration] = {}
    for category in categories:
        questions = world.bank.in_category(category)
        errors = [[not is_correct(world, m, q, sample) for q in questions] for m in specs]
        defeated = sum(1 for i in range(len(questions)) if sum(e[i] for e in errors) >= threshold)
        correlations = [_correlation(a, b) for a, b in combinations(errors, 2)]
        report[category] = CategoryCalibration(
            category=category,
            questions=len(questions),
            accuracy={n: 1 - sum(e) / len(e) for n, e in zip(names, errors, strict=True)},
            mean_error_correlation=sum(correlations) / len(correlations) if correlations else 0.0,
            defeat_threshold=threshold,
            defeated_share=defeated / len(questions),
        )
    return report


def _correlation(a: list[bool], b: list[bool]) -> float:
    """Pearson correlation of two 0/1 series (0 when either never varies)."""
    n = len(a)
    sa, sb = sum(a), sum(b)
    sab = sum(x and y for x, y in zip(a, b, strict=True))
    cov = sab / n - (sa / n) * (sb / n)
    var = (sa / n) * (1 - sa / n) * (sb / n) * (1 - sb / n)
    return cov / math.sqrt(var) if var > 0 else 0.0
