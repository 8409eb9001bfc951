"""Where a recipe's training step spends its time: the batch's augmentation, the forward
pass and loss, the backward pass, the optimizer step (Muon's orthogonalisation apart) and
the per-step parts (schedule, weight average), each the median over the timed steps.

Run from the repository root, alone on the machine:

    python -m experiments.recipes.step_phases [--recipes strong,FILE.toml] [--threads 2]

It prints one Markdown table (results/bench/step-phases-strong-epyc-avx2.md holds the one
docs/beyond.md quotes); nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from cnnlab import muon
from cnnlab.bench import recipe_parts
from cnnlab.cli_common import named_recipe
from cnnlab.data import load_split, resolve_data_dir
from cnnlab.device import as_input, autocast, machine_name
from cnnlab.parts import Parts, loss_fn
from cnnlab.train import batched

PHASES = ("augment", "forward", "backward", "orthogonalise", "optimizer", "after step")


def phase_seconds(parts: Parts, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                  orthogonalising: list[float]) -> dict[str, float]:
    """One training step, as train_one_epoch takes it, timed phase by phase."""
    criterion = loss_fn(parts.recipe)
    marks = [time.perf_counter()]
    x, labels = next(batches)
    marks.append(time.perf_counter())
    with autocast(parts.recipe.precision, x.device):
        loss = criterion(parts.model(as_input(x, parts.model)), labels)
    loss.item()  # the loop reads the loss here: the forward pass ends
    marks.append(time.perf_counter())
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    marks.append(time.perf_counter())
    orthogonalising.clear()
    parts.optimizer.step()
    marks.append(time.perf_counter())
    parts.after_step(epoch=1)
    marks.append(time.perf_counter())
    spans = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    ortho = sum(orthogonalising)
    return dict(zip(PHASES, [*spans[:3], ortho, spans[3] - ortho, spans[4]], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="strong")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per recipe")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_set = load_split(resolve_data_dir(args.data_dir), "train")

    orthogonalising: list[float] = []
    plain = muon.orthogonalised

    def timed_orthogonalised(update: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        result = plain(update)
        orthogonalising.append(time.perf_counter() - start)
        return result

    muon.orthogonalised = timed_orthogonalised  # Muon.step looks it up on each call
    print(f"{machine_name(torch.device('cpu'))}, {args.threads} threads, torch "
          f"{torch.__version__}; median ms of {args.steps} steps after 5 untimed, the "
          "recipes taking turns step by step\n")
    print("| recipe | batch | " + " | ".join(PHASES) + " | step | train img/s |")
    print("| --- | ---: |" + " ---: |" * (len(PHASES) + 2))
    runs = {}
    for label in (name.strip() for name in args.recipes.split(",")):
        recipe = named_recipe(label)
        if recipe.pipeline != "batched":
            parser.error(f"{label}: pipeline {recipe.pipeline}; this script times cnnlab's "
                         "batched pipeline only")
        parts = recipe_parts(recipe, train_set, 3 + 5 + args.steps, torch.device("cpu"))
        parts.model.train()
        runs[label] = (parts, batched(recipe, train_set, epoch=1, seed=0))
    rows: dict[str, list[dict[str, float]]] = {label: [] for label in runs}
    for _ in range(5 + args.steps):  # the recipes take turns, step by step, so that drift
        for label, (parts, stream) in runs.items():  # of a shared machine hits each alike
            rows[label].append(phase_seconds(parts, stream, orthogonalising))
    for label, (parts, _) in runs.items():
        timed = rows[label][5:]
        medians = {phase: statistics.median(r[phase] for r in timed) for phase in PHASES}
        step = statistics.median(sum(r.values()) for r in timed)
        cells = [f"{1000 * medians[p]:.1f} ({100 * medians[p] / step:.0f} %)" for p in PHASES]
        print(f"| {label} | {parts.recipe.batch_size} | " + " | ".join(cells)
              + f" | {1000 * step:.0f} | {parts.recipe.batch_size / step:.0f} |")


if __name__ == "__main__":
    main()
