"""The Beta distribution's distribution function and quantiles, exactly (no scipy).

I_x(a, b), the regularized incomplete beta function, is evaluated by its continued
fraction with the modified Lentz method (Numerical Recipes' ``betai``/``betacf``); a
quantile inverts it by Newton's method kept inside a bracket that shrinks every step,
falling back to bisection when a step would leave it. For posteriors of counts (a,
b >= 1), I_x is good to about 1e-12 with counts in the thousands; lgamma's rounding
grows with the counts (1e-8 at ten million each), but the quantiles, the distribution
being that narrow then, stay within 1e-11.
"""

from __future__ import annotations

import math
import statistics

_TOLERANCE = 1e-15  # relative: the continued fraction stops when a term changes less
_TINY = 1e-300  # stands in for a zero denominator (Lentz)
_QUANTILE_TOLERANCE = 1e-12  # relative to the distance from x to 0 or 1
_QUANTILE_STEPS = 200  # Newton takes under 10; bisection alone halves to 2**-200
_STANDARD_NORMAL = statistics.NormalDist()


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b): the probability that a Beta(a, b) variable is at most x (a, b > 0)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    # The fraction converges fast only left of about the mean; to its right, use
    # I_x(a, b) = 1 - I_(1-x)(b, a).
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_incomplete_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)
    return math.exp(log_front) * _continued_fraction(x, a, b) / a


def beta_quantile(q: float, a: float, b: float) -> float:
    """The x at which a Beta(a, b) distribution function reaches q (relative error 1e-12)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile's probability is in [0, 1], not {q}")
    if q in (0.0, 1.0):
        return q
    low, high = 0.0, 1.0
    x = _first_guess(q, a, b)
    log_density_scale = -_log_beta(a, b)
    for _ in range(_QUANTILE_STEPS):
        error = regularized_incomplete_beta(x, a, b) - q
        if error < 0.0:
            low = x
        else:
            high = x
        log_density = log_density_scale + (a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x)
        # A density that under- or overflows (far in a tail; at 0 when a < 1): bisect.
        density = math.exp(log_density) if log_density < 700.0 else 0.0
        step = error / density if density > 0.0 else math.nan
        # Relative to the nearer end, so that a quantile near 0 or 1 keeps its digits.
        if abs(step) < _QUANTILE_TOLERANCE * min(x, 1.0 - x):
            return x - step
        x = x - step if low < x - step < high else (low + high) / 2.0
        if x in (low, high):
            return x  # no float lies between the ends: as close as a float gets
    return x  # the bracket is far narrower than the tolerance by now


def _first_guess(q: float, a: float, b: float) -> float:
    """Where Newton starts: the normal approximation with the skewness term (Cornish-
    Fisher), inside (0, 1). With counts in the hundreds it is within ~1e-4, so one or
    two steps finish (each costs a continued fraction of O(sqrt(max(a, b))) terms);
    from the mean, as before, it took five to eight."""
    n = a + b
    mean, sd = a / n, math.sqrt(a * b / (n * n * (n + 1.0)))
    skew = 2.0 * (b - a) * math.sqrt(n + 1.0) / ((n + 2.0) * math.sqrt(a * b))
    z = _STANDARD_NORMAL.inv_cdf(q)
    guess = mean + sd * (z + (z * z - 1.0) * skew / 6.0)
    return min(max(guess, 1e-12), 1.0 - 1e-12)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method (x left of the mean)."""
    # It takes O(sqrt(max(a, b))) terms (Numerical Recipes 6.4); the margin is wide.
    most_terms = 100 + 10 * math.isqrt(int(max(a, b)))
    c, d = 1.0, 1.0 / _nonzero(1.0 - (a + b) * x / (a + 1.0))
    fraction = d
    for m in range(1, most_terms + 1):
        # Each m contributes the even term d_2m then the odd term d_2m+1.
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d = 1.0 / _nonzero(1.0 + even * d)
        c = _nonzero(1.0 + even / c)
        fraction *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d = 1.0 / _nonzero(1.0 + odd * d)
        c = _nonzero(1.0 + odd / c)
        fraction *= d * c
        if abs(d * c - 1.0) < _TOLERANCE:
            return fraction
    raise ArithmeticError(f"the incomplete beta fraction did not converge (a={a}, b={b}, x={x})")


def _nonzero(value: float) -> float:
    return value if abs(value) > _TINY else _TINY
