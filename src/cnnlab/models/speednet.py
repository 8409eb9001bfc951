"""A small, fast network for recipes that go beyond the study, shaped like the CIFAR-10
speed runs' networks (airbench): a stem convolution, then blocks of
conv → max-pool → BatchNorm → GELU → (conv → BatchNorm → GELU) × (depth − 1),
global max pooling and a linear head. Widths and depth are arguments, so recipes can trade
accuracy for time: each block halves the resolution (28 → 14 → 7 → 3 → 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import register_model


def conv_bn_gelu(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers + [nn.BatchNorm2d(c_out), nn.GELU()]


class SpeedNet(nn.Module):
    def __init__(self, widths: Sequence[int], depth: int, stem: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_gelu(1, stem, pool=False))
        blocks, c_in = [], stem
        for width in widths:
            layers = conv_bn_gelu(c_in, width, pool=True)
            for _ in range(depth - 1):
                layers += conv_bn_gelu(width, width, pool=False)
            blocks.append(nn.Sequential(*layers))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).amax(dim=(2, 3)))


@register_model("speednet")
def speednet(widths: Sequence[int] = (32, 64, 128), depth: int = 2,
             stem: int = 24) -> SpeedNet:
    """widths: channels of each block (1 to 4 blocks); depth: convolutions per block;
    stem: channels of the first convolution."""
    if not 1 <= len(widths) <= 4 or any(int(w) != w or w < 1 for w in (*widths, stem)):
        raise CnnlabError(f"speednet: widths {list(widths)} and stem {stem} must be 1 to 4 "
                          "positive integers (each block halves the 28-pixel image) and a "
                          "positive integer")
    if int(depth) != depth or depth < 1:
        raise CnnlabError(f"speednet: depth must be a positive integer (got {depth})")
    return SpeedNet([int(w) for w in widths], int(depth), int(stem))
