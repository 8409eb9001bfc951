"""What more than one experiment uses: where results go, the command line a result records,
running `cnnlab`, the collapse study's computation paths with its table and figure, and a
few steps of custom_nobn through cnnlab's own loop with a count of its dead ReLUs.

These stay out of the package: only these scripts use them, and they measure the study's
custom_nobn rather than anything a user trains.
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from matplotlib.figure import Figure
from torch import nn

from cnnlab.data import ImageSet
from cnnlab.device import prepare_model
from cnnlab.errors import CnnlabError
from cnnlab.explain import relu_firing
from cnnlab.files import atomic_write
from cnnlab.loggers import Logger
from cnnlab.models import create_model
from cnnlab.parts import build_parts
from cnnlab.recipe import builtin
from cnnlab.runs import Run, read_run
from cnnlab.stats import fisher_exact, mcnemar_exact, newcombe_interval, wilson_interval
from cnnlab.sweep.definition import parse_int_list
from cnnlab.train import train_one_epoch

# results/<topic>/ holds what the scripts of experiments/<topic>/ wrote.
RESULTS = Path(__file__).resolve().parent.parent / "results"
FIDELITY = RESULTS / "fidelity"


def made_by(module: str, *args: str) -> str:
    """The command, run from the repository root, that a result file records as its maker."""
    return shlex.join(["python", "-m", module, *args])


def int_list(text: str) -> list[int]:
    """An argparse type for "3", "0,1,2" or "0..9": cnnlab's one range parser."""
    try:
        return parse_int_list(text)
    except CnnlabError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_cnnlab(*args: str, quiet: bool = False) -> None:
    """`cnnlab ARGS` in a child process with this interpreter; a failure stops the script."""
    subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], check=True,
                   stderr=subprocess.DEVNULL if quiet else None)


# ------------------------------------------------------------ the collapse study's paths

SWEEP_SEEDS = 24
SWEEP_EPOCHS = 2
# Each computation path of custom_nobn (lr 0.003) as `--set` settings: cnnlab's fast path,
# each of its parts switched to the study's way in turn, and all of them at once (the
# study's own way of computing the same network).
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


def finished_runs() -> dict[str, dict[int, Run]]:
    """Per path with finished sweep runs: each finished seed's run."""
    result = {}
    for path in PATHS:
        # metrics.csv is written after config.json, so a run that has it has both; a
        # damaged file stops the table (read_run).
        folders = sorted((FIDELITY / f"nobn-{path}" / "runs").glob("*/metrics.csv"))
        runs = [run for run in (read_run(f.parent) for f in folders) if run.complete]
        if runs:
            result[path] = {r.recipe.seed: r for r in sorted(runs, key=lambda r: r.recipe.seed)}
    return result


def collapsed(seeds: dict[int, bool]) -> list[int]:
    return [seed for seed, fell in seeds.items() if fell]


def rate_table(results: dict[str, dict[int, bool]]) -> str:
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


def rate_figure(results: dict[str, dict[int, bool]], out: Path, outcome: str) -> None:
    """Left: each path's collapse rate with its 95 % Wilson interval. Right: every seed on
    every path, so the paired paths can be compared seed by seed."""
    seeds = 1 + max(max(by_seed) for by_seed in results.values())
    fig = Figure(figsize=(12, 0.9 + 0.45 * len(results)), layout="constrained")
    rates, grid = fig.subplots(1, 2, width_ratios=(1, 1.4), sharey=True)
    rows = list(reversed(results))
    marker = 60 * min(1.0, SWEEP_SEEDS / seeds)
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
    ticks = range(0, seeds, 1 if seeds <= SWEEP_SEEDS else 10)
    grid.set_xticks(ticks, [str(s) for s in ticks], fontsize=7)
    grid.set_xlim(-0.7, seeds - 0.3)
    grid.set_xlabel("seed (red: collapsed, green: learned, blank: not run yet)")
    grid.set_title("each run")
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=120))


# ------------------------------------------------------- custom_nobn's first steps

PROBE = 512  # test images on which a ReLU unit that never fires counts as dead
R = TypeVar("R", bound=Logger)


def train_first_steps(overrides: dict[str, object], seed: int, data: ImageSet, steps: int,
                      recorder: Callable[[nn.Module], R]) -> tuple[nn.Module, R]:
    """custom_nobn with `overrides` through cnnlab's own loop for its first `steps`
    optimizer steps, logging to `recorder(model)`; the global RNG is left as it was."""
    recipe = builtin("custom_nobn").with_overrides({**overrides, "seed": seed})
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        model = prepare_model(create_model(recipe.model.name, recipe.model.args),
                              torch.device("cpu"), recipe.model.memory_format)
        steps_per_epoch = math.ceil(len(data) / recipe.batch_size)
        parts = build_parts(recipe, model, torch.device("cpu"), steps_per_epoch)
        logger = recorder(model)
        train_one_epoch(parts, data, 1, loggers=[logger], max_steps=steps)
    return model, logger


def dead_relus(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Fraction of units (channel × position) of each ReLU that are zero on every image, all
    images in one batch."""
    return {name: 1 - fired.float().mean().item()
            for name, fired in relu_firing(model, images, len(images)).items()}
