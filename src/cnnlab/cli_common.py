"""What the command-line modules share (cnnlab.cli and cnnlab.sweep.cli): plain-text tables,
recipes named on a command line, and the results table printed after a report."""

from __future__ import annotations

from pathlib import Path

from cnnlab import recipe as recipes
from cnnlab.recipe import Recipe


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def named_recipe(name: str) -> Recipe:
    """A built-in recipe by name, or a recipe file by path."""
    if name.endswith(".toml") or Path(name).is_file():
        return recipes.load_file(Path(name))
    return recipes.builtin(name)


def print_results(study_dir: Path) -> None:
    """The report's results table, trimmed to the columns that fit a terminal."""
    from cnnlab.report import load_runs, results_table

    headers, rows = results_table(load_runs(study_dir)[0])
    keep = [0, 1, 2, 3, 4, 8, 9]  # preset, seeds, final acc, study, Δ, epochs, time
    print(format_table([headers[i] for i in keep], [[row[i] for i in keep] for row in rows]))
