"""Small-sample statistics over seeds, shared by the reports and the experiments.

Written out rather than taken from scipy: each is a few lines, exact (Student's t to
floating-point precision), and keeps scipy out of cnnlab's dependencies."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import NamedTuple


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n − 1); None for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else None


class Difference(NamedTuple):
    """A difference of two means with its confidence interval and Welch's degrees of
    freedom."""

    diff: float
    low: float
    high: float
    df: float


def welch_interval(a: Sequence[float], b: Sequence[float],
                   confidence: float = 0.95) -> Difference | None:
    """mean(a) − mean(b) with its Welch interval: Student's t at the Welch–Satterthwaite
    degrees of freedom, sound when the two groups' spreads differ. None when a group has
    fewer than two values: with one value there is no spread to judge the difference by."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.mean(a) - statistics.mean(b)
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if var_a + var_b == 0:  # both groups constant: the difference is exact
        return Difference(diff, diff, diff, float(len(a) + len(b) - 2))
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    half = student_t_quantile((1 + confidence) / 2, df) * math.sqrt(var_a + var_b)
    return Difference(diff, diff - half, diff + half, df)


def mean_interval(values: Sequence[float], confidence: float = 0.95
                  ) -> tuple[float, float] | None:
    """The Student's t interval of the mean of `values` (seeds): the speed runs' test that a
    recipe's mean reaches a target is that the interval's lower end does. None for fewer
    than two values."""
    if len(values) < 2:
        return None
    mean = statistics.mean(values)
    half = (student_t_quantile((1 + confidence) / 2, len(values) - 1)
            * statistics.stdev(values) / math.sqrt(len(values)))
    return mean - half, mean + half


def student_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (fractional, as Welch's
    are), found by bisection on the distribution function."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, not {p}")
    if p < 0.5:
        return -student_t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if student_t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t: its tail is half the regularized incomplete beta function
    I_x(df/2, 1/2) at x = df / (df + t²)."""
    tail = regularized_beta(df / (df + t * t), df / 2, 0.5) / 2
    return 1 - tail if t > 0 else tail


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), from its continued fraction (Abramowitz and Stegun 26.5.8), which converges
    quickly for x < (a + 1) / (a + b + 2); above that, from I_x(a, b) = 1 − I_{1−x}(b, a)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1 - regularized_beta(1 - x, b, a)
    log_front = (a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a)
                 - math.lgamma(b))
    return math.exp(log_front) / a * _beta_fraction(x, a, b)


def _beta_fraction(x: float, a: float, b: float) -> float:
    """1 / (1 + d1 / (1 + d2 / (1 + …))), the continued fraction of I_x(a, b): the
    denominator is evaluated front to back (Lentz's method) until a term no longer changes
    it."""
    tiny = 1e-300
    value, front, back = 1.0, 1.0, 0.0  # the value so far, and its two running ratios
    for k in range(1, 1000):
        m = k // 2
        d = (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)) if k % 2 == 0
             else -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)))
        back = 1 + d * back
        front = 1 + d / front
        back = 1 / (back if abs(back) > tiny else tiny)
        front = front if abs(front) > tiny else tiny
        value *= front * back
        if abs(front * back - 1) < 1e-15:
            break
    return 1 / value


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n: sound at 0 of n and at small n."""
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(a: int, n1: int, b: int, n2: int) -> tuple[float, float]:
    """95 % interval of the difference of two rates a/n1 − b/n2 (Newcombe's method: it
    combines the two Wilson intervals, so it stays sound at 0 of n and at small n)."""
    p1, p2 = a / n1, b / n2
    (low1, high1), (low2, high2) = wilson_interval(a, n1), wilson_interval(b, n2)
    return (p1 - p2 - math.hypot(p1 - low1, high2 - p2),
            p1 - p2 + math.hypot(high1 - p1, p2 - low2))


def fisher_exact(a: int, n1: int, b: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test for a of n1 against b of n2: the probability,
    given the margins, of a table at most as likely as the one observed."""
    total, k = n1 + n2, a + b

    def p(x: int) -> float:
        return math.comb(n1, x) * math.comb(n2, k - x) / math.comb(total, k)

    observed = p(a)
    return min(1.0, sum(p(x) for x in range(max(0, k - n2), min(k, n1) + 1)
                        if p(x) <= observed * (1 + 1e-9)))


def mcnemar_exact(only_here: int, only_there: int) -> float:
    """Two-sided p-value of McNemar's exact test: of the seeds whose outcome differs between
    two paired paths, how unlikely a split this uneven is if either path is equally likely
    to be the one that collapsed (a binomial test at 1/2)."""
    n, k = only_here + only_there, min(only_here, only_there)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
