"""A small, fast network for recipes that go beyond the study, shaped like the CIFAR-10
speed runs' networks (airbench): a stem convolution, then blocks of
conv → max-pool → BatchNorm → GELU → (conv → BatchNorm → GELU) × (depth − 1),
global max pooling and a linear head. Widths and depth are arguments, so recipes can trade
accuracy for time: each block halves the resolution (28 → 14 → 7 → 3 → 1).

With `whiten=k` the stem is the speed runs' frozen patch-whitening layer instead of a
learned convolution: its 2·k² filters are the principal directions of the training images'
k×k patches, scaled to unit variance, and their negatives, set from the data before the
first step (`fit_to_data`) and never trained.

The speed runs' other choices are arguments too, off by default: BatchNorm's running-average
momentum and a frozen BatchNorm scale, identity-initialised convolutions, and a fixed scale
on the logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import register_model


def conv_bn_gelu(c_in: int, c_out: int, pool: bool, bn_momentum: float = 0.1,
                 bn_scale: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    norm = nn.BatchNorm2d(c_out, momentum=bn_momentum)
    norm.weight.requires_grad_(bn_scale)  # frozen at 1: only the shift is learned
    return layers + [norm, nn.GELU()]


@torch.no_grad()
def identity_init(conv: nn.Conv2d) -> None:
    """The speed runs' identity initialisation: the first min(c_in, c_out) filters pass
    their input channel through unchanged (a Dirac delta at the centre, added to the
    default random filters), so a deep stack starts close to the identity."""
    n = min(conv.in_channels, conv.out_channels)
    conv.weight[:n].add_(torch.nn.init.dirac_(torch.empty_like(conv.weight[:n])))


class PatchWhitening(nn.Module):
    """A k×k convolution (no padding) whose filters whiten the training images' patches.

    The filters are a buffer: saved and loaded with the model, never trained; the bias is
    learned, for the first `bias_epochs` epochs only if that is not 0 (as airbench freezes
    it). Until `fit_to_data` runs the filters are zero."""

    def __init__(self, k: int, eps: float = 5e-4, bias_epochs: int = 0) -> None:
        super().__init__()
        self.eps = eps
        self.bias_epochs = bias_epochs
        self.register_buffer("weight", torch.zeros(2 * k * k, 1, k, k))
        self.bias = nn.Parameter(torch.zeros(2 * k * k))

    @torch.no_grad()
    def fit_to_data(self, images: torch.Tensor) -> None:
        """`images`: normalized training images (N, 1, H, W), as the network sees them."""
        k = self.weight.shape[-1]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).reshape(-1, k * k)
        covariance = patches.T @ patches / len(patches)
        variances, directions = torch.linalg.eigh(covariance.double())
        filters = directions.T / (variances + self.eps).sqrt()[:, None]
        filters = filters.reshape(k * k, 1, k, k).to(self.weight.dtype)
        self.weight.copy_(torch.cat([filters, -filters]))

    def start_epoch(self, epoch: int) -> None:
        self.bias.requires_grad_(not self.bias_epochs or epoch <= self.bias_epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class SpeedNet(nn.Module):
    def __init__(self, widths: Sequence[int], depth: int, stem: int, whiten: int,
                 bn_momentum: float = 0.1, bn_scale: bool = True,
                 identity: bool = False, logit_scale: float = 1.0,
                 whiten_bias_epochs: int = 0) -> None:
        super().__init__()
        norm = {"bn_momentum": bn_momentum, "bn_scale": bn_scale}
        if whiten:
            self.stem = nn.Sequential(
                PatchWhitening(whiten, bias_epochs=whiten_bias_epochs), nn.GELU())
            c_in = 2 * whiten * whiten
        else:
            self.stem = nn.Sequential(*conv_bn_gelu(1, stem, pool=False, **norm))
            c_in = stem
        blocks = []
        for width in widths:
            layers = conv_bn_gelu(c_in, width, pool=True, **norm)
            for _ in range(depth - 1):
                layers += conv_bn_gelu(width, width, pool=False, **norm)
            blocks.append(nn.Sequential(*layers))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, 10)
        self.logit_scale = logit_scale
        if identity:
            for conv in self.blocks.modules():
                if isinstance(conv, nn.Conv2d):
                    identity_init(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.blocks(self.stem(x)).amax(dim=(2, 3)))
        return logits if self.logit_scale == 1.0 else logits * self.logit_scale


@register_model("speednet")
def speednet(widths: Sequence[int] = (32, 64, 128), depth: int = 2,
             stem: int = 24, whiten: int = 0, bn_momentum: float = 0.1,
             bn_scale: bool = True, identity: bool = False,
             logit_scale: float = 1.0, whiten_bias_epochs: int = 0) -> SpeedNet:
    """widths: channels of each block (1 to 4 blocks); depth: convolutions per block;
    stem: channels of the learned first convolution; whiten: k > 0 replaces it with the
    frozen k×k patch-whitening layer (2·k² channels), whose bias is trained for the first
    whiten_bias_epochs epochs only (0: throughout); bn_momentum: BatchNorm's running
    average momentum (torch's convention: the weight of the new batch); bn_scale: false
    freezes every BatchNorm scale at 1; identity: identity-initialised block convolutions;
    logit_scale: a fixed factor on the logits."""
    if not 1 <= len(widths) <= 4 or any(int(w) != w or w < 1 for w in (*widths, stem)):
        raise CnnlabError(f"speednet: widths {list(widths)} and stem {stem} must be 1 to 4 "
                          "positive integers (each block halves the 28-pixel image) and a "
                          "positive integer")
    if int(depth) != depth or depth < 1:
        raise CnnlabError(f"speednet: depth must be a positive integer (got {depth})")
    if int(whiten) != whiten or not 0 <= whiten <= 5:
        raise CnnlabError(f"speednet: whiten must be a patch size from 1 to 5, or 0 for a "
                          f"learned stem (got {whiten})")
    if int(whiten_bias_epochs) != whiten_bias_epochs or whiten_bias_epochs < 0:
        raise CnnlabError("speednet: whiten_bias_epochs must be 0 (the bias always trained) "
                          f"or a number of epochs (got {whiten_bias_epochs})")
    if whiten_bias_epochs and not whiten:
        raise CnnlabError("speednet: whiten_bias_epochs needs the whitening stem; set whiten "
                          "to a patch size, or leave whiten_bias_epochs at 0")
    if not 0 < bn_momentum <= 1 or logit_scale <= 0:
        raise CnnlabError(f"speednet: bn_momentum must be in (0, 1] and logit_scale > 0 (got "
                          f"{bn_momentum} and {logit_scale})")
    return SpeedNet([int(w) for w in widths], int(depth), int(stem), int(whiten),
                    float(bn_momentum), bool(bn_scale), bool(identity), float(logit_scale),
                    int(whiten_bias_epochs))
