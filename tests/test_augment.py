import math

import pytest
import torch

from cnnlab.augment import (
    MEAN,
    STD,
    AlternatingFlip,
    Draws,
    Erase,
    Flip,
    Rotate,
    Translate,
    augment_batch,
    eval_batch,
    eval_views,
    hflip,
    rotate,
    shift,
    to_unit,
)

STUDY = [Rotate(), Flip()]


def draws(generator_seed: int = 0, **kwargs) -> Draws:
    return Draws(torch.Generator().manual_seed(generator_seed), **kwargs)


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
    out = augment_batch(batch, STUDY, draws())
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 32
    flipped = sum(o[0, 10, 7] < 0 for o in out)  # left bar pixel gone when flipped
    assert 10 < flipped < 54


def bright_angles(out: torch.Tensor) -> torch.Tensor:
    """Angle (degrees, counter-clockwise) of each image's bright pixels about the centre."""
    angles = []
    for image in out.squeeze(1):
        rows, cols = torch.nonzero(image > 0, as_tuple=True)
        y, x = 13.5 - rows.double().mean(), cols.double().mean() - 13.5
        angles.append(math.degrees(math.atan2(y, x)))
    return torch.tensor(angles)


def test_angles_stay_within_ten_degrees_and_fill_the_range():
    # A single bright pixel 12.5 px right of the centre moves along a circle by the angle
    # drawn; nearest-neighbour sampling moves it by at most half a pixel diagonally
    # (atan(0.71 / 12.5) ≈ 3.2°).
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[13:15, 26] = 255  # rows 13 and 14: centred on the centre row 13.5
    out = augment_batch(image.expand(2000, 28, 28).contiguous(), [Rotate()], draws(1))
    angles = bright_angles(out)
    assert angles.abs().max() <= 10 + 3.2
    assert angles.max() > 8 and angles.min() < -8  # the whole ±10° range is drawn
    wider = augment_batch(image.expand(2000, 28, 28).contiguous(), [Rotate(degrees=5.0)],
                          draws(1))
    assert bright_angles(wider).abs().max() <= 5 + 3.2


def test_the_study_pipeline_draws_angles_then_flips_from_one_generator():
    """Rotation draws one uniform per sample, then flip draws one: the order the study
    presets' runs were made with (their golden metrics depend on it)."""
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(5)
    u = torch.rand(32, generator=generator)
    expected = (hflip(rotate(to_unit(images), (u[:16] * 2 - 1) * 10.0), u[16:] < 0.5)
                - MEAN) / STD
    assert torch.equal(augment_batch(images, STUDY, draws(5)), expected)


def test_translate_shifts_each_sample_by_whole_pixels_within_range():
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[14, 14] = 255
    out = augment_batch(image.expand(500, 28, 28).contiguous(), [Translate(pixels=2)],
                        draws(2))
    positions = [tuple(torch.nonzero(o[0] > 0)[0].tolist()) for o in out]
    dys = {r - 14 for r, _ in positions}
    dxs = {c - 14 for _, c in positions}
    assert dys == dxs == {-2, -1, 0, 1, 2}  # every shift drawn, none beyond ±2
    assert all(len(torch.nonzero(o[0] > 0)) == 1 for o in out)  # moved, not resampled


def test_translate_fills_with_zero_or_reflects():
    x = torch.rand(64, 1, 28, 28) + 0.5
    zero = Translate(pixels=3)(x, draws(3))
    reflect = Translate(pixels=3, fill="reflect")(x, draws(3))
    assert (zero == 0).any() and not (reflect == 0).any()


def test_erase_blanks_rectangles_of_the_requested_area():
    x = torch.ones(400, 1, 28, 28)
    out = Erase(p=1.0, scale=[0.1, 0.1], ratio=[1.0, 1.0])(x, draws(4))
    erased = (out == 0).sum(dim=(1, 2, 3))
    side = round(math.sqrt(0.1 * 784))  # 9×9 squares
    assert (erased == side * side).all()
    never = Erase(p=0.0)(x, draws(4))
    assert torch.equal(never, x)
    half = Erase(p=0.5)(x, draws(4))
    share = (half == 0).flatten(1).any(1).float().mean()
    assert 0.4 < share < 0.6


def test_alternating_flip_alternates_per_sample_across_epochs():
    x = torch.rand(100, 1, 28, 28)
    indices = torch.arange(100)
    epochs = [AlternatingFlip()(x, draws(epoch, indices=indices, set_size=100, seed=7,
                                         epoch=epoch)) for epoch in (1, 2, 3)]
    flipped = [(e != x).flatten(1).any(1) for e in epochs]
    assert 30 < int(flipped[0].sum()) < 70
    assert torch.equal(flipped[1], ~flipped[0])   # epoch 2: the other way round
    assert torch.equal(flipped[2], flipped[0])     # epoch 3: as in epoch 1


@pytest.mark.parametrize("transforms", [STUDY, [Translate(), Erase()]])
def test_draws_are_a_function_of_the_generator_seed(transforms):
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    a = augment_batch(images, transforms, draws(9))
    assert torch.equal(a, augment_batch(images, transforms, draws(9)))
    assert not torch.equal(a, augment_batch(images, transforms, draws(10)))


def test_eval_batch_is_only_scaled_and_normalized():
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    expected = (images.float().unsqueeze(1) / 255 - MEAN) / STD
    assert torch.allclose(eval_batch(images), expected)
    assert torch.equal(eval_batch(images), eval_batch(images))
    assert torch.equal(augment_batch(images, [], draws()), eval_batch(images))
    assert eval_batch(torch.zeros(1, 28, 28, dtype=torch.uint8)).min() == -1


def test_shift_moves_images_diagonally_and_lets_black_background_in():
    x = eval_batch(torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8))
    background = -MEAN / STD
    down = shift(x, 2)
    assert torch.equal(down[..., 2:, 2:], x[..., :-2, :-2])
    assert (down[..., :2, :] == background).all() and (down[..., :, :2] == background).all()
    up = shift(x, -1)
    assert torch.equal(up[..., :-1, :-1], x[..., 1:, 1:])
    assert (up[..., -1, :] == background).all()
    assert torch.equal(shift(x, 0), x)


def test_test_views_are_the_batch_its_mirror_and_their_shifts():
    x = torch.randn(3, 1, 28, 28)
    assert len(eval_views(x, flip=False, pixels=0)) == 1
    plain, mirror = eval_views(x, flip=True, pixels=0)
    assert torch.equal(plain, x) and torch.equal(mirror, x.flip(-1))
    views = eval_views(x, flip=True, pixels=1)
    expected = [x, x.flip(-1), shift(x, 1), shift(x.flip(-1), 1), shift(x, -1),
                shift(x.flip(-1), -1)]
    assert len(views) == 6 and all(map(torch.equal, views, expected))
