"""The custom networks' fused stem computes exactly what the plain layers compute."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cnnlab.augment import Draws, Flip, Rotate, augment_batch
from cnnlab.device import as_input, prepare_model
from cnnlab.models import get_model
from cnnlab.models.registry import plain_path


def twins(name: str):
    torch.manual_seed(0)
    fused = get_model(name)
    plain = copy.deepcopy(fused)
    plain.fused_stem = False
    return fused, plain


@pytest.mark.parametrize("name", ["custom", "custom_nobn"])
@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_outputs_and_every_gradient_match(name, train_mode, channels_last):
    fused, plain = twins(name)
    assert fused.fused_stem and not plain.fused_stem
    x = torch.randn(16, 1, 28, 28)
    if channels_last:  # the layout training uses, which takes its own branch in the stem
        fused, plain = (prepare_model(m, torch.device("cpu")) for m in (fused, plain))
        x = as_input(x, fused)
    fused.train(train_mode)
    plain.train(train_mode)
    torch.manual_seed(1)  # same dropout masks on both sides
    out_fused = fused(x)
    torch.manual_seed(1)
    out_plain = plain(x)
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-4, atol=1e-5)
    out_fused.square().sum().backward()
    out_plain.square().sum().backward()
    # Absolute tolerance from the largest gradients: with BatchNorm in train mode the true
    # gradients of conv2.bias and conv4.bias are zero (BN removes any per-channel shift), so
    # both sides there hold only rounding noise; and float32 rounding through BN leaves a
    # few conv4.weight entries 1.2e-4 × that tensor's largest gradient apart on an AVX2
    # EPYC (its oneDNN kernels sum in another order than AVX-512 ones). Exactness itself is
    # shown in float64 by test_training_steps_give_the_same_losses.
    scale = max(p.grad.abs().max().item() for p in plain.parameters())
    for (pname, a), (_, b) in zip(fused.named_parameters(), plain.named_parameters(),
                                  strict=True):
        atol = max(1e-5 * scale, 5e-4 * b.grad.abs().max().item())
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=atol, msg=pname)


def test_state_dicts_load_in_both_directions():
    fused, plain = twins("custom")
    assert list(fused.state_dict()) == list(plain.state_dict())
    fresh_plain = get_model("custom")
    fresh_plain.fused_stem = False
    fresh_plain.load_state_dict(fused.state_dict())
    get_model("custom").load_state_dict(plain.state_dict())


def test_plain_path_switches_the_fast_path_off_and_back():
    model = get_model("custom")
    with plain_path(model):
        assert not model.fused_stem
    assert model.fused_stem


def test_training_steps_give_the_same_losses(data_dir):
    """Real Adam steps of the preset's recipe on augmented Fashion-MNIST from one seed and
    state, in the channels_last layout training uses. In float64: at lr 0.003 the loss
    jumps to ~12 after the first step, and float32 rounding differences between any two
    ways of computing the same network (even the plain path in NCHW vs channels_last) grow
    to ~0.3 % within six steps, which would hide a real discrepancy."""
    from cnnlab.data import load_split

    data = load_split(data_dir, "train").head(32 * 4)
    fused, plain = twins("custom")
    fused, plain = (prepare_model(m, torch.device("cpu")).double() for m in (fused, plain))
    losses = {}
    for label, model in (("fused", fused), ("plain", plain)):
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        losses[label] = []
        for index in torch.arange(len(data.labels)).split(32):
            x = augment_batch(data.images[index], [Rotate(), Flip()], Draws(generator))
            x = as_input(x.double(), model)
            loss = F.cross_entropy(model(x), data.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[label].append(loss.item())
    assert losses["fused"] == pytest.approx(losses["plain"], rel=1e-9)
