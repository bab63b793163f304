"""The Beta distribution's exact quantiles, and the 90% accuracy intervals built on them
that /v1/profiles and /v1/stats/judges report."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import beta
from service.domain.beta import beta_quantile, regularized_incomplete_beta
from service.projections.queries import beta_summary

SHAPES = st.floats(min_value=1.0, max_value=5_000.0)  # counts plus the uniform prior
PROBABILITIES = st.floats(min_value=1e-6, max_value=1.0 - 1e-6)
COUNTS = st.integers(0, 2_000)


@given(SHAPES, PROBABILITIES)
def test_quantiles_of_the_closed_form_cases(shape: float, q: float) -> None:
    # Beta(a, 1) has distribution function x**a; Beta(1, b) has 1 - (1 - x)**b.
    assert beta_quantile(q, shape, 1.0) == pytest.approx(q ** (1.0 / shape), abs=1e-9)
    assert beta_quantile(q, 1.0, shape) == pytest.approx(1.0 - (1.0 - q) ** (1.0 / shape), abs=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "low", "high"),  # scipy.stats.beta.ppf(0.05 and 0.95, a, b)
    [
        (3.0, 5.0, 0.1287563928042427, 0.658738563844664),
        (31.0, 12.0, 0.6039344203537645, 0.8261143424475553),
        (2.5, 0.5, 0.43074146813810105, 0.9991318007925581),
        (1001.0, 1.0, 0.9970117342468728, 0.9999487592605163),
    ],
)
def test_quantiles_agree_with_a_reference(a: float, b: float, low: float, high: float) -> None:
    assert beta_quantile(0.05, a, b) == pytest.approx(low, abs=1e-9)
    assert beta_quantile(0.95, a, b) == pytest.approx(high, abs=1e-9)


@given(SHAPES, SHAPES, PROBABILITIES)
def test_a_quantile_inverts_the_distribution_function_and_mirrors(
    a: float, b: float, q: float
) -> None:
    x = beta_quantile(q, a, b)
    assert 0.0 <= x <= 1.0
    # where the density is tiny a whole stretch of x has nearly q: the check is on q
    assert regularized_incomplete_beta(x, a, b) == pytest.approx(q, abs=1e-9)
    assert beta_quantile(1.0 - q, b, a) == pytest.approx(1.0 - x, abs=1e-9)


def test_the_ends_and_a_probability_outside_them() -> None:
    assert (beta_quantile(0.0, 2.0, 3.0), beta_quantile(1.0, 2.0, 3.0)) == (0.0, 1.0)
    assert (regularized_incomplete_beta(0.0, 2, 3), regularized_incomplete_beta(1.0, 2, 3)) == (
        0,
        1,
    )
    with pytest.raises(ValueError, match="quantile"):
        beta_quantile(1.5, 2.0, 3.0)


def test_with_no_counts_the_interval_is_the_uniform_priors() -> None:
    assert beta_summary(0, 0) == pytest.approx((0.5, 0.05, 0.95), abs=1e-12)


def test_all_right_gives_an_interval_below_one() -> None:
    # Beta(11, 1): quantile q is q**(1/11); the normal approximation said [0.791, 1.0].
    mean, low, high = beta_summary(10, 0)
    assert mean == pytest.approx(11 / 12)
    assert low == pytest.approx(0.05 ** (1 / 11), abs=1e-9)  # 0.762
    assert high == pytest.approx(0.95 ** (1 / 11), abs=1e-9)  # 0.995
    assert beta_summary(0, 10)[1:] == pytest.approx((1 - high, 1 - low), abs=1e-9)


@given(COUNTS, COUNTS)
def test_the_interval_holds_the_mean_and_moves_with_the_counts(right: int, wrong: int) -> None:
    mean, low, high = beta_summary(right, wrong)
    assert 0.0 < low < mean < high < 1.0
    _, more_right_low, more_right_high = beta_summary(right + 1, wrong)
    assert more_right_low > low and more_right_high > high
    _, more_wrong_low, more_wrong_high = beta_summary(right, wrong + 1)
    assert more_wrong_low < low and more_wrong_high < high
    # the mirror image: swapping right and wrong mirrors the interval
    _, mirrored_low, mirrored_high = beta_summary(wrong, right)
    assert mirrored_low == pytest.approx(1.0 - high, abs=1e-9)
    assert mirrored_high == pytest.approx(1.0 - low, abs=1e-9)


def test_large_counts_come_close_to_the_normal_approximation() -> None:
    right, wrong = 100_000, 50_000
    a, b = 1.0 + right, 1.0 + wrong
    mean, low, high = beta_summary(right, wrong)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    z = NormalDist().inv_cdf(0.95)
    # 1.3e-6 apart: the posterior's slight skew, 1% of its width
    assert low == pytest.approx(mean - z * sd, abs=1e-5)
    assert high == pytest.approx(mean + z * sd, abs=1e-5)
    assert high - low == pytest.approx(2 * z * sd, rel=1e-4)


@pytest.mark.parametrize(
    ("right", "wrong"), [(0, 0), (10, 0), (3, 7), (500, 20), (100_000, 50_000), (10**7, 10**7)]
)
def test_an_interval_takes_a_few_evaluations_of_the_distribution_function(
    right: int, wrong: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Speed without a timer: each evaluation sums the continued fraction once (whose
    # terms have their own limit: it raises past it). Newton takes a handful where
    # bisection to 1e-12 would take 40 a quantile.
    calls = 0
    fraction = beta._continued_fraction

    def counted(x: float, a: float, b: float) -> float:
        nonlocal calls
        calls += 1
        return fraction(x, a, b)

    monkeypatch.setattr(beta, "_continued_fraction", counted)
    beta_summary(right, wrong)
    assert calls <= 2 * 15


def test_counts_below_zero_count_as_none() -> None:
    # A read model kept by an older rule and not rebuilt can hold them: a 500 before.
    assert beta_summary(-1, 0) == beta_summary(0, 0)
    assert beta_summary(3, -2) == beta_summary(3, 0)
