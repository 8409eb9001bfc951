"""The training parts a recipe builds: optimizer with parameter groups, learning-rate
schedule, loss and weight averaging, all from torch's own implementations but Muon for
convolution filters (cnnlab.muon), which torch's does not step."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnlab.errors import CnnlabError
from cnnlab.muon import Muon
from cnnlab.recipe import AverageSpec, OptimizerSpec, Recipe, ScheduleSpec

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, spec: OptimizerSpec) -> list[dict[str, Any]]:
    """One group of all parameters, unless norm-layer and bias parameters are to be
    treated apart (no weight decay, or their own lr multiplier): then two groups. Muon adds
    a last group, of the trained convolution filters, at their own lr."""
    params = list(model.parameters())
    filters = []
    if spec.name == "muon":
        filters = [{"params": [p for p in params if p.ndim == 4 and p.requires_grad],
                    "lr": spec.filter_lr, "orthogonalise": True}]
        params = [p for p in params if p.ndim != 4 or not p.requires_grad]
    if spec.norm_bias_decay and spec.norm_bias_lr_scale == 1.0:
        return [{"params": params}, *filters]
    special = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS)
               for p in m.parameters(recurse=False)}
    special |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    rest = [p for p in params if id(p) not in special]
    norm_bias = [p for p in params if id(p) in special]
    group = {"params": norm_bias, "lr": spec.lr * spec.norm_bias_lr_scale}
    if not spec.norm_bias_decay:
        group["weight_decay"] = 0.0
    return [{"params": rest}, group, *filters]


def make_optimizer(model: nn.Module, spec: OptimizerSpec,
                   device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimizer; `fused` uses torch's single-kernel update where it has one
    (CPU and CUDA): measured 15–20 % faster training for alexnet and custom on CPU."""
    groups = param_groups(model, spec)
    fused = spec.fused and device.type in ("cpu", "cuda")
    common = {"lr": spec.lr, "weight_decay": spec.weight_decay, "fused": fused or None}
    if spec.name == "muon":
        return Muon(groups, spec.lr, spec.momentum, spec.nesterov, spec.weight_decay)
    if spec.name == "sgd":
        return torch.optim.SGD(groups, momentum=spec.momentum, nesterov=spec.nesterov,
                               **common)
    cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
    return cls(groups, betas=tuple(spec.betas), **common)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, epochs: int,
                   steps_per_epoch: int) -> lr_scheduler.LRScheduler | None:
    """The recipe's schedule. step/multistep count epochs; cosine, linear and onecycle
    count batches (`spec.per_step`). Per-group lr multipliers are kept by all of them
    (cosine's floor, final_lr_factor × lr, is one value for every group)."""
    total = epochs * steps_per_epoch
    if spec.name == "constant":
        return None
    if spec.name == "step":
        return lr_scheduler.StepLR(optimizer, spec.step_size, spec.gamma)
    if spec.name == "multistep":
        return lr_scheduler.MultiStepLR(optimizer, spec.milestones, spec.gamma)
    if spec.name == "onecycle":
        if spec.pct_start * total <= 1:
            raise CnnlabError(f"schedule onecycle: {total} steps in all leave its rise to the "
                              f"peak (pct_start {spec.pct_start} of them) one step or less; "
                              "train on more images or epochs, or raise schedule.pct_start")
        # cycle_momentum off: the recipe's momentum / betas are used as written.
        return lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=spec.pct_start, anneal_strategy=spec.anneal,
            div_factor=spec.div_factor, final_div_factor=spec.final_div_factor,
            cycle_momentum=False)
    warmup = min(total - 1, math.ceil(spec.warmup_epochs * steps_per_epoch))
    decay_steps = total - warmup
    if spec.name == "cosine":
        base_lr = optimizer.param_groups[0]["lr"]
        decay = lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_steps,
                                               eta_min=spec.final_lr_factor * base_lr)
    else:  # linear
        decay = lr_scheduler.LinearLR(optimizer, start_factor=1.0,
                                      end_factor=spec.final_lr_factor, total_iters=decay_steps)
    if warmup == 0:
        return decay
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=spec.warmup_factor, end_factor=1.0,
                                 total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, decay], milestones=[warmup])


def loss_fn(recipe: Recipe):
    smoothing = recipe.loss.label_smoothing

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)
    return loss


@dataclass
class Parts:
    """Everything one run trains and steps: model, optimizer, schedule, weight average."""

    recipe: Recipe
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: lr_scheduler.LRScheduler | None
    averaged: AveragedModel | None  # the EMA, or lookahead's slow weights
    steps_this_epoch: int = 0  # lookahead's steps, counted from each epoch's start (where runs
    # resume): it syncs every `every` of them

    @property
    def evaluated(self) -> nn.Module:
        """The weights the recipe reports: the average when there is one."""
        return self.averaged.module if self.averaged is not None else self.model

    def after_step(self, epoch: int) -> None:
        if self.scheduler is not None and self.recipe.schedule.per_step:
            self.scheduler.step()
        average = self.recipe.average
        if self.averaged is None or epoch < average.start_epoch:
            return
        if average.name == "ema":
            self.averaged.update_parameters(self.model)
            return
        self.steps_this_epoch += 1
        if self.steps_this_epoch % average.every == 0:  # lookahead: slow weights step
            self.averaged.update_parameters(self.model)  # toward the fast ones, which
            with torch.no_grad():  # restart from them
                for fast, slow in zip(self.model.parameters(),
                                      self.averaged.module.parameters(), strict=True):
                    fast.copy_(slow)

    def after_epoch(self) -> None:
        self.steps_this_epoch = 0
        if self.scheduler is not None and not self.recipe.schedule.per_step:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "averaged": None if self.averaged is None else self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.averaged is not None:
            self.averaged.load_state_dict(state["averaged"])


def ema_update(spec: AverageSpec) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """torch's EMA step, with the decay warmed up when the recipe asks: min(decay,
    (1 + n) / (10 + n)) after n updates, as TensorFlow's ExponentialMovingAverage does with
    num_updates. Without it an average of decay 0.999 still holds mostly the initial weights
    after a few hundred steps."""
    if not spec.warmup:
        return get_ema_multi_avg_fn(spec.decay)

    def update(averaged: list[Tensor], current: list[Tensor], updates: Tensor) -> None:
        n = int(updates)
        get_ema_multi_avg_fn(min(spec.decay, (1 + n) / (10 + n)))(averaged, current, updates)

    return update


def build_parts(recipe: Recipe, model: nn.Module, device: torch.device,
                steps_per_epoch: int) -> Parts:
    """The recipe's parts around an initialised, prepared `model`."""
    optimizer = make_optimizer(model, recipe.optimizer, device)
    scheduler = make_scheduler(optimizer, recipe.schedule, recipe.epochs, steps_per_epoch)
    averaged = None
    if recipe.average.name != "none":
        averaged = AveragedModel(model, multi_avg_fn=ema_update(recipe.average),
                                 use_buffers=True)
    if recipe.average.name == "lookahead":
        averaged.update_parameters(model)  # the slow weights start at the initial ones
    return Parts(recipe, model, optimizer, scheduler, averaged)
