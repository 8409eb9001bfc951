"""The exact tests, intervals and Student's t against published reference values."""

from __future__ import annotations

import math

import pytest

from cnnlab.stats import (
    fisher_exact,
    mcnemar_exact,
    mean_interval,
    newcombe_interval,
    student_t_cdf,
    student_t_quantile,
    welch_interval,
    wilson_interval,
)


def test_wilson_interval_matches_reference_values() -> None:
    # Reference values of the Wilson score interval (z = 1.96).
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(6, 14) == pytest.approx((0.2138, 0.6741), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_newcombe_interval_matches_newcombes_published_examples() -> None:
    # Newcombe (1998), method 10: 56/70 − 48/80 and 9/10 − 3/10.
    assert newcombe_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert newcombe_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)


def test_fisher_exact_matches_the_tea_tasting_table_and_is_symmetric() -> None:
    # Fisher's lady tasting tea: 3 of 4 right against 1 of 4, two-sided p = 34/70.
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70)
    assert fisher_exact(9, 24, 4, 24) == pytest.approx(fisher_exact(4, 24, 9, 24))
    assert fisher_exact(5, 10, 5, 10) == pytest.approx(1.0)


def test_mcnemar_exact_is_a_binomial_test_at_one_half() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 1) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.706), (2, 4.303), (5, 2.571),
                                              (10, 2.228), (30, 2.042)])
def test_student_t_quantile_matches_the_t_table(df: int, quantile: float) -> None:
    # Two-sided 95 % critical values of Student's t, as printed in any t table (e.g. NIST/
    # SEMATECH e-Handbook of Statistical Methods, section 1.3.6.7.2), to three decimals.
    assert student_t_quantile(0.975, df) == pytest.approx(quantile, abs=5e-4)
    assert student_t_quantile(0.025, df) == pytest.approx(-quantile, abs=5e-4)


def test_student_t_at_one_degree_of_freedom_is_the_cauchy_distribution() -> None:
    # t with 1 degree of freedom is Cauchy: P(T ≤ t) = 1/2 + atan(t)/π, exactly.
    for t in (-3.0, -0.5, 0.0, 0.7, 12.706):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert student_t_quantile(0.995, 5) == pytest.approx(4.032, abs=5e-4)


def test_welch_interval_matches_rs_t_test() -> None:
    # R's t.test(ts1, ts2) (Welch by default), as quoted on Cross Validated: t = −1.8325,
    # df = 17.9, 95 % interval −2.1469104 to 0.1469104, means 10.4 and 11.4.
    ts1 = [11, 9, 10, 11, 10, 12, 9, 11, 12, 9]
    ts2 = [11, 13, 10, 13, 12, 9, 11, 12, 12, 11]
    diff, low, high, df = welch_interval(ts1, ts2)
    assert diff == pytest.approx(-1.0)
    assert (low, high) == pytest.approx((-2.1469104, 0.1469104), abs=1e-6)
    assert df == pytest.approx(17.9, abs=0.05)
    # swapping the groups mirrors the interval
    assert welch_interval(ts2, ts1)[:3] == pytest.approx((1.0, -0.1469104, 2.1469104), abs=1e-6)
    # a wider confidence, a wider interval
    assert welch_interval(ts1, ts2, confidence=0.99).low < low


def test_welch_interval_needs_two_values_a_group() -> None:
    assert welch_interval([0.93], [0.88, 0.87]) is None
    assert welch_interval([0.93, 0.92], []) is None
    # two constant groups: no spread, the difference is exact
    assert welch_interval([2.0, 2.0], [1.0, 1.0])[:3] == (1.0, 1.0, 1.0)


def test_mean_interval_is_students_t() -> None:
    # 1, 2, 3: mean 2, standard error 1/√3, t(0.975, 2) = 4.302653 (t tables)
    low, high = mean_interval([1.0, 2.0, 3.0])
    assert low == pytest.approx(2 - 4.302653 / 3**0.5, abs=1e-5)
    assert high == pytest.approx(2 + 4.302653 / 3**0.5, abs=1e-5)
    assert mean_interval([5.0]) is None
