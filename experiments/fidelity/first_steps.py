"""How custom_nobn (lr 0.003) behaves in its first Adam steps, on each of cnnlab's paths.

Run from the repository root (CNNLAB_DATA or --data-dir pointing at Fashion-MNIST):

    python results/fidelity/first_steps.py --seeds 0..23 --steps 20

For every seed and path it trains the study's recipe through cnnlab's own loop
(`train_one_epoch`) and stops after --steps optimizer steps, recording per step the training
loss and the root-mean-square update of every layer, and at the end the fraction of dead
ReLU units (never positive on 512 fixed test images). Against cnnlab's normal path with the
same seed it records how far the weights have drifted apart (relative L2 distance per step)
and on how many weights the first update has the other sign. Writes first-steps.json and
first-steps.md beside this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from cnnlab.augment import eval_batch
from cnnlab.data import load_datasets, resolve_data_dir
from cnnlab.device import as_input, machine_name, prepare_model
from cnnlab.models import create_model
from cnnlab.parts import build_parts
from cnnlab.recipe import builtin
from cnnlab.train import Logger, train_one_epoch

HERE = Path(__file__).parent
# cnnlab's fast path, then each of its parts switched to the study's way, then all at once.
PATHS: dict[str, dict[str, object]] = {
    "cnnlab": {},
    "fused_stem off": {"model.args": {"fused_stem": False}},
    "plain Adam": {"optimizer.fused": False},
    "NCHW": {"model.memory_format": "contiguous"},
    "per-image pipeline": {"pipeline": "per_image"},
}
PATHS["all off"] = {k: v for path in list(PATHS.values()) for k, v in path.items()}
LR = builtin("custom_nobn").optimizer.lr
PROBE = 512  # test images on which a ReLU unit that never fires counts as dead


R = TypeVar("R", bound=Logger)


class Stop(Exception):
    pass


class StepRecorder(Logger):
    """After each optimizer step: the loss, each layer's RMS update and the weights."""

    def __init__(self, model: nn.Module, steps: int) -> None:
        self.model, self.steps = model, steps
        self.before = self.weights()
        self.first = self.before
        self.losses: list[float] = []
        self.rms: list[dict[str, float]] = []
        self.trajectory: list[torch.Tensor] = []

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def log_step(self, step: int, values: dict[str, float]) -> None:
        after = self.weights()
        self.losses.append(values["train/loss"])
        self.rms.append({n: (after[n] - self.before[n]).pow(2).mean().sqrt().item()
                         for n in after})
        if step == 1:
            self.first_update = {n: after[n] - self.before[n] for n in after}
        self.trajectory.append(torch.cat([w.flatten() for w in after.values()]))
        self.before = after
        if step == self.steps:
            raise Stop


def dead_relus(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Fraction of units (channel × position) of each ReLU that are zero on every image."""
    fired: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: fired.__setitem__(
        name, (out > 0).any(0))) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    model.eval()
    with torch.no_grad():
        model(as_input(eval_batch(images), model))
    for hook in hooks:
        hook.remove()
    return {name: 1 - f.float().mean().item() for name, f in fired.items()}


def train_first_steps(overrides: dict[str, object], seed: int, data,
                      recorder: Callable[[nn.Module], R]) -> tuple[nn.Module, R]:
    """custom_nobn with `overrides` through cnnlab's own loop, logging to `recorder(model)`
    until it raises Stop; the global RNG is left as it was."""
    recipe = builtin("custom_nobn").with_overrides({**overrides, "seed": seed})
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        model = prepare_model(create_model(recipe.model.name, recipe.model.args),
                              torch.device("cpu"), recipe.model.memory_format)
        parts = build_parts(recipe, model, torch.device("cpu"), math.ceil(len(data) / 64))
        logger = recorder(model)
        with contextlib.suppress(Stop):
            train_one_epoch(parts, data, 1, loggers=[logger])
    return model, logger


def first_steps(seed: int, overrides: dict[str, object], steps: int, data, probe) -> dict:
    model, recorder = train_first_steps(overrides, seed, data,
                                        lambda model: StepRecorder(model, steps))
    return {"losses": recorder.losses, "rms": recorder.rms, "dead": dead_relus(model, probe),
            "first_update": recorder.first_update, "trajectory": recorder.trajectory}


def seeds_arg(text: str) -> list[int]:
    low, _, high = text.partition("..")
    return list(range(int(low), int(high) + 1)) if high else [int(s) for s in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=seeds_arg, default=seeds_arg("0..23"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data = load_datasets(resolve_data_dir(args.data_dir))
    probe = data.test.images[:PROBE]
    results = []
    for seed in args.seeds:
        runs = {name: first_steps(seed, overrides, args.steps, data.train, probe)
                for name, overrides in PATHS.items()}
        base = runs["cnnlab"]
        for name, run in runs.items():
            sign_flips = sum(int((torch.sign(run["first_update"][n]) !=
                                  torch.sign(base["first_update"][n])).sum())
                             for n in base["first_update"])
            total = sum(u.numel() for u in base["first_update"].values())
            drift = [((w - b).norm() / b.norm()).item()
                     for w, b in zip(run["trajectory"], base["trajectory"], strict=True)]
            moved = sum(int((u.abs() > LR / 2).sum()) for u in run["first_update"].values())
            results.append({"seed": seed, "path": name, "losses": run["losses"],
                            "rms_update": run["rms"], "dead_relu": run["dead"],
                            "first_update_moved_by_lr": moved / total,
                            "first_update_sign_differs": sign_flips / total,
                            "drift_from_cnnlab": drift})
            print(f"seed {seed:>2} {name:<19} loss step 1 {run['losses'][0]:.3f} "
                  f"max {max(run['losses']):.2f} last {run['losses'][-1]:.3f}  dead "
                  + " ".join(f"{k} {100 * v:.0f}%" for k, v in run["dead"].items())
                  + f"  sign≠ {100 * sign_flips / total:.3f}%  drift {drift[-1]:.2e}",
                  flush=True)
    out = {"cpu": machine_name(torch.device("cpu")), "torch": torch.__version__,
           "threads": torch.get_num_threads(),
           "steps": args.steps, "seeds": args.seeds, "runs": results}
    (HERE / "first-steps.json").write_text(json.dumps(out, indent=1) + "\n")
    (HERE / "first-steps.md").write_text(summary(out))


def summary(out: dict) -> str:
    """Medians over seeds per path, then each seed on cnnlab's path."""
    def med(values: list[float]) -> float:
        return statistics.median(values)

    seeds = ", ".join(map(str, out["seeds"]))
    lines = [f"First {out['steps']} steps of custom_nobn (lr {LR}), seeds {seeds}, on "
             f"{out['cpu']} ({out['threads']} thread(s)), torch {out['torch']}. Losses are "
             "each step's training batch loss before its update; medians over seeds.", "",
             "| path | loss step 1 | step 2 | max | last | weights moved by ~lr in step 1 "
             "| step-1 update sign differs from cnnlab | weight drift from cnnlab, last step "
             "| dead relu1 / relu2 / relu4 |", "|" + " --- |" * 9]
    for path in PATHS:
        runs = [r for r in out["runs"] if r["path"] == path]
        dead = " / ".join(f"{100 * med([r['dead_relu'][k] for r in runs]):.0f}%"
                          for k in ("relu1", "relu2", "relu4"))
        lines.append(
            f"| {path} | {med([r['losses'][0] for r in runs]):.3f} | "
            f"{med([r['losses'][1] for r in runs]):.2f} | "
            f"{med([max(r['losses']) for r in runs]):.2f} | "
            f"{med([r['losses'][-1] for r in runs]):.3f} | "
            f"{100 * med([r['first_update_moved_by_lr'] for r in runs]):.1f}% | "
            f"{100 * med([r['first_update_sign_differs'] for r in runs]):.4f}% | "
            f"{med([r['drift_from_cnnlab'][-1] for r in runs]):.1e} | {dead} |")
    lines += ["", "cnnlab's path, seed by seed:", "",
              "| seed | loss step 2 | max | last | dead relu1 / relu2 / relu4 |",
              "|" + " --- |" * 5]
    for r in (r for r in out["runs"] if r["path"] == "cnnlab"):
        dead = " / ".join(f"{100 * r['dead_relu'][k]:.0f}%" for k in ("relu1", "relu2", "relu4"))
        lines.append(f"| {r['seed']} | {r['losses'][1]:.2f} | {max(r['losses']):.2f} | "
                     f"{r['losses'][-1]:.3f} | {dead} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
