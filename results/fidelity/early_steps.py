"""Whether custom_nobn (lr 0.003) has collapsed after its first N steps, per seed and path:
a cheap early reading of the 2-epoch sweeps' outcome.

Run from the repository root (CNNLAB_DATA or --data-dir pointing at Fashion-MNIST):

    python results/fidelity/early_steps.py --paths cnnlab --seeds 0..23 --steps 100

Each run goes through cnnlab's own loop (`train_one_epoch`) with the path's settings from
collapse.py and stops after --steps optimizer steps; it records every step's training loss
and at the end the fraction of dead ReLU units on 512 test images. Appends one JSON line per
run to early-steps.jsonl beside this file (a run already there is skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from collapse import PATHS  # noqa: E402
from first_steps import PROBE, Stop, dead_relus, seeds_arg  # noqa: E402

from cnnlab.data import load_datasets, resolve_data_dir  # noqa: E402
from cnnlab.device import machine_name, prepare_model  # noqa: E402
from cnnlab.models import create_model  # noqa: E402
from cnnlab.parts import build_parts  # noqa: E402
from cnnlab.recipe import builtin, parse_assignments  # noqa: E402
from cnnlab.train import Logger, train_one_epoch  # noqa: E402

OUT = Path(__file__).parent / "early-steps.jsonl"


class Losses(Logger):
    def __init__(self, steps: int) -> None:
        self.steps, self.losses = steps, []

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self.losses.append(values["train/loss"])
        if step == self.steps:
            raise Stop


def early_run(path: str, seed: int, steps: int, data, probe) -> dict:
    recipe = builtin("custom_nobn").with_overrides(
        {**parse_assignments(PATHS[path]), "seed": seed})
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        model = prepare_model(create_model(recipe.model.name, recipe.model.args),
                              torch.device("cpu"), recipe.model.memory_format)
        parts = build_parts(recipe, model, torch.device("cpu"), math.ceil(len(data) / 64))
        recorder = Losses(steps)
        with contextlib.suppress(Stop):
            train_one_epoch(parts, data, 1, loggers=[recorder])
    return {"path": path, "seed": seed, "steps": steps, "losses": recorder.losses,
            "dead_relu": dead_relus(model, probe), "cpu": machine_name(torch.device("cpu")),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", default="cnnlab")
    parser.add_argument("--seeds", type=seeds_arg, default=seeds_arg("0..23"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1,
                        help="1, as the sweeps ran, so that the steps are theirs bit for bit")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_datasets(resolve_data_dir(args.data_dir))
    probe = data.test.images[:PROBE]
    records = OUT.read_text().splitlines() if OUT.exists() else []
    done = {(r["path"], r["seed"], r["steps"]) for r in map(json.loads, records)}
    for path in args.paths.split(","):
        for seed in args.seeds:
            if (path, seed, args.steps) in done:
                continue
            run = early_run(path, seed, args.steps, data.train, probe)
            with OUT.open("a") as f:
                f.write(json.dumps(run) + "\n")
            tail = run["losses"][-20:]
            dead = " ".join(f"{k} {100 * v:.0f}%" for k, v in run["dead_relu"].items())
            print(f"{path:<15} seed {seed:>3}  mean loss of the last 20 steps "
                  f"{sum(tail) / len(tail):.3f}  dead {dead}", flush=True)


if __name__ == "__main__":
    main()
