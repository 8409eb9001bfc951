"""`cnnlab reproduce`: every preset × seed of the study into one folder, then the report.

Each run lives in `DIR/runs/<preset>-seed<k>/`. A finished run is skipped and an
interrupted one resumes from its checkpoint, so running the command again after a crash
or Ctrl-C loses at most the epoch that was in progress.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.models import get_model
from cnnlab.train import (
    TrainConfig,
    as_input,
    make_optimizer,
    prepare_model,
    read_metrics,
    resume_config,
    train,
)

# --quick: the same pipeline on subsets and few epochs (a few minutes on 2 CPU cores).
QUICK = {"epochs": 3, "limit_train": 6000, "limit_test": 2000}


@dataclass
class PlannedRun:
    config: TrainConfig
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name

    def epochs_done(self) -> int:
        metrics = self.run_dir / "metrics.csv"
        return len(read_metrics(metrics)) if (self.run_dir / "last.pt").is_file() else 0

    def images_per_epoch(self) -> int:
        return self.config.limit_train or 60_000


def plan(presets: list[str], seeds: list[int], out_dir: Path, quick: bool) -> list[PlannedRun]:
    overrides = QUICK if quick else {}
    return [PlannedRun(TrainConfig.from_preset(p, seed=s, **overrides),
                       out_dir / "runs" / f"{p}-seed{s}")
            for p in presets for s in seeds]


def seconds_per_image(model_name: str, batch_size: int, device: torch.device) -> float:
    """A quick timing of a few training steps on random data: the prior for the ETA."""
    model = prepare_model(get_model(model_name), device)
    optimizer = make_optimizer(model, 1e-4, device)
    x = as_input(torch.randn(batch_size, 1, 28, 28, device=device), model)
    y = torch.zeros(batch_size, dtype=torch.long, device=device)

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
    return (time.perf_counter() - start) / (3 * batch_size)


class Progress:
    """One line per epoch: run k of n, epoch, and an ETA for the whole reproduction.

    Each remaining epoch is priced by a quick timing of its model, scaled by how the
    epochs finished so far in this session compared with that price."""

    def __init__(self, runs: list[PlannedRun], device: torch.device) -> None:
        pending = [r for r in runs if r.epochs_done() < r.config.epochs]
        cost = {(r.config.model, r.config.batch_size) for r in pending}
        per_image = {key: seconds_per_image(*key, device) for key in cost}
        self.price = {r.name: per_image[r.config.model, r.config.batch_size]
                      * r.images_per_epoch() for r in pending}
        self.remaining = sum(self.price[r.name] * (r.config.epochs - r.epochs_done())
                             for r in pending)
        self.priced = self.measured = 0.0

    def epoch_finished(self, k: int, n: int, run: PlannedRun, row: dict[str, float]) -> None:
        self.remaining -= self.price[run.name]
        self.priced += self.price[run.name]
        self.measured += row["seconds"]
        eta = self.remaining * self.measured / self.priced
        print(f"[run {k}/{n} {run.name}] epoch {row['epoch']}/{run.config.epochs}  "
              f"test acc {100 * row['test_acc']:.2f}%  reproduction ETA "
              f"{format_duration(eta)}", file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes >= 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes}m{int(seconds % 60):02d}s"


def reproduce(presets: list[str], seeds: list[int], out_dir: Path, data_dir: Path,
              device: torch.device, quick: bool = False, quiet: bool = False) -> None:
    """Train every planned run that is not finished yet (resuming interrupted ones)."""
    runs = plan(presets, seeds, out_dir, quick)
    progress = Progress(runs, device)
    for k, run in enumerate(runs, 1):
        done = run.epochs_done()
        if done:
            # Refuses, naming the differences, when the folder holds other settings.
            resume_config(run.run_dir, run.config.preset, asdict(run.config))
        if done >= run.config.epochs:
            print(f"[run {k}/{len(runs)} {run.name}] finished earlier, skipped",
                  file=sys.stderr)
            continue
        verb = f"resuming after epoch {done}" if done else "starting"
        print(f"[run {k}/{len(runs)} {run.name}] {verb}", file=sys.stderr, flush=True)
        train(run.config, run.run_dir, data_dir, device, resume=done > 0, quiet=quiet,
              on_epoch=lambda row, k=k, run=run: progress.epoch_finished(k, len(runs), run, row))
