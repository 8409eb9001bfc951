"""Muon for convolution filters, as the CIFAR-10 speed runs use it.

torch.optim.Muon takes 2-D weights only. Here each convolution's (out, in, k, k) filter bank
is stepped as the (out, in·k·k) matrix it is: its Nesterov momentum is orthogonalised by the
quintic Newton–Schulz iteration (Keller Jordan's coefficients, torch's default) and scaled by
torch's "original" rule. Every other parameter (norms, biases, the classifier) takes a plain
Nesterov SGD step, so that one optimizer carries the recipe's one schedule. That step is a
plain loop over tensors, not a fused kernel: it measured 0.2 % of `strong`'s training step,
the orthogonalisation 9 % (results/bench/step-phases-strong-epyc-avx2.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # quintic coefficients, as torch.optim.Muon's
NEWTON_SCHULZ_STEPS = 5


def orthogonalised(update: Tensor) -> Tensor:
    """`update` as a matrix (rows = output channels) with its singular values pushed near 1,
    scaled by sqrt(max(1, rows / columns)); five cheap matmul steps instead of an SVD."""
    x = update.reshape(len(update), -1)
    rows, columns = x.shape
    if rows > columns:
        x = x.T
    x = x / (x.norm() + 1e-7)
    a, b, c = NEWTON_SCHULZ
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if rows > columns:
        x = x.T
    return x.reshape(update.shape) * max(1.0, rows / columns) ** 0.5


class Muon(torch.optim.Optimizer):
    """Nesterov-or-heavy-ball momentum for every group; groups with `orthogonalise` set
    step by the orthogonalised momentum with decoupled weight decay (as torch.optim.Muon),
    the others by the momentum itself with L2 weight decay (as torch.optim.SGD)."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, momentum: float,
                 nesterov: bool, weight_decay: float) -> None:
        super().__init__(groups, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": weight_decay, "orthogonalise": False})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # torch's signature; no closure is used
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if decay and not group["orthogonalise"]:
                    grad = grad.add(p, alpha=decay)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(momentum).add_(grad)
                buffer = state["momentum_buffer"]
                update = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                if group["orthogonalise"]:
                    update = orthogonalised(update)
                    p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr)
