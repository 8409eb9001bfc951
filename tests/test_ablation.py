"""results/recipes/ABLATION.md prints a command for each row: it must still train what the
row measured, even after the built-in recipe it starts from has changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab import recipe as recipes
from cnnlab.cli import build_parser
from cnnlab.commands import overrides_from
from experiments.recipes.ablate import OUT, PATHS, Row

ROOT_OUT = Path(__file__).resolve().parents[1] / OUT  # OUT is relative to the repository
MEASURED = [row for rows, _ in PATHS.values() for row in rows
            if (ROOT_OUT / f"{row.key}-seed0/config.json").exists()]


def test_the_committed_rows_are_found() -> None:
    assert len(MEASURED) >= 30


@pytest.mark.parametrize("row", MEASURED, ids=lambda row: row.key)
def test_each_rows_command_rebuilds_the_recipe_its_runs_recorded(row: Row) -> None:
    args = build_parser().parse_args(row.command(0)[1:])
    rebuilt = recipes.builtin(args.name).with_overrides(overrides_from(args))
    config = json.loads((ROOT_OUT / f"{row.key}-seed0/config.json").read_text())
    recorded = recipes.from_record(config, row.key)
    # the description is a label for listings; it follows the built-in recipe's file
    assert set(recipes.changed_settings(rebuilt, recorded)) <= {"description"}


def test_strong_before_muon_file_is_the_recipe_its_runs_recorded() -> None:
    """experiments/recipes/strong-before-muon.toml lets `cnnlab bench` time `strong` before
    Muon beside `strong`; it must be what those committed runs trained, but for its name."""
    root = Path(__file__).resolve().parents[1]
    kept = recipes.load_file(root / "experiments/recipes/strong-before-muon.toml")
    for folder in sorted((root / "results/recipes/strong-before-muon/runs").iterdir()):
        recorded = recipes.from_record(json.loads((folder / "config.json").read_text()),
                                       folder.name)
        changed = recipes.changed_settings(kept, recorded)
        assert changed.pop("seed", None) in (None, (recorded.seed, 0))
        assert changed == {"name": ("strong", "strong-before-muon")}
