"""The recipes' GPU figure: `sprint`, `fast` and `strong` trained on the full training set
and tested, one run after another on one CUDA device, then `cnnlab bench` of their
training loops.

A borrowed GPU comes for minutes, so the runs go in order of what they tell: seed 0 of each
recipe, then `strong`'s seeds 1 and 2, then `sprint`'s and `fast`'s seeds 1 to 9, then seed 0
of each in bf16 autocast (on CUDA only). A run starts only if the time its recipe took before
still fits in `--budget` (the bench keeps its own reserve), so the script ends in time with
whole runs. Run from the repository root:

    python -m experiments.recipes.gpu --data-dir DATA --out results/recipes-gpu [--budget 420]
    cnnlab report results/recipes-gpu    # REPORT.md from the runs, on any machine

It writes OUT/runs/<recipe>-seed<k>/ (fp32: PyTorch's defaults, so cuDNN convolutions may
use TF32, which env.json records), OUT/bf16/runs/..., OUT/bench.json and OUT/env.json.
`--quick` does the same on subsets for 2 epochs (a check of the script, on any device).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
import traceback
from functools import partial
from pathlib import Path

import torch

from cnnlab import __version__
from cnnlab.bench import format_bench, run_bench
from cnnlab.device import machine_name, resolve_device
from cnnlab.files import atomic_write_text
from cnnlab.recipe import builtin
from cnnlab.reproduce import QUICK
from cnnlab.runs import RunFolder
from cnnlab.train import start_or_resume

RECIPES = ("sprint", "fast", "strong")
RESERVE_S = 30  # for the bench: 30 steps × 5 repeats per recipe


def planned_runs(bf16: bool) -> list[tuple[str, int, str]]:
    """(recipe, seed, precision) in the order their figures matter."""
    first = [(name, 0, "fp32") for name in RECIPES]
    strong = [("strong", seed, "fp32") for seed in (1, 2)]
    rest = [(name, seed, "fp32") for seed in range(1, 10) for name in ("sprint", "fast")]
    return first + strong + rest + [(name, 0, "bf16") for name in RECIPES if bf16]


def environment(device: torch.device, commit: str) -> dict[str, object]:
    smi = ""
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout
    return {"cnnlab": __version__, "commit": commit, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "machine": machine_name(device), "nvidia_smi": smi.strip(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=420, help="seconds for everything")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--commit", default="", help="the commit of the code, for env.json")
    parser.add_argument("--quick", action="store_true", help="subsets and 2 epochs")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "env.json", json.dumps(environment(device, args.commit), indent=1))
    took: dict[tuple[str, str], float] = {}  # a recipe's last run's seconds, per precision
    for name, seed, precision in planned_runs(bf16=device.type == "cuda"):
        left = deadline - time.monotonic() - RESERVE_S
        if took.get((name, precision), took.get((name, "fp32"), 0)) > left:
            print(f"skipped {name} seed {seed} {precision}: {left:.0f} s left", flush=True)
            continue
        recipe = builtin(name).with_overrides(
            {"seed": seed, "precision": precision, **(QUICK if args.quick else {})})
        folder = args.out / ("bf16" if precision == "bf16" else "") / "runs" / f"{name}-seed{seed}"
        label = f"{name} seed {seed} {precision}:"
        try:
            metrics = start_or_resume(recipe, RunFolder(folder), args.data_dir, device,
                                      resume=False, say=partial(print, label))
        except Exception:  # one failed run must not cost the lease's other figures
            print(label, "failed\n", traceback.format_exc(), flush=True)
            continue
        took[name, precision] = sum(row["seconds"] for row in metrics)
        print(f"{label} {100 * metrics[-1]['test_acc']:.2f} % in "
              f"{took[name, precision]:.1f} s", flush=True)
    steps, repeats = (2, 1) if args.quick else (30, 5)
    bench = run_bench([], args.data_dir, device, steps, repeats,
                      recipes={name: builtin(name) for name in RECIPES})
    atomic_write_text(args.out / "bench.json", json.dumps(bench, indent=1))
    print(format_bench(bench))


if __name__ == "__main__":
    main()
