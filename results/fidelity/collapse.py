"""How often custom_nobn (lr 0.003) collapses on cnnlab's path and with each part of that
path switched to the study's way: one sweep per path, then the table.

Run from the repository root (CNNLAB_DATA or --data-dir pointing at Fashion-MNIST):

    python results/fidelity/collapse.py create          # the six sweeps, 24 seeds each
    python results/fidelity/collapse.py work            # `cnnlab sweep work` on each in turn
    python results/fidelity/collapse.py table           # NOBN-COLLAPSE.md's table

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

from cnnlab.report import did_not_learn, load_runs, wilson_interval

HERE = Path(__file__).parent
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


def table() -> str:
    rows, counts = [], {}
    for path in PATHS:
        folder = HERE / f"nobn-{path}"
        if not (folder / "runs").is_dir():
            continue
        runs = [r for r in load_runs(folder)[0].get("custom_nobn", []) if r.complete]
        collapsed = [r for r in runs if did_not_learn(r)]
        counts[path] = (len(collapsed), len(runs))
        rows.append((path, collapsed))
    lines = ["| path | settings | runs | collapsed | rate | 95% Wilson interval | "
             "Fisher's exact p against all-off | seeds that collapsed |",
             "|" + " --- |" * 8]
    for path, collapsed in rows:
        k, n = counts[path]
        low, high = wilson_interval(k, n) if n else (math.nan, math.nan)
        versus = ("—" if path == "all-off" or "all-off" not in counts or not n
                  else f"{fisher_exact(k, n, *counts['all-off']):.2f}")
        seeds = ", ".join(str(r.recipe.seed) for r in collapsed) or "none"
        settings = ", ".join(f"`{s}`" for s in PATHS[path]) or "cnnlab's defaults"
        lines.append(f"| {path} | {settings} | {n} | {k} | "
                     f"{100 * k / n if n else math.nan:.0f}% | {100 * low:.0f}–{100 * high:.0f}% "
                     f"| {versus} | {seeds} |")
    return "\n".join(lines) + "\n"


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
        print(table(), end="")


if __name__ == "__main__":
    main()
