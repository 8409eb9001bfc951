"""One worker with 2 threads against two workers with 1 thread each, on the same small grid.

Run from the repository root: `python -m experiments.sweeps.workers`. Each round creates
a fresh sweep (lenet and custom, seeds 0-3, 2 epochs on 4,000 training images) for each
layout, alternating the layouts, and times `cnnlab sweep work` end to end (process start,
data loading, training, evaluation, bookkeeping). Writes results/sweeps/workers/workers.json,
its sweeps to results/sweeps/workers/optuna.journal and its runs to
results/sweeps/workers/runs/.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from cnnlab.device import machine_name
from experiments.common import RESULTS, made_by, run_cnnlab

HERE = RESULTS / "sweeps" / "workers"
ROOT = HERE / "runs"
STORAGE = str(HERE / "optuna.journal")
GRID = "recipe=lenet,custom seed=0..3"
SETTINGS = ["--set", "epochs=2", "--set", "limit_train=4000", "--set", "limit_test=2000"]
LAYOUTS = {"1 worker x 2 threads": ["--workers", "1", "--threads", "2"],
           "2 workers x 1 thread": ["--workers", "2"]}
ROUNDS = 2


def main() -> None:
    command = made_by(__spec__.name, *sys.argv[1:])
    # No options; parsing still answers --help before anything is deleted.
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    shutil.rmtree(ROOT, ignore_errors=True)
    Path(STORAGE).unlink(missing_ok=True)
    results = []
    for round_ in range(ROUNDS):
        for label, flags in LAYOUTS.items():
            name = f"r{round_}-{flags[1]}w"
            run_cnnlab("sweep", "create", name, "--storage", STORAGE, "--grid", GRID,
                       *SETTINGS, quiet=True)
            start = time.perf_counter()
            run_cnnlab("sweep", "work", name, "--storage", STORAGE, "--runs-root", str(ROOT),
                       *flags, quiet=True)
            wall = time.perf_counter() - start
            images = 0
            for metrics in (ROOT / name / "runs").glob("*/metrics.csv"):
                images += 4000 * (len(metrics.read_text().splitlines()) - 1)
            results.append({"layout": label, "round": round_, "wall_s": round(wall, 1),
                            "train_images": images, "img_per_s": round(images / wall, 1)})
            print(json.dumps(results[-1]), flush=True)
    out = {"made_by": command, "cpu": machine_name(torch.device("cpu")),
           "cores": len(os.sched_getaffinity(0)),
           "grid": GRID, "settings": SETTINGS, "results": results}
    (HERE / "workers.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
