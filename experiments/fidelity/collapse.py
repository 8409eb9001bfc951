"""How often custom_nobn (lr 0.003) collapses on cnnlab's path and with each part of that
path switched to the study's way: one sweep per path, then the table.

Run from the repository root (CNNLAB_DATA or --data-dir pointing at Fashion-MNIST):

    python results/fidelity/collapse.py create          # the six sweeps, 24 seeds each
    python results/fidelity/collapse.py work            # `cnnlab sweep work` on each in turn
    python results/fidelity/collapse.py table           # NOBN-COLLAPSE.md's table and figure

`work` can be stopped and run again (on this or other machines sharing the journal):
finished trials stay done and interrupted ones continue from their checkpoints. Each trial is
the study's recipe for its first 2 epochs; a run counts as collapsed when its final test
accuracy is within 5 points of chance (the report's rule). The table tests every path
against all-off (the difference of the rates with its 95 % interval, and Fisher's exact
test) and, where two paths differ only in rounding, the
seeds they share pair by pair (McNemar's exact test).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from matplotlib.figure import Figure

from cnnlab.files import atomic_write
from cnnlab.report import Run, did_not_learn, read_run
from cnnlab.stats import fisher_exact, mcnemar_exact, newcombe_interval, wilson_interval

HERE = Path(__file__).parent
FIGURE = HERE / "collapse-rates.png"
STORAGE = str(HERE / "optuna.journal")
SEEDS = 24
GRID = f"recipe=custom_nobn seed=0..{SEEDS - 1}"
EPOCHS = 2
# The sweep of each path and its settings: cnnlab's fast path, each part switched off in
# turn, and all of them at once (the study's own way of computing the same network).
PATHS: dict[str, list[str]] = {
    "cnnlab": [],
    "fused-stem-off": ["model.args.fused_stem=false"],
    "plain-adam": ["optimizer.fused=false"],
    "nchw": ["model.memory_format=contiguous"],
    "per-image": ["pipeline=per_image"],
}
PATHS["all-off"] = [s for settings in list(PATHS.values()) for s in settings]
# Paths that differ from another only in rounding: the same initial weights, batches and
# augmentation draws, so a seed's outcome on one is paired with its outcome on the other.
PAIRED = {"fused-stem-off": "cnnlab", "plain-adam": "cnnlab", "nchw": "cnnlab",
          "all-off": "per-image"}


def cnnlab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], check=True)


def create(paths: list[str]) -> None:
    for path in paths:
        sets = [arg for s in [f"epochs={EPOCHS}", *PATHS[path]] for arg in ("--set", s)]
        cnnlab("sweep", "create", f"nobn-{path}", "--storage", STORAGE, "--grid", GRID, *sets)


def work(paths: list[str], workers: int) -> None:
    for path in paths:
        cnnlab("sweep", "work", f"nobn-{path}", "--storage", STORAGE, "--runs-root", str(HERE),
               "--workers", str(workers))


def finished_runs() -> dict[str, dict[int, Run]]:
    """Per path with finished runs: each finished seed's run."""
    result = {}
    for path in PATHS:
        # metrics.csv is written after config.json, so a run that has it has both; a
        # damaged file stops the table (read_run).
        folders = sorted((HERE / f"nobn-{path}" / "runs").glob("*/metrics.csv"))
        runs = [run for run in (read_run(f.parent) for f in folders) if run.complete]
        if runs:
            result[path] = {r.recipe.seed: r for r in sorted(runs, key=lambda r: r.recipe.seed)}
    return result


def outcomes() -> dict[str, dict[int, bool]]:
    """Per path with finished runs: each finished seed and whether it collapsed."""
    return {path: {seed: did_not_learn(run) for seed, run in runs.items()}
            for path, runs in finished_runs().items()}


def collapsed(seeds: dict[int, bool]) -> list[int]:
    return [seed for seed, fell in seeds.items() if fell]


def table(results: dict[str, dict[int, bool]]) -> str:
    """Rates with intervals, Fisher's test against all-off, and for the paths that change
    only rounding, McNemar's test over the seeds they share with the path they pair with."""
    lines = ["| path | settings | runs | collapsed | rate | 95% Wilson interval | "
             "difference from all-off (95% interval) | Fisher's exact p against all-off | "
             "paired with | collapsed only here / only there | McNemar's exact p | seeds that "
             "collapsed |", "|" + " --- |" * 12]
    for path, seeds in results.items():
        k, n = len(collapsed(seeds)), len(seeds)
        low, high = wilson_interval(k, n)
        difference = versus = "—"
        if path != "all-off" and "all-off" in results:
            b, m = len(collapsed(results["all-off"])), len(results["all-off"])
            low_d, high_d = newcombe_interval(k, n, b, m)
            difference = (f"{round(100 * (k / n - b / m)):+d} points "
                          f"({round(100 * low_d):+d} to {round(100 * high_d):+d})")
            versus = f"{fisher_exact(k, n, b, m):.2f}"
        pair, split, paired_p = PAIRED.get(path, "—"), "—", "—"
        if pair in results:
            shared = seeds.keys() & results[pair].keys()
            here = sum(seeds[s] and not results[pair][s] for s in shared)
            there = sum(results[pair][s] and not seeds[s] for s in shared)
            split = f"{here} / {there} of {len(shared)}"
            paired_p = f"{mcnemar_exact(here, there):.2f}"
        settings = ", ".join(f"`{s}`" for s in PATHS[path]) or "cnnlab's defaults"
        lines.append(f"| {path} | {settings} | {n} | {k} | {100 * k / n:.0f}% | "
                     f"{100 * low:.0f}–{100 * high:.0f}% | {difference} | {versus} | {pair} | "
                     f"{split} | {paired_p} | {', '.join(map(str, collapsed(seeds))) or 'none'} |")
    return "\n".join(lines) + "\n"


def figure(results: dict[str, dict[int, bool]], out: Path = FIGURE,
           outcome: str = f"runs collapsed to chance within {EPOCHS} epochs") -> None:
    """Left: each path's collapse rate with its 95 % Wilson interval. Right: every seed on
    every path, so the paired paths can be compared seed by seed."""
    seeds = 1 + max(max(by_seed) for by_seed in results.values())
    fig = Figure(figsize=(12, 0.9 + 0.45 * len(results)), layout="constrained")
    rates, grid = fig.subplots(1, 2, width_ratios=(1, 1.4), sharey=True)
    rows = list(reversed(results))
    marker = 60 * min(1.0, SEEDS / seeds)
    for row, path in enumerate(rows):
        k, n = len(collapsed(results[path])), len(results[path])
        rate = 100 * k / n
        low, high = (100 * x for x in wilson_interval(k, n))
        # max(0, ·): the interval's bound may round to a hair beyond the rate.
        rates.errorbar(rate, row, xerr=[[max(0, rate - low)], [max(0, high - rate)]], fmt="o",
                       capsize=4, color="C3" if path == "all-off" else "C0")
        rates.annotate(f"{k}/{n}", (rate, row), xytext=(0, 7), textcoords="offset points",
                       ha="center", fontsize=8)
        for seed, fell in results[path].items():
            grid.scatter(seed, row, marker="s", s=marker, color="C3" if fell else "C2")
    rates.set_yticks(range(len(rows)), rows)
    rates.set_xlim(-4, 100)
    rates.set_ylim(-0.6, len(rows) - 0.3)
    rates.set_xlabel(f"{outcome} (%), 95% Wilson interval")
    rates.set_title("custom_nobn (lr 0.003): collapse rate per path")
    rates.grid(axis="x", alpha=0.3)
    ticks = range(0, seeds, 1 if seeds <= SEEDS else 10)
    grid.set_xticks(ticks, [str(s) for s in ticks], fontsize=7)
    grid.set_xlim(-0.7, seeds - 0.3)
    grid.set_xlabel("seed (red: collapsed, green: learned, blank: not run yet)")
    grid.set_title("each run")
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=120))


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
        print(table(results), end="")
        figure(results)


if __name__ == "__main__":
    main()
