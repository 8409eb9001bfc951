"""What a trained classifier learned, read from the model itself: its first filters, its
feature maps, its dead ReLU units and where it looked (Grad-CAM), for any `nn.Module` that
maps 1×28×28 images to class logits.

The network's *convolutional blocks* are its nonlinearity modules (ReLU, Sigmoid, GELU, ...:
`ACTIVATIONS`) whose output is a 4-D map (N, C, H, W), in the order one forward pass calls
them. Activation modules, not convolutions, because what a block hands on is the map after
its nonlinearity, and because a convolution is not always a module the pass calls (the custom
networks' fused stem computes conv2∘conv1 without calling either). A module called twice
counts twice ("relu", then "relu (call 2)"). Grad-CAM reads the last block: the most
abstract map that still has a position.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnnlab.augment import eval_batch
from cnnlab.data import CLASSES, IMAGE_SIZE
from cnnlab.device import as_input, eval_batch_size
from cnnlab.errors import CnnlabError
from cnnlab.inference import OnnxPredictor, Prediction, Predictor
from cnnlab.models.custom import ConvolutionalNetwork

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
               nn.SiLU, nn.Mish, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus)
ONNX_NO_GRADCAM = ("Grad-CAM needs the PyTorch model (its gradients), which an ONNX model "
                   "does not carry; give the run folder or its model.pt instead of the .onnx "
                   "file")


@dataclass
class Explanation:
    """One picture explained: what the model predicted and where it looked for it."""

    prediction: Prediction  # as `Predictor.predict` returns it; .input is what the model saw
    cam: torch.Tensor       # (28, 28) in [0, 1]: Grad-CAM for the predicted class


@dataclass
class Call:
    """One call of a module during a forward pass."""

    name: str  # the module's name in the model; "name (call 2)" for its second call
    module: nn.Module
    output: torch.Tensor


@contextmanager
def recorded_calls(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> Iterator[list[Call]]:
    """While open, every call of a module of `kinds` made by this thread appends a `Call`
    to the list yielded, in call order (a server's other threads may be running the same
    model meanwhile: their calls are not this pass's)."""
    calls: list[Call] = []
    names = {m: name for name, m in model.named_modules() if isinstance(m, kinds)}
    counts = dict.fromkeys(names, 0)
    thread = threading.get_ident()

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if threading.get_ident() != thread:
            return
        counts[module] += 1
        suffix = f" (call {counts[module]})" if counts[module] > 1 else ""
        calls.append(Call(names[module] + suffix, module, output))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _batch(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 28, 28) as the model's normalized input on its device."""
    device = next(model.parameters()).device
    return as_input(eval_batch(images.to(device)), model)


def blocks(model: nn.Module, images: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(block name, output (N, C, H, W)) of each convolutional block on uint8 `images`,
    in forward order (eval mode, no gradients)."""
    model.eval()
    with torch.no_grad(), recorded_calls(model, ACTIVATIONS) as calls:
        model(_batch(model, images))
    return [(c.name, c.output.clone()) for c in calls if c.output.dim() == 4]


def feature_maps(model: nn.Module, image: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(block name, map C×H×W) of each convolutional block for one uint8 28×28 image."""
    return [(name, out[0].float().cpu()) for name, out in blocks(model, image[None])]


def grad_cam(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None,
             batch_size: int | None = None) -> torch.Tensor:
    """Grad-CAM on the last convolutional block: for each uint8 image (N, 28, 28), where its
    map raised the `target` class's logit (default: the class predicted), upsampled to
    (N, 28, 28) and scaled to [0, 1] per image (all zero when nothing raised it).

    Channel weights are the mean gradient of the target logit over each channel's map; the
    CAM is the ReLU of the weighted sum of the maps. Eval mode; gradients are taken with
    respect to the map only, so the parameters' `.grad` stays untouched.
    """
    model.eval()
    batch_size = batch_size or eval_batch_size(next(model.parameters()).device)
    cams = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        # Gradients even inside a caller's no_grad or inference_mode, and even for a frozen
        # network: the input asks for them.
        with torch.inference_mode(False), torch.enable_grad():
            cams.append(_grad_cam_batch(model, _batch(model, chunk).requires_grad_(True),
                                        None if target is None
                                        else target[start:start + batch_size]))
    return torch.cat(cams)


def _grad_cam_batch(model: nn.Module, x: torch.Tensor,
                    target: torch.Tensor | None) -> torch.Tensor:
    with recorded_calls(model, ACTIVATIONS) as calls:
        logits = model(x)
    maps = [c.output for c in calls if c.output.dim() == 4]
    if not maps:
        raise CnnlabError("Grad-CAM needs a convolutional block (a nonlinearity whose output "
                          "is a C×H×W map); this network has none")
    chosen = logits.argmax(1) if target is None else target.to(logits.device)
    [grads] = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), maps[-1])
    weights = grads.float().mean((2, 3), keepdim=True)
    cam = F.relu((weights * maps[-1].detach().float()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                        align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).cpu()


def relu_firing(model: nn.Module, images: torch.Tensor,
                batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """For each ReLU layer, in forward order: which of its units (each output position of
    each channel, or each neuron) is > 0 on at least one of the uint8 `images`."""
    model.eval()
    batch_size = batch_size or eval_batch_size(next(model.parameters()).device)
    fired: dict[str, torch.Tensor] = {}
    for chunk in images.split(batch_size):
        with torch.no_grad(), recorded_calls(model, (nn.ReLU,)) as calls:
            model(_batch(model, chunk))
        for call in calls:
            now = (call.output > 0).any(0).cpu()
            fired[call.name] = fired[call.name] | now if call.name in fired else now
    return fired


def dead_units(model: nn.Module, images: torch.Tensor,
               batch_size: int | None = None) -> list[tuple[str, int, int]]:
    """(layer name, dead, total) for every ReLU layer: units that never fire (are never
    > 0) on any of the uint8 `images`. After a convolution a unit is a channel, dead when no
    position of it ever fires; after a fully connected layer it is a neuron."""
    result = []
    for name, fired in relu_firing(model, images, batch_size).items():
        units = fired.flatten(1).any(1) if fired.dim() == 3 else fired.flatten()
        result.append((name, int((~units).sum()), units.numel()))
    return result


def first_filters(model: nn.Module) -> torch.Tensor:
    """The filters (C, k, k) the network applies to the image first.

    That is the first convolution a forward pass calls, except for the study's custom
    networks: their conv1 is a 1×1 convolution (64 single numbers) with nothing nonlinear
    before conv2, so what they apply to the image is conv2∘conv1, one 3×3 convolution whose
    filters `ConvolutionalNetwork.stem_kernels` computes (the fused stem runs it).
    """
    if isinstance(model, ConvolutionalNetwork):
        with torch.no_grad():
            return model.stem_kernels()[0][:, 0].float().cpu()
    model.eval()
    with torch.no_grad(), recorded_calls(model, (nn.Conv2d,)) as calls:
        model(_batch(model, torch.zeros(1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)))
    if not calls or calls[0].module.in_channels != 1:
        raise CnnlabError("this network applies no nn.Conv2d to the image first, so it has "
                          "no first-layer filters to show")
    return calls[0].module.weight.detach()[:, 0].float().cpu()


def explain_pictures(predictor: Predictor,
                     pictures: Sequence[Path | bytes | Image.Image | torch.Tensor],
                     top: int = 3, *, names: list[str] | None = None, invert: bool = True
                     ) -> list[Explanation]:
    """Your own pictures (files or encoded bytes; also what `Predictor.predict` takes: PIL
    images, uint8 28×28 tensors), preprocessed as `Predictor.predict` does, with the same
    checks and one-line errors: each one's prediction and the Grad-CAM of its most likely
    class. Needs the PyTorch model: an ONNX model carries no gradients (one-line error)."""
    if isinstance(predictor, OnnxPredictor):
        raise CnnlabError(ONNX_NO_GRADCAM)
    predictions = predictor.predict(list(pictures), names, invert=invert, top=top)
    seen = torch.stack([p.input for p in predictions])
    target = torch.tensor([CLASSES.index(p.top[0][0]) for p in predictions])
    cams = grad_cam(predictor.model, seen, target)
    return [Explanation(p, cam) for p, cam in zip(predictions, cams, strict=True)]
