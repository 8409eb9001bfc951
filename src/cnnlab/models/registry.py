"""The model registry: every network is a name mapped to a constructor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from cnnlab.errors import CnnlabError

_MODELS: dict[str, Callable[[], nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator: make `fn()` available as `get_model(name)`."""
    def decorate(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn
    return decorate


def list_models() -> list[str]:
    return sorted(_MODELS)


def get_model(name: str) -> nn.Module:
    try:
        return _MODELS[name]()
    except KeyError:
        raise CnnlabError(f"unknown model {name!r}; choose one of: "
                          f"{', '.join(list_models())}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextmanager
def plain_path(model: nn.Module) -> Iterator[None]:
    """Run `model` layer by layer: switch off exact fast paths (modules that have one
    expose a boolean `fused_stem`) for the duration."""
    fused = [m for m in model.modules() if getattr(m, "fused_stem", False)]
    for m in fused:
        m.fused_stem = False
    try:
        yield
    finally:
        for m in fused:
            m.fused_stem = True


def count_macs(model: nn.Module, image_size: int = 28) -> int:
    """Multiply-accumulates of one forward pass on one image, counted in the layers of the
    plain network (convolutions and linear layers; pooling, norms and activations are free)."""
    macs = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        per_output = module.in_channels // module.groups * module.kernel_size[0] \
            * module.kernel_size[1]
        macs += output[0].numel() * per_output

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        macs += module.in_features * module.out_features

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), plain_path(model):
            model(torch.zeros(1, 1, image_size, image_size))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return macs
