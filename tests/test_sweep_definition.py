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
    ("0,4294967296", "--seeds must be between 0 and 4294967295 (got 0,4294967296)"),
])
def test_reproduce_seeds_errors_are_one_line(capsys, seeds: str, expected: str) -> None:
    assert expected in one_line_error(capsys, ["reproduce", "--seeds", seeds])


def test_the_definition_imports_without_optuna() -> None:
    code = "import sys, cnnlab.sweep.definition; assert 'optuna' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_grid_or_search_that_would_not_run_as_written_is_refused(capsys, tmp_path) -> None:
    """Each would silently run something else: a recipe dropped for another of its name, a
    combination twice, two points in one run folder, search options or a --param lost."""
    from cnnlab.recipe import builtin, to_toml

    same_name = tmp_path / "mine.toml"
    same_name.write_text(to_toml(builtin("lenet").with_overrides({"optimizer.lr": 1e-4})))
    journal = str(tmp_path / "never-written.journal")
    for argv, expected in [
        (["--grid", f"recipe=lenet,{same_name} seed=0"], "names recipe lenet twice"),
        (["--grid", "recipe=lenet seed=0..1,1"], "seed=0..1,1': 1 given twice"),
        (["--grid", "recipe=lenet average.decay=0.9995,0.9999", "--set", "average.name=ema"],
         "would share the run folder lenet-decay=1"),
        (["--grid", "recipe=lenet", "--trials", "5", "--pruner", "median"],
         "--trials, --pruner: options of a search"),
        (["--recipe", "lenet", "--param", "optimizer.lr=log:1e-4:1e-2", "--param",
          "optimizer.lr=log:1e-3:1e-2"], "optimizer.lr is given twice"),
    ]:
        assert expected in one_line_error(capsys, ["sweep", "create", "x", "--storage",
                                                   journal, *argv])
    for name in ("", "a/b", ".."):  # names become folders
        assert f"sweep name {name!r}" in one_line_error(
            capsys, ["sweep", "create", name, "--storage", journal, "--grid", "recipe=lenet"])
    assert "name = 'a/b': a recipe's name names its run folders" in one_line_error(
        capsys, ["train", "lenet", "--set", "name=a/b", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "never-written.journal").exists()
    (tmp_path / "study").write_text("a file")
    assert "--out " + str(tmp_path / "study") + " is a file" in one_line_error(
        capsys, ["reproduce", "--workers", "1", "--out", str(tmp_path / "study")])
