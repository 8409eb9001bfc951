"""Small-sample statistics over seeds, shared by the reports and the experiments.

Written out rather than taken from scipy: each is a few lines, exact, and keeps scipy out of
cnnlab's dependencies."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n − 1); None for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else None


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
