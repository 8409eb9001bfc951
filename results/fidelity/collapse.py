"""How often custom_nobn (lr 0.003) collapses on cnnlab's path and with each part of that
path switched to the study's way: one sweep per path, then the table.

Run from the repository root (CNNLAB_DATA or --data-dir pointing at Fashion-MNIST):

    python results/fidelity/collapse.py create          # the six sweeps, 24 seeds each
    python results/fidelity/collapse.py work            # `cnnlab sweep work` on each in turn
    python results/fidelity/collapse.py table           # NOBN-COLLAPSE.md's table and figure

`work` can be stopped and run again (on this or other machines sharing the journal):
finished trials stay done and interrupted ones continue from their checkpoints. Each trial is
the study's recipe for its first 2 epochs; a run counts as collapsed when its final test
accuracy is within 5 points of chance (the report's rule).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

from matplotlib.figure import Figure

from cnnlab.files import atomic_write
from cnnlab.report import did_not_learn, read_run, wilson_interval

HERE = Path(__file__).parent
FIGURE = HERE / "collapse-rates.png"
STORAGE = str(HERE / "optuna.journal")
GRID = "recipe=custom_nobn seed=0..23"
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


def fisher_exact(a: int, n1: int, b: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test for a of n1 against b of n2: the probability,
    given the margins, of a table at most as likely as the one observed."""
    total, k = n1 + n2, a + b

    def p(x: int) -> float:
        return math.comb(n1, x) * math.comb(n2, k - x) / math.comb(total, k)

    observed = p(a)
    return min(1.0, sum(p(x) for x in range(max(0, k - n2), min(k, n1) + 1)
                        if p(x) <= observed * (1 + 1e-9)))


def collapsed_runs() -> dict[str, tuple[list[int], int]]:
    """Per path with finished runs: the seeds that collapsed, and how many runs finished."""
    result = {}
    for path in PATHS:
        # metrics.csv is written after config.json, so a run that has it has both; a
        # damaged file stops the table (read_run).
        folders = sorted((HERE / f"nobn-{path}" / "runs").glob("*/metrics.csv"))
        runs = [run for run in (read_run(f.parent) for f in folders) if run.complete]
        if runs:
            result[path] = (sorted(r.recipe.seed for r in runs if did_not_learn(r)), len(runs))
    return result


def table(counts: dict[str, tuple[list[int], int]]) -> str:
    lines = ["| path | settings | runs | collapsed | rate | 95% Wilson interval | "
             "Fisher's exact p against all-off | seeds that collapsed |",
             "|" + " --- |" * 8]
    for path, (seeds, n) in counts.items():
        k = len(seeds)
        low, high = wilson_interval(k, n)
        versus = ("—" if path == "all-off" or "all-off" not in counts
                  else f"{fisher_exact(k, n, len(counts['all-off'][0]), counts['all-off'][1]):.2f}")
        settings = ", ".join(f"`{s}`" for s in PATHS[path]) or "cnnlab's defaults"
        lines.append(f"| {path} | {settings} | {n} | {k} | {100 * k / n:.0f}% | "
                     f"{100 * low:.0f}–{100 * high:.0f}% | {versus} | "
                     f"{', '.join(map(str, seeds)) or 'none'} |")
    return "\n".join(lines) + "\n"


def figure(counts: dict[str, tuple[list[int], int]]) -> None:
    """Each path's collapse rate with its 95 % Wilson interval, one row per path."""
    fig = Figure(figsize=(7, 0.5 + 0.45 * len(counts)), layout="constrained")
    ax = fig.add_subplot()
    for row, (path, (seeds, n)) in enumerate(reversed(counts.items())):
        rate = 100 * len(seeds) / n
        low, high = (100 * x for x in wilson_interval(len(seeds), n))
        ax.errorbar(rate, row, xerr=[[rate - low], [high - rate]], fmt="o", capsize=4,
                    color="C3" if path == "all-off" else "C0")
        ax.annotate(f"{len(seeds)}/{n}", (rate, row), xytext=(0, 7),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_yticks(range(len(counts)), list(reversed(counts)))
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, len(counts) - 0.3)
    ax.set_xlabel("runs collapsed to chance within 2 epochs (%), 95% Wilson interval")
    ax.set_title("custom_nobn (lr 0.003): collapse rate per path")
    ax.grid(axis="x", alpha=0.3)
    atomic_write(FIGURE, lambda f: fig.savefig(f, format="png", dpi=120))


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
        counts = collapsed_runs()
        print(table(counts), end="")
        figure(counts)


if __name__ == "__main__":
    main()
