"""What the command-line modules share (cli, commands and sweep.cli): plain-text tables,
recipes named on a command line, the argparse name of a recipe key, and the results table
printed after a report."""

from __future__ import annotations

from pathlib import Path

from cnnlab import recipe as recipes
from cnnlab.recipe import Recipe


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def dest(path: str) -> str:
    """The argparse attribute of the flag for recipe key `path` (dots are not allowed)."""
    return "key_" + path.replace(".", "__")


def named_recipe(name: str) -> Recipe:
    """A built-in recipe by name, or a recipe file by path."""
    if name.endswith(".toml") or Path(name).is_file():
        return recipes.load_file(Path(name))
    return recipes.builtin(name)


def print_results(folder: Path) -> None:
    """The report's results table, trimmed to the columns that fit a terminal."""
    from cnnlab.report.tables import TERMINAL_COLUMNS, results_table
    from cnnlab.runs import load_runs

    print(format_table(*results_table(load_runs(folder)[0]).select(TERMINAL_COLUMNS)))
