"""Whether custom_nobn (lr 0.003) has collapsed after its first N steps, per seed and path:
a cheap early reading of the 2-epoch sweeps' outcome.

Run from the repository root (CNNLAB_DATA or --data-dir pointing at Fashion-MNIST):

    python -m experiments.fidelity.early_steps --paths cnnlab --seeds 0..99 --steps 100
    python -m experiments.fidelity.early_steps --table    # the table, against the sweeps

--table prints the collapse study's table for these readings (Fisher's test against all-off,
McNemar's for the paths that differ only in rounding), then how often each path's reading
agrees with its 2-epoch sweep, and draws results/fidelity/early-collapse-rates.png.

Each run goes through cnnlab's own loop (`train_one_epoch`) with the path's settings
(experiments.common.PATHS) and stops after --steps optimizer steps; it records every step's
training loss and at the end the fraction of dead ReLU units on 512 test images. Appends one
JSON line per run to results/fidelity/early-steps.jsonl (a run already there is skipped).
"""

from __future__ import annotations

import argparse
import json

import torch

from cnnlab.data import load_datasets, resolve_data_dir
from cnnlab.device import machine_name
from cnnlab.loggers import Logger
from cnnlab.recipe import parse_assignments
from experiments.common import (
    FIDELITY,
    PATHS,
    PROBE,
    dead_relus,
    finished_runs,
    int_list,
    rate_figure,
    rate_table,
    train_first_steps,
)

OUT = FIDELITY / "early-steps.jsonl"
FIGURE = FIDELITY / "early-collapse-rates.png"
# A run whose last 20 batch losses average above this has collapsed: ln 10 ≈ 2.303 is chance,
# and the runs that learn are below 1.3 by step 100 (1.25 at most over the readings made).
COLLAPSED_LOSS = 2.2


class Losses(Logger):
    """Each step's training loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self.losses.append(values["train/loss"])


def early_run(path: str, seed: int, steps: int, data, probe) -> dict:
    model, recorder = train_first_steps(parse_assignments(PATHS[path]), seed, data, steps,
                                        lambda _model: Losses())
    return {"path": path, "seed": seed, "steps": steps, "losses": recorder.losses,
            "dead_relu": dead_relus(model, probe), "cpu": machine_name(torch.device("cpu")),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def late_loss(run: dict) -> float:
    """Mean training loss of the run's last 20 steps."""
    tail = run["losses"][-20:]
    return sum(tail) / len(tail)


def early_collapsed(run: dict) -> bool:
    return late_loss(run) > COLLAPSED_LOSS


def early_runs(steps: int) -> list[dict]:
    """The readings of `steps` steps recorded so far."""
    records = OUT.read_text().splitlines() if OUT.exists() else []
    return [r for r in map(json.loads, records) if r["steps"] == steps]


def early_outcomes(runs: list[dict]) -> dict[str, dict[int, bool]]:
    """Per path read so far: each seed and whether it had collapsed by the last step."""
    result = {}
    for path in PATHS:
        if mine := sorted((r for r in runs if r["path"] == path), key=lambda r: r["seed"]):
            result[path] = {r["seed"]: early_collapsed(r) for r in mine}
    return result


def agreement(runs: list[dict]) -> str:
    """Per path, on the seeds whose 2-epoch sweep run finished on the CPU of the reading
    (runs on another CPU are other runs, NOBN-COLLAPSE.md), how often the two agree."""
    read = {(r["path"], r["seed"]): r for r in runs}
    lines = ["| path | seeds read both ways | early reading agrees with the 2-epoch sweep |",
             "| --- | --- | --- |"]
    for path, swept in finished_runs().items():
        both = [seed for seed, run in swept.items() if (path, seed) in read
                and run.info.get("machine", "") == read[path, seed]["cpu"]]
        agree = sum(early_collapsed(read[path, seed]) == swept[seed].collapsed
                    for seed in both)
        lines.append(f"| {path} | {len(both)} | {agree} of {len(both)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", default="cnnlab")
    parser.add_argument("--seeds", type=int_list, default=int_list("0..99"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1,
                        help="1, as the sweeps ran, so that the steps are theirs bit for bit")
    parser.add_argument("--data-dir")
    parser.add_argument("--table", action="store_true",
                        help="print the table of the runs recorded so far and stop")
    args = parser.parse_args()
    if args.table:
        runs = early_runs(args.steps)
        early = early_outcomes(runs)
        print(rate_table(early) + "\n" + agreement(runs), end="")
        rate_figure(early, FIGURE, f"runs collapsed by step {args.steps}")
        return
    torch.set_num_threads(args.threads)
    data = load_datasets(resolve_data_dir(args.data_dir))
    probe = data.test.images[:PROBE]
    done = {(r["path"], r["seed"]) for r in early_runs(args.steps)}
    for path in args.paths.split(","):
        for seed in args.seeds:
            if (path, seed) in done:
                continue
            run = early_run(path, seed, args.steps, data.train, probe)
            with OUT.open("a") as f:
                f.write(json.dumps(run) + "\n")
            dead = " ".join(f"{k} {100 * v:.0f}%" for k, v in run["dead_relu"].items())
            print(f"{path:<15} seed {seed:>3}  mean loss of the last 20 steps "
                  f"{late_loss(run):.3f}  dead {dead}", flush=True)


if __name__ == "__main__":
    main()
