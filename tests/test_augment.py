import torch

from cnnlab.augment import MEAN, STD, eval_batch, hflip, rotate, train_batch


def test_rotation_by_90_degrees_equals_rot90():
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(rotate(x, torch.full((4,), 90.0)), torch.rot90(x, 1, (-2, -1)))
    assert torch.equal(rotate(x, torch.full((4,), -90.0)), torch.rot90(x, -1, (-2, -1)))
    assert torch.equal(rotate(x, torch.zeros(4)), x)


def test_rotation_uses_nearest_pixels_and_zero_fill():
    x = torch.rand(2, 1, 28, 28) + 0.5  # no zeros inside the image
    out = rotate(x, torch.tensor([10.0, -7.0]))
    values = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values  # nearest: no interpolated values
    assert (out[:, :, 0, 0] == 0).all()  # corners rotate out and are filled with 0


def test_flip_equals_torch_flip_per_sample():
    x = torch.rand(3, 1, 28, 28)
    out = hflip(x, torch.tensor([True, False, True]))
    assert torch.equal(out[0], torch.flip(x[0], (-1,)))
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2], torch.flip(x[2], (-1,)))


def test_each_sample_draws_its_own_angle_and_flip():
    # One asymmetric image repeated: different outputs can only come from different draws.
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[4:20, 6:12] = 255
    batch = image.expand(64, 28, 28).contiguous()
    out = train_batch(batch, torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 32
    flipped = sum(o[0, 10, 7] < 0 for o in out)  # left bar pixel gone when flipped
    assert 10 < flipped < 54


def test_angles_stay_within_ten_degrees():
    # A single bright pixel far from the centre moves along a circle by the angle drawn.
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[14, 26] = 255
    out = train_batch(image.expand(2000, 28, 28).contiguous(), torch.Generator().manual_seed(1))
    bright = out.squeeze(1) > 0
    rows, cols = torch.nonzero(bright, as_tuple=True)[1:]
    # |angle| ≤ 10° keeps the pixel within ±2.5 rows of the centre row (radius ≈ 12.5).
    assert (rows - 13.5).abs().max() <= 3


def test_eval_batch_is_only_scaled_and_normalized():
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    expected = (images.float().unsqueeze(1) / 255 - MEAN) / STD
    assert torch.allclose(eval_batch(images), expected)
    assert torch.equal(eval_batch(images), eval_batch(images))
    assert eval_batch(torch.zeros(1, 28, 28, dtype=torch.uint8)).min() == -1
