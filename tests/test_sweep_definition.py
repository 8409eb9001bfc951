"""A sweep's definition without Optuna: the one parser of integer lists and ranges."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.sweep.definition import parse_grid, parse_int_list
from conftest import one_line_error


@pytest.mark.parametrize("text, numbers", [
    ("3", [3]),
    ("0,1,2", [0, 1, 2]),
    ("0..9", list(range(10))),
    ("0..4,7", [0, 1, 2, 3, 4, 7]),
    ("7,0..2,1", [0, 1, 2, 7]),  # sorted, each once
    ("5..5", [5]),
    ("-2..1", [-2, -1, 0, 1]),
])
def test_int_lists_and_inclusive_ranges(text: str, numbers: list[int]) -> None:
    assert parse_int_list(text) == numbers


@pytest.mark.parametrize("text", ["", "x", "1,,2", "1.5", "0..x", "..3", "3..", "0..2..4"])
def test_bad_int_lists_name_the_text(text: str) -> None:
    with pytest.raises(CnnlabError, match="is not a list of integers") as caught:
        parse_int_list(text)
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)


def test_an_empty_range_is_an_error_not_nothing() -> None:
    with pytest.raises(CnnlabError, match=r"'0,3\.\.1' has the empty range 3\.\.1"):
        parse_int_list("0,3..1")


def test_a_runaway_range_is_refused_before_it_is_built() -> None:
    assert len(parse_int_list("0..9999")) == 10_000  # every test image
    with pytest.raises(CnnlabError, match=r"the range 0\.\.1000000000 holds more than 10,000"):
        parse_int_list("0..1000000000")


def test_a_grid_s_ranges_keep_their_order() -> None:
    assert parse_grid("seed=5..6,0..1 optimizer.lr=0.1,0.01") == {
        "seed": [5, 6, 0, 1], "optimizer.lr": [0.1, 0.01]}


@pytest.mark.parametrize("seeds, expected", [
    ("3..1", "--seeds wants integers: '3..1' has the empty range 3..1"),
    ("x", "--seeds wants integers: 'x' is not a list of integers"),
])
def test_reproduce_seeds_errors_are_one_line(capsys, seeds: str, expected: str) -> None:
    assert expected in one_line_error(capsys, ["reproduce", "--seeds", seeds])


def test_the_definition_imports_without_optuna() -> None:
    code = "import sys, cnnlab.sweep.definition; assert 'optuna' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
