"""How often custom_nobn (lr 0.003) collapses on cnnlab's path and with each part of that
path switched to the study's way: one sweep per path, then the table.

Run from the repository root (CNNLAB_DATA or --data-dir pointing at Fashion-MNIST):

    python -m experiments.fidelity.collapse create    # the six sweeps, 24 seeds each
    python -m experiments.fidelity.collapse work      # `cnnlab sweep work` on each in turn
    python -m experiments.fidelity.collapse table     # NOBN-COLLAPSE.md's table and figure

`work` can be stopped and run again (on this or other machines sharing the journal):
finished trials stay done and interrupted ones continue from their checkpoints. Each trial is
the study's recipe for its first 2 epochs; a run counts as collapsed when its final test
accuracy is within 5 points of chance (the report's rule). The table tests every path
against all-off (the difference of the rates with its 95 % interval, and Fisher's exact
test) and, where two paths differ only in rounding, the
seeds they share pair by pair (McNemar's exact test). Sweeps, runs and figure are written
to results/fidelity/.
"""

from __future__ import annotations

import argparse

from experiments.common import (
    FIDELITY,
    PATHS,
    SWEEP_EPOCHS,
    SWEEP_SEEDS,
    finished_runs,
    rate_figure,
    rate_table,
    run_cnnlab,
)

FIGURE = FIDELITY / "collapse-rates.png"
STORAGE = str(FIDELITY / "optuna.journal")
GRID = f"recipe=custom_nobn seed=0..{SWEEP_SEEDS - 1}"


def create(paths: list[str]) -> None:
    for path in paths:
        sets = [arg for s in [f"epochs={SWEEP_EPOCHS}", *PATHS[path]] for arg in ("--set", s)]
        run_cnnlab("sweep", "create", f"nobn-{path}", "--storage", STORAGE, "--grid", GRID,
                   *sets)


def work(paths: list[str], workers: int) -> None:
    for path in paths:
        run_cnnlab("sweep", "work", f"nobn-{path}", "--storage", STORAGE, "--runs-root",
                   str(FIDELITY), "--workers", str(workers))


def outcomes() -> dict[str, dict[int, bool]]:
    """Per path with finished runs: each finished seed and whether it collapsed."""
    return {path: {seed: run.collapsed for seed, run in runs.items()}
            for path, runs in finished_runs().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("create", "work", "table"))
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated paths (default: all six)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    paths = args.paths.split(",")
    if unknown := set(paths) - set(PATHS):
        parser.error(f"unknown path(s) {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(PATHS)}")
    if args.action == "create":
        create(paths)
    elif args.action == "work":
        work(paths, args.workers)
    else:
        results = outcomes()
        print(rate_table(results), end="")
        rate_figure(results, FIGURE, f"runs collapsed to chance within {SWEEP_EPOCHS} epochs")


if __name__ == "__main__":
    main()
