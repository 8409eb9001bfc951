"""Batched per-sample augmentation and normalization, run on the training device.

This is the study's torchvision pipeline (ToTensor → RandomRotation(10) →
RandomHorizontalFlip → Normalize((0.5,), (0.5,))) done on a whole batch at once, with a
fresh random angle and flip for every sample, as the per-image transforms draw them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEAN = 0.5
STD = 0.5
MAX_DEGREES = 10.0


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) → float32 (N, 1, H, W) in [0, 1], like ToTensor."""
    return images.unsqueeze(1).float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre by its own angle (counter-clockwise for positive
    angles, as torchvision does), nearest-neighbour sampling, zero fill."""
    radians = degrees.to(x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # affine_grid maps output coordinates to input coordinates: the inverse rotation.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images where `flip` (a bool per sample) is set."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def train_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 images → augmented, normalized float batch; each sample draws its own
    angle uniformly in ±10° and its own flip with p = 0.5."""
    n = len(images)
    degrees = (torch.rand(n, generator=generator, device=images.device) * 2 - 1) * MAX_DEGREES
    flip = torch.rand(n, generator=generator, device=images.device) < 0.5
    return normalize(hflip(rotate(to_unit(images), degrees), flip))


def eval_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → normalized float batch; test-time data is never augmented."""
    return normalize(to_unit(images))
