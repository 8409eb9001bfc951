"""`cnnlab reproduce`: every study recipe × seed into one folder, then the report.

Each run lives in `DIR/runs/<recipe>-seed<k>/`. A finished run is skipped and an
interrupted one resumes from its checkpoint, so running the command again after a crash
or Ctrl-C loses at most the epoch that was in progress.
"""

from __future__ import annotations

import sys
import textwrap
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.data import ensure_data
from cnnlab.device import as_input, prepare_model
from cnnlab.loggers import Logger, format_epoch
from cnnlab.models import create_model
from cnnlab.parts import make_optimizer
from cnnlab.recipe import Recipe, builtin
from cnnlab.runs import RunFolder
from cnnlab.train import resumable_epochs, start_or_resume

# --quick (`make demo`): the same pipeline on subsets and 2 epochs (2 to 3 minutes of
# training for the five study recipes on 2 CPU cores).
QUICK = {"epochs": 2, "limit_train": 3000, "limit_test": 1000}
FULL_MINUTES = 155  # the study's five recipes, seed 0, on 2 cores: results/study/runs/*-seed0


def quick_note() -> str:
    """What the short runs of `--quick` are, and what they are not."""
    return textwrap.fill(
        f"Short runs: each recipe for {QUICK['epochs']} epochs on the first "
        f"{QUICK['limit_train']:,} of the 60,000 training images, tested on the first "
        f"{QUICK['limit_test']:,} of the 10,000 test images. They show every part working "
        "on the real data (data, training, checkpoints, report); they do not reproduce "
        "the study's accuracies, which take 15 to 30 epochs on all the data, so expect "
        "their accuracies well below the study's, and custom_nobn (lr 0.003) may "
        "collapse to chance, 10%, as it does in full runs too.", 92)


def full_note(out_dir: Path) -> str:
    """Where the report is, and the command for the real thing."""
    return (f"The report: {out_dir / 'REPORT.md'} and {out_dir / 'report.html'}\n"
            f"The full reproduction (about {FULL_MINUTES / 60:.1f} hours of training on 2 CPU "
            "cores, into results/study): cnnlab reproduce")


@dataclass
class PlannedRun:
    recipe: Recipe
    run: RunFolder

    @property
    def name(self) -> str:
        return self.run.name

    def images_per_epoch(self) -> int:
        return self.recipe.limit_train or 60_000 - self.recipe.split.val


def plan(names: list[str], seeds: list[int], out_dir: Path, quick: bool) -> list[PlannedRun]:
    overrides = QUICK if quick else {}
    return [PlannedRun(builtin(n).with_overrides({"seed": s, **overrides}),
                       RunFolder(out_dir / "runs" / f"{n}-seed{s}"))
            for n in names for s in seeds]


def seconds_per_image(recipe: Recipe, device: torch.device) -> float:
    """A quick timing of a few training steps on random data: the prior for the ETA."""
    with torch.random.fork_rng():
        model = prepare_model(create_model(recipe.model.name, recipe.model.args), device)
    optimizer = make_optimizer(model, recipe.optimizer, device)
    batch = recipe.batch_size
    x = as_input(torch.randn(batch, 1, 28, 28, device=device), model)
    y = torch.zeros(batch, dtype=torch.long, device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    return (time.perf_counter() - start) / (3 * batch)


class Progress:
    """One line per epoch: run k of n, epoch, and an ETA for the whole reproduction.

    Each remaining epoch is priced by a quick timing of its model, scaled by how the
    epochs finished so far in this session compared with that price."""

    def __init__(self, runs: list[PlannedRun], device: torch.device) -> None:
        pending = [r for r in runs if r.run.epochs_done() < r.recipe.epochs]
        per_image: dict[tuple[str, int], float] = {}
        for r in pending:
            cost = (r.recipe.model.name, r.recipe.batch_size)
            if cost not in per_image:
                per_image[cost] = seconds_per_image(r.recipe, device)
        self.price = {r.name: per_image[r.recipe.model.name, r.recipe.batch_size]
                      * r.images_per_epoch() for r in pending}
        self.remaining = sum(self.price[r.name] * (r.recipe.epochs - r.run.epochs_done())
                             for r in pending)
        self.priced = self.measured = 0.0

    def epoch_finished(self, label: str, run: PlannedRun, row: dict[str, Any]) -> None:
        self.remaining -= self.price[run.name]
        self.priced += self.price[run.name]
        self.measured += row["seconds"]
        eta = self.remaining * self.measured / self.priced
        say(label, f"{format_epoch(row, run.recipe.epochs, brief=True)}  "
            f"reproduction ETA {format_duration(eta)}")


class _ProgressLogger(Logger):
    def __init__(self, progress: Progress, label: str, run: PlannedRun) -> None:
        self.progress, self.label, self.run = progress, label, run

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.progress.epoch_finished(self.label, self.run, row)


def say(label: str, text: str) -> None:
    """A progress line on stderr: the run's label, then `text`."""
    print(f"{label} {text}", file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes >= 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes}m{int(seconds % 60):02d}s"


def reproduce(names: list[str], seeds: list[int], out_dir: Path, data_dir: Path,
              device: torch.device, quick: bool = False, quiet: bool = False) -> None:
    """Train every planned run that is not finished yet (resuming interrupted ones)."""
    runs = plan(names, seeds, out_dir, quick)
    ensure_data(data_dir)
    progress = Progress(runs, device)
    for k, planned in enumerate(runs, 1):
        label = f"[run {k}/{len(runs)} {planned.name}]"
        done = resumable_epochs(planned.run, planned.recipe)
        if done >= planned.recipe.epochs:
            say(label, "finished earlier, skipped")
            continue
        start_or_resume(planned.recipe, planned.run, data_dir, device, resume=done > 0,
                        loggers=[_ProgressLogger(progress, label, planned)],
                        progress_bar=not quiet, say=partial(say, label))
