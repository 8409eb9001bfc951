"""The bench's reference pipeline must compute what cnnlab's batched augmentation computes,
or the speed comparison would compare different work."""

import torch

from cnnlab.augment import eval_batch, rotate
from cnnlab.data import ImageSet
from cnnlab.reference import PerSampleDataset, rotate_image


def test_per_image_rotation_equals_batched_rotation():
    torch.manual_seed(0)
    images = torch.rand(40, 1, 28, 28) + 0.5  # no zeros inside, so fill pixels show
    angles = torch.linspace(-10, 10, 40)
    batched = rotate(images, angles)
    one_by_one = torch.stack([rotate_image(images[i], float(angles[i])) for i in range(40)])
    # Nearest sampling can round a pixel centre that sits exactly between two pixels
    # differently when the grid is computed in another order; allow a handful.
    differing = (batched != one_by_one).sum().item()
    assert differing <= images.numel() // 1000
    large = angles.abs() > 5
    assert (one_by_one[large, :, 0, 0] == 0).all()  # corners rotate out, get the fill


def test_rotation_direction_is_counter_clockwise():
    x = torch.zeros(1, 28, 28)
    x[0, 14, 26] = 1  # right of the centre
    out = rotate_image(x, 90.0)
    assert torch.equal(out, torch.rot90(x, 1, (-2, -1)))  # moved to the top: (1, 14)
    assert out[0, 1, 14] == 1
    assert torch.equal(rotate_image(x, -90.0), torch.rot90(x, -1, (-2, -1)))


def test_test_images_are_only_scaled_and_normalized():
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    dataset = PerSampleDataset(ImageSet(images, torch.arange(5) % 10), augment=False)
    served = torch.stack([dataset[i][0] for i in range(5)])
    assert torch.equal(served, eval_batch(images))
    assert [dataset[i][1] for i in range(5)] == [0, 1, 2, 3, 4]


def test_training_images_are_rotated_or_flipped_versions_of_the_original():
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 4:20, 6:12] = 255
    dataset = PerSampleDataset(ImageSet(image, torch.tensor([3])), augment=True)
    torch.manual_seed(0)
    served = [dataset[0][0] for _ in range(50)]
    assert len({tuple(x.flatten().tolist()) for x in served}) > 25  # a fresh draw each time
    left_bar = sum(bool(x[0, 10, 8] > 0) for x in served)
    assert 10 < left_bar < 40  # flipped about half of the time
