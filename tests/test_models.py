import pytest
import torch

from cnnlab.device import as_input, memory_format, prepare_model
from cnnlab.errors import CnnlabError
from cnnlab.models import count_macs, count_parameters, get_model, list_models
from cnnlab.models.custom import ConvolutionalNetwork

EXPECTED_PARAMETERS = {"lenet": 61_706, "alexnet": 2_780_298,
                       "custom": 4_458_826, "custom_nobn": 4_458_442}


def test_registry_holds_the_study_networks():
    assert set(EXPECTED_PARAMETERS) <= set(list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_parameter_counts_match_the_report(name):
    assert count_parameters(get_model(name)) == EXPECTED_PARAMETERS[name]


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = get_model(name)
    x = torch.randn(5, 1, 28, 28)
    out = model(x)
    assert out.shape == (5, 10)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(CnnlabError, match="lenet"):
        get_model("resnet")


def test_custom_layers_follow_the_report():
    model = ConvolutionalNetwork()
    assert model.conv1.kernel_size == (1, 1) and model.conv1.padding == (1, 1)
    assert model.pool2.padding == 1
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in get_model("custom_nobn").modules())


def test_macs_count_the_plain_network():
    assert count_macs(get_model("lenet")) == 416_520
    # custom: conv1 + conv2 at 30x30, conv3 + conv4 at 15x15, fc1, fc2
    expected = 64 * 900 + 64 * 900 * 576 + 128 * 225 * 576 + 128 * 225 * 1152 \
        + 8192 * 512 + 512 * 10
    assert count_macs(get_model("custom")) == expected


@pytest.mark.parametrize("name", list_models())
def test_every_layer_sees_the_models_memory_format(name):
    """A 1-channel batch is both NCHW and channels_last; unless its strides are spelled out,
    the first convolution hands NCHW activations to a channels_last network."""
    model = prepare_model(get_model(name), torch.device("cpu"))
    fmt = memory_format(model)
    seen = []

    def check(module, inputs):
        x = inputs[0]
        if x.dim() == 4 and x.shape[1] > 1:
            seen.append((module, x.is_contiguous(memory_format=fmt)))

    for module in model.modules():
        if not list(module.children()):
            module.register_forward_pre_hook(check)
    model(as_input(torch.randn(4, 1, 28, 28), model)).sum().backward()
    assert seen and all(ok for _, ok in seen), [m for m, ok in seen if not ok]


def test_speednet_takes_widths_and_depth():
    small = get_model("speednet", widths=[16, 32], depth=3, stem=8)
    convs = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [8, 16, 16, 16, 32, 32, 32]
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert count_macs(small) < count_macs(get_model("speednet"))
    with pytest.raises(CnnlabError, match="1 to 4"):
        get_model("speednet", widths=[8] * 5)
    with pytest.raises(CnnlabError, match="depth must be a positive integer"):
        get_model("speednet", depth=0)


def test_whitening_stem_whitens_the_patches_it_was_fitted_to(data_dir):
    from cnnlab.augment import eval_batch
    from cnnlab.data import load_split
    from cnnlab.models import fit_to_data

    images = eval_batch(load_split(data_dir, "train").images[:500])
    model = get_model("speednet", widths=[16, 32], depth=1, whiten=3)
    stem = model.stem[0]
    assert count_parameters(model) == count_parameters(get_model(
        "speednet", widths=[16, 32], depth=1, stem=18)) - 18 * 9 - 2 * 18 + 18
    # the learned stem's conv weights and BatchNorm are gone, the whitening bias is learned
    fit_to_data(model, images)
    out = stem(images) - stem.bias.view(1, -1, 1, 1)
    assert out.shape == (500, 18, 26, 26)
    # the first 9 channels are uncorrelated with unit variance (a little less for the
    # faintest directions, whose variance is comparable to eps), the rest negated
    first = out[:, :9].permute(1, 0, 2, 3).reshape(9, -1).detach()
    covariance = first @ first.T / first.shape[1]
    variances = covariance.diagonal()
    assert torch.allclose(covariance - torch.diag(variances), torch.zeros(9, 9), atol=1e-3)
    assert ((variances > 0.9) & (variances < 1 + 1e-4)).all(), variances
    assert torch.equal(out[:, 9:], -out[:, :9])
    # the filters are a buffer: saved with the model, not a trained parameter
    fresh = get_model("speednet", widths=[16, 32], depth=1, whiten=3)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.stem[0].weight, stem.weight)
    assert "stem.0.weight" not in dict(model.named_parameters())
    with pytest.raises(CnnlabError, match="whiten must be a patch size"):
        get_model("speednet", whiten=7)


def test_speednet_speed_run_options():
    torch.manual_seed(0)
    plain = get_model("speednet", widths=[8, 16], depth=2)
    torch.manual_seed(0)
    tuned = get_model("speednet", widths=[8, 16], depth=2, bn_momentum=0.4, bn_scale=False,
                      identity=True, logit_scale=0.5)
    norms = [m for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.4 and not m.weight.requires_grad for m in norms)
    assert count_parameters(plain) - count_parameters(tuned) == sum(m.num_features
                                                                    for m in norms)
    # identity init adds a centred Dirac delta to the same random filters
    convs = [(a, b) for a, b in zip(plain.modules(), tuned.modules(), strict=True)
             if isinstance(a, torch.nn.Conv2d) and a is not plain.stem[0]]
    for a, b in convs:
        difference = b.weight - a.weight
        n = min(a.in_channels, a.out_channels)
        dirac = torch.zeros_like(difference)
        dirac[:n, :, 1, 1] = torch.eye(n, a.in_channels)
        torch.testing.assert_close(difference, dirac, rtol=0, atol=1e-6)
    # the logit scale multiplies the output of otherwise equal weights
    tuned.load_state_dict(plain.state_dict())
    plain.eval(), tuned.eval()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(tuned(x), 0.5 * plain(x))
    with pytest.raises(CnnlabError, match="bn_momentum must be in"):
        get_model("speednet", bn_momentum=0)
    with pytest.raises(CnnlabError, match="whiten_bias_epochs must be 0"):
        get_model("speednet", whiten=2, whiten_bias_epochs=-1)
    with pytest.raises(CnnlabError, match="whiten_bias_epochs needs the whitening stem"):
        get_model("speednet", whiten_bias_epochs=2)
