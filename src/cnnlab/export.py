"""ONNX export: a trained model written as an ONNX file (`inference.OnnxPredictor` runs
one with onnxruntime).

The exported graph takes what the data files hold, uint8 images (N, 28, 28) with a
dynamic batch dimension, and returns logits (N, 10): scaling, normalization and the
recipe's flip averaging are inside the graph, so there is one source of preprocessing
truth. Exact fast paths (the custom networks' fused stem) are exported as the plain layers
they compute. Needs `pip install 'cnnlab[export]'` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from cnnlab import __version__
from cnnlab.augment import eval_batch, eval_views
from cnnlab.data import CLASSES, IMAGE_SIZE
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write, make_folder
from cnnlab.inference import Predictor, require_onnx_package
from cnnlab.models.registry import plain_path
from cnnlab.recipe import EvaluateSpec

DEFAULT_OPSET = 18  # also the oldest torch's exporter writes


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning for every torchvision operator it cannot register
    (torchvision is not used), onnxscript notes which converter lifts a graph past opset 25,
    and both warn about internals; none of it concerns the user."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class ImagesToLogits(nn.Module):
    """uint8 images (N, 28, 28) → logits (N, 10), preprocessing included."""

    def __init__(self, model: nn.Module, views: EvaluateSpec) -> None:
        super().__init__()
        self.model, self.views = model, views

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The preprocessing and test-time views cnnlab evaluates with (as averaged_logits,
        # without its memory-format step, which the exported graph has no use for).
        views = eval_views(eval_batch(images), self.views.flip, self.views.shift)
        return sum(self.model(v) for v in views) / len(views)


def export_onnx(source: Path, out: Path, opset: int = DEFAULT_OPSET,
                model_code: str | None = None) -> dict[str, str]:
    """Write `source`'s model (a run folder or checkpoint) to `out`; return its metadata."""
    if out.suffix != ".onnx":
        raise CnnlabError(f"--out {out}: name the file *.onnx (or *.pt for the weights)")
    refuse_onnx_source(source)
    onnx = require_onnx_package("onnx")
    require_onnx_package("onnxscript")
    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise CnnlabError(f"--opset must be between {DEFAULT_OPSET}, the oldest torch's "
                          f"exporter writes, and {newest}, the newest the installed onnx "
                          f"knows (got {opset})")
    make_folder(out.parent, "the folder of --out")
    predictor = Predictor.load(source, torch.device("cpu"), model_code)
    model = predictor.model.to(memory_format=torch.contiguous_format).eval()
    graph = ImagesToLogits(model, predictor.views)
    example = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    with torch.no_grad(), plain_path(model), _quiet_exporter():
        # torch's torch.export-based exporter (its default since 2.9), chosen explicitly.
        program = torch.onnx.export(graph, (example,), dynamo=True, opset_version=opset,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    proto = program.model_proto
    metadata = {
        "classes": json.dumps(CLASSES),
        "recipe": json.dumps(predictor.recipe.to_dict()),
        "test_accuracy": "" if predictor.test_acc is None else repr(predictor.test_acc),
        "epoch": str(predictor.epoch),
        "cnnlab_version": __version__,
        "input": "uint8 images (batch, 28, 28), light object on black, as in Fashion-MNIST",
        "output": "logits (batch, 10), classes in the order of 'classes'",
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write(out, lambda f: f.write(proto.SerializeToString()))
    return metadata


def refuse_onnx_source(source: Path) -> None:
    """Export reads trained weights; an exported .onnx model holds none it can re-export."""
    if Path(source).suffix == ".onnx":
        raise CnnlabError(f"{source} is already an ONNX model; export from its run folder "
                          "or .pt checkpoint")
