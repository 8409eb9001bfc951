"""Batched per-sample augmentation and normalization, run on the training device.

A recipe's `augment` is an ordered list of transforms. Each works on a whole batch of
float images in [0, 1] and draws its own random parameters for every sample from the
epoch's generator, in list order, so the draws are a function of (seed, epoch) and a
resumed run repeats them exactly. The study's pipeline (ToTensor → RandomRotation(10) →
RandomHorizontalFlip → Normalize((0.5,), (0.5,))) is `rotate` then `flip`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cnnlab.spec import PROBABILITY, Each, OneOf, Range, SpecError, build, key

MEAN = 0.5
STD = 0.5
MAX_DEGREES = 10.0  # the study's RandomRotation(10)


@dataclass
class Draws:
    """What a transform may draw from: the epoch's generator, and for derandomized
    transforms the samples' indices in the training set (of `set_size` images), the run's
    seed and the epoch."""

    generator: torch.Generator
    indices: torch.Tensor | None = None
    set_size: int = 0
    seed: int = 0
    epoch: int = 1

    def uniform(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, device=device)


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


@dataclass
class Rotate:
    """torchvision's RandomRotation: every sample is rotated by its own angle, uniform in
    ±degrees, nearest-neighbour, zero fill."""

    NAME: ClassVar[str] = "rotate"
    degrees: float = key(MAX_DEGREES, "largest angle, drawn uniformly in ±degrees",
                         Range(0, 180))

    def __call__(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        angles = (draws.uniform(len(x), x.device) * 2 - 1) * self.degrees
        return rotate(x, angles)


@dataclass
class Flip:
    """torchvision's RandomHorizontalFlip, drawn per sample."""

    NAME: ClassVar[str] = "flip"
    p: float = key(0.5, "probability of mirroring a sample", PROBABILITY)

    def __call__(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        return hflip(x, draws.uniform(len(x), x.device) < self.p)


@functools.lru_cache(maxsize=4)
def _first_epoch_flips(seed: int, size: int, device: str) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(size, generator=generator, device=device) < 0.5


@dataclass
class AlternatingFlip:
    """The derandomized flip of the CIFAR-10 speed runs: each sample gets a fixed random
    flip from the seed in odd epochs and the opposite in even ones, so over any two epochs
    every image is seen once each way."""

    NAME: ClassVar[str] = "alternating_flip"

    def __call__(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        if draws.indices is None:
            raise ValueError("alternating_flip needs the samples' indices")
        base = _first_epoch_flips(draws.seed, draws.set_size, str(x.device))
        flip = base[draws.indices] ^ (draws.epoch % 2 == 0)
        return hflip(x, flip)


@dataclass
class Translate:
    """Random translation by whole pixels, each sample its own shift in ±pixels on both
    axes: the same as a random crop from the image padded by `pixels`."""

    NAME: ClassVar[str] = "translate"
    pixels: int = key(2, "largest shift in pixels along each axis", Range(0, 14))
    fill: str = key("zero", "what enters at the border", OneOf(("zero", "reflect")))

    def __call__(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        n, _, height, width = x.shape
        p = self.pixels
        shifts = (draws.uniform(2 * n, x.device) * (2 * p + 1)).floor().long().view(2, n)
        mode = "constant" if self.fill == "zero" else "reflect"
        padded = F.pad(x, (p, p, p, p), mode=mode)
        rows = torch.arange(height, device=x.device) + shifts[0, :, None]   # (N, H)
        cols = torch.arange(width, device=x.device) + shifts[1, :, None]    # (N, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@dataclass
class Erase:
    """Random erasing (cutout when scale is fixed): with probability p a rectangle of
    random area and aspect ratio at a random place is set to `value`."""

    NAME: ClassVar[str] = "erase"
    p: float = key(0.5, "probability of erasing a rectangle in a sample", PROBABILITY)
    scale: list[float] = key([0.02, 0.25], "range of the erased area, as a fraction of "
                             "the image", Each(Range(0, 1, low_open=True), 2))
    ratio: list[float] = key([0.3, 3.3], "range of the rectangle's aspect ratio "
                             "(height / width), drawn log-uniformly",
                             Each(Range(0, low_open=True), 2))
    value: float = key(0.0, "pixel value written into the rectangle (0 = black)",
                       PROBABILITY)

    def validate(self, path: str) -> None:
        for name in ("scale", "ratio"):
            low, high = getattr(self, name)
            if low > high:
                raise SpecError(f"{path}.{name} = {[low, high]}: the first value must not "
                                "exceed the second")

    def __call__(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        n, _, height, width = x.shape
        u = draws.uniform(5 * n, x.device).view(5, n)
        area = height * width * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        ratio = torch.exp(log_low + u[1] * (log_high - log_low))
        h = torch.sqrt(area * ratio).round().clamp(1, height)
        w = torch.sqrt(area / ratio).round().clamp(1, width)
        top = (u[2] * (height - h + 1)).floor()
        left = (u[3] * (width - w + 1)).floor()
        ys = torch.arange(height, device=x.device).view(1, height, 1)
        xs = torch.arange(width, device=x.device).view(1, 1, width)
        inside = ((ys >= top.view(-1, 1, 1)) & (ys < (top + h).view(-1, 1, 1))
                  & (xs >= left.view(-1, 1, 1)) & (xs < (left + w).view(-1, 1, 1)))
        erase = inside & (u[4] < self.p).view(-1, 1, 1)
        return x.masked_fill(erase.unsqueeze(1), self.value)


TRANSFORMS: dict[str, type] = {cls.NAME: cls for cls in (Rotate, Flip, AlternatingFlip,
                                                          Translate, Erase)}
STUDY_AUGMENT = [{"name": "rotate", "degrees": MAX_DEGREES}, {"name": "flip", "p": 0.5}]


def parse_transforms(value: Any, path: str) -> list[Any]:
    """A recipe's `augment` list (tables with a `name` and that transform's keys)."""
    if not isinstance(value, list):
        raise SpecError(f"{path} = {value!r}: expected a list of tables like "
                        '{ name = "flip" }')
    transforms = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or item["name"] not in TRANSFORMS:
            name = item.get("name") if isinstance(item, dict) else item
            raise SpecError(f"{where}: unknown transform {name!r}; choose from: "
                            f"{', '.join(TRANSFORMS)}")
        settings = {k: v for k, v in item.items() if k != "name"}
        transforms.append(build(TRANSFORMS[item["name"]], settings, where))
    return transforms


def augment_batch(images: torch.Tensor, transforms: list[Any], draws: Draws) -> torch.Tensor:
    """uint8 images → augmented, normalized float batch."""
    x = to_unit(images)
    for transform in transforms:
        x = transform(x, draws)
    return normalize(x)


def eval_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → normalized float batch; test-time data is never augmented."""
    return normalize(to_unit(images))


def shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """A normalized batch moved `pixels` down and right (up and left when negative), the
    black background entering at the border."""
    p = abs(pixels)
    padded = F.pad(x, (p, p, p, p), value=-MEAN / STD)
    start = p - pixels
    return padded[..., start:start + x.shape[-2], start:start + x.shape[-1]]


def eval_views(x: torch.Tensor, flip: bool, pixels: int) -> list[torch.Tensor]:
    """The views whose logits test-time augmentation averages: the batch, its mirror image
    with `flip`, and with `pixels` > 0 each of those shifted by that much diagonally both
    ways."""
    views = [x, x.flip(-1)] if flip else [x]
    if pixels:
        views += [shift(v, d) for d in (pixels, -pixels) for v in views]
    return views
