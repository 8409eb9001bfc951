"""How custom_nobn (lr 0.003) behaves in its first Adam steps, on each of cnnlab's paths.

Run from the repository root (CNNLAB_DATA or --data-dir pointing at Fashion-MNIST):

    python -m experiments.fidelity.first_steps --seeds 0..23 --steps 20

For every seed and path it trains the study's recipe through cnnlab's own loop
(`train_one_epoch`) and stops after --steps optimizer steps, recording per step the training
loss and the root-mean-square update of every layer, and at the end the fraction of dead
ReLU units (never positive on 512 fixed test images). Against cnnlab's normal path with the
same seed it records how far the weights have drifted apart (relative L2 distance per step)
and on how many weights the first update has the other sign. Writes first-steps.json and
first-steps.md to results/fidelity/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from torch import nn

from cnnlab.data import load_datasets, resolve_data_dir
from cnnlab.device import machine_name
from cnnlab.loggers import Logger
from cnnlab.recipe import builtin, parse_assignments
from experiments.common import (
    FIDELITY,
    PATHS,
    PROBE,
    dead_relus,
    int_list,
    made_by,
    train_first_steps,
)

# How first-steps.json and first-steps.md name each of the collapse study's paths.
TITLES = {"cnnlab": "cnnlab", "fused-stem-off": "fused_stem off", "plain-adam": "plain Adam",
          "nchw": "NCHW", "per-image": "per-image pipeline", "all-off": "all off"}
LR = builtin("custom_nobn").optimizer.lr


class StepRecorder(Logger):
    """After each optimizer step: the loss, each layer's RMS update and the weights."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.before = self.weights()
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


def first_steps(seed: int, overrides: dict[str, object], steps: int, data, probe) -> dict:
    model, recorder = train_first_steps(overrides, seed, data, steps, StepRecorder)
    return {"losses": recorder.losses, "rms": recorder.rms, "dead": dead_relus(model, probe),
            "first_update": recorder.first_update, "trajectory": recorder.trajectory}


def main() -> None:
    command = made_by(__spec__.name, *sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int_list, default=int_list("0..23"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data = load_datasets(resolve_data_dir(args.data_dir))
    probe = data.test.images[:PROBE]
    results = []
    for seed in args.seeds:
        runs = {TITLES[path]: first_steps(seed, parse_assignments(settings), args.steps,
                                          data.train, probe)
                for path, settings in PATHS.items()}
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
    out = {"made_by": command,
           "cpu": machine_name(torch.device("cpu")), "torch": torch.__version__,
           "threads": torch.get_num_threads(),
           "steps": args.steps, "seeds": args.seeds, "runs": results}
    (FIDELITY / "first-steps.json").write_text(json.dumps(out, indent=1) + "\n")
    (FIDELITY / "first-steps.md").write_text(summary(out))


def summary(out: dict) -> str:
    """Medians over seeds per path, then each seed on cnnlab's path."""
    def med(values: list[float]) -> float:
        return statistics.median(values)

    seeds = ", ".join(map(str, out["seeds"]))
    lines = [f"Made by `{out['made_by']}`.", "",
             f"First {out['steps']} steps of custom_nobn (lr {LR}), seeds {seeds}, on "
             f"{out['cpu']} ({out['threads']} thread(s)), torch {out['torch']}. Losses are "
             "each step's training batch loss before its update; medians over seeds.", "",
             "| path | loss step 1 | step 2 | max | last | weights moved by ~lr in step 1 "
             "| step-1 update sign differs from cnnlab | weight drift from cnnlab, last step "
             "| dead relu1 / relu2 / relu4 |", "|" + " --- |" * 9]
    for path in (TITLES[key] for key in PATHS):
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
