"""The study's data pipeline, one image at a time, as `cnnlab bench` times it.

The study trains from torchvision's `FashionMNIST` dataset with
`Compose([ToTensor(), RandomRotation(10), RandomHorizontalFlip(), Normalize((0.5,), (0.5,))])`
and a `DataLoader`. torchvision cannot be installed beside the torch cnnlab pins, so this
module performs the same tensor operations those classes perform for a single-channel
image, in the same order: the dataset hands out a PIL image; ToTensor copies it into a
tensor and scales it; RandomRotation draws a Python float angle, builds the sampling grid
from the inverse rotation matrix (base grid × matrix, `bmm`), samples the image together
with a mask channel (nearest, zero padding) and writes the fill value where the mask
fell off; RandomHorizontalFlip draws once per image; Normalize clones and normalizes with
mean and std tensors. The result is the reference cnnlab's speed is measured against.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from cnnlab.augment import MAX_DEGREES, MEAN, STD
from cnnlab.data import ImageSet


def to_tensor(picture: Image.Image) -> torch.Tensor:
    """ToTensor for an 8-bit grayscale PIL image: (1, H, W) float32 in [0, 1]."""
    x = torch.from_numpy(np.array(picture, np.uint8, copy=True))
    x = x.view(picture.size[1], picture.size[0], 1).permute((2, 0, 1)).contiguous()
    return x.to(dtype=torch.float32).div(255)


def inverse_rotation_matrix(degrees: float) -> list[float]:
    """The 2×3 matrix that maps output pixels to input pixels (centre at the origin) for a
    counter-clockwise rotation by `degrees`."""
    radians = math.radians(-degrees)
    cos, sin = math.cos(radians), math.sin(radians)
    # Inverse of [[cos, -sin], [sin, cos]] applied about the centre, no translation.
    return [cos, sin, 0.0, -sin, cos, 0.0]


def rotation_grid(matrix: list[float], height: int, width: int) -> torch.Tensor:
    """grid_sample coordinates for `matrix`: pixel-centre base grid × matrix, normalized."""
    theta = torch.tensor(matrix, dtype=torch.float32).reshape(1, 2, 3)
    base = torch.empty(1, height, width, 3, dtype=torch.float32)
    base[..., 0].copy_(torch.linspace(-width * 0.5 + 0.5, width * 0.5 - 0.5, steps=width))
    base[..., 1].copy_(torch.linspace(-height * 0.5 + 0.5, height * 0.5 - 0.5,
                                      steps=height).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * width, 0.5 * height])
    return base.view(1, height * width, 3).bmm(scaled).view(1, height, width, 2)


def rotate_image(x: torch.Tensor, degrees: float, fill: float = 0.0) -> torch.Tensor:
    """Rotate one (C, H, W) image by `degrees`, nearest pixels, `fill` outside."""
    grid = rotation_grid(inverse_rotation_matrix(degrees), x.shape[-2], x.shape[-1])
    batch = x.unsqueeze(0)
    mask = torch.ones((1, 1, x.shape[-2], x.shape[-1]), dtype=x.dtype)
    sampled = F.grid_sample(torch.cat((batch, mask), dim=1), grid, mode="nearest",
                            padding_mode="zeros", align_corners=False)
    image, mask = sampled[:, :-1], sampled[:, -1:].expand_as(sampled[:, :-1])
    fill_image = torch.tensor([fill], dtype=x.dtype).view(1, 1, 1, 1).expand_as(image)
    outside = mask < 0.5
    image[outside] = fill_image[outside]
    return image.squeeze(0)


def random_rotation(x: torch.Tensor) -> torch.Tensor:
    angle = float(torch.empty(1).uniform_(-MAX_DEGREES, MAX_DEGREES).item())
    return rotate_image(x, angle)


def random_horizontal_flip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1) if torch.rand(1) < 0.5 else x


def normalize(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    mean = torch.as_tensor([MEAN], dtype=x.dtype)
    std = torch.as_tensor([STD], dtype=x.dtype)
    if (std == 0).any():
        raise ValueError("std must not be zero")
    return x.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))


class PerSampleDataset(Dataset):
    """Fashion-MNIST as torchvision's dataset serves it (a PIL image and an int label per
    index), with the study's train or test transforms applied image by image."""

    def __init__(self, data: ImageSet, augment: bool) -> None:
        self.images, self.labels = data.images.cpu(), data.labels.cpu()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        picture = Image.fromarray(self.images[i].numpy(), mode="L")
        x = to_tensor(picture)
        if self.augment:
            x = random_horizontal_flip(random_rotation(x))
        return normalize(x), int(self.labels[i])
