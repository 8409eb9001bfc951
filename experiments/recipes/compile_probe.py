"""Is `torch.compile` worth its compile time in a CPU speed run? One training step of a
recipe's network, eager against compiled (the inductor C++ backend), alternating, with the
compile time measured on its own.

Run from the repository root:

    python -m experiments.recipes.compile_probe [--recipe sprint] [--threads 2] [--steps 20]

It prints the compile time and the median seconds per step of each side over `--repeats`
alternating measurements; the ablation's notes quote it (docs/beyond.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.device import as_input, machine_name, prepare_model
from cnnlab.models import create_model
from cnnlab.recipe import builtin


def seconds_per_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                     y: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="sprint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = builtin(args.recipe)
    torch.manual_seed(0)
    model = prepare_model(create_model(recipe.model.name, recipe.model.args),
                          torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = as_input(torch.randn(recipe.batch_size, 1, 28, 28), model)
    y = torch.randint(0, 10, (recipe.batch_size,))
    seconds_per_step(model, optimizer, x, y, 3)  # warm-up
    start = time.perf_counter()
    compiled = torch.compile(model)
    seconds_per_step(compiled, optimizer, x, y, 1)  # the first call compiles
    compile_seconds = time.perf_counter() - start
    seconds_per_step(compiled, optimizer, x, y, 3)
    eager, fused = [], []
    for _ in range(args.repeats):
        eager.append(seconds_per_step(model, optimizer, x, y, args.steps))
        fused.append(seconds_per_step(compiled, optimizer, x, y, args.steps))
    print(f"{machine_name(torch.device('cpu'))}, {args.threads} threads, torch "
          f"{torch.__version__}, recipe {args.recipe}, batch {recipe.batch_size}")
    print(f"compile: {compile_seconds:.1f} s")
    print(f"eager:    {statistics.median(eager):.4f} s/step (median of {args.repeats})")
    print(f"compiled: {statistics.median(fused):.4f} s/step "
          f"({statistics.median(eager) / statistics.median(fused):.2f}× eager)")


if __name__ == "__main__":
    main()
