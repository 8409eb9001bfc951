"""The exact tests and intervals against published reference values."""

from __future__ import annotations

import pytest

from cnnlab.stats import fisher_exact, mcnemar_exact, newcombe_interval, wilson_interval


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
