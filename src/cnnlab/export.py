"""ONNX export, and ONNX models run by onnxruntime behind the same `Predictor` interface.

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
from typing import Any

import torch
from torch import nn

from cnnlab import __version__
from cnnlab.augment import eval_batch
from cnnlab.data import CLASSES, IMAGE_SIZE
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write
from cnnlab.inference import Predictor
from cnnlab.models.registry import plain_path
from cnnlab.recipe import parse_recipe

INSTALL_HINT = "pip install 'cnnlab[export]'"
DEFAULT_OPSET = 18


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise CnnlabError(f"ONNX needs the {module} package: {INSTALL_HINT}") from None


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning for every torchvision operator it cannot register
    (torchvision is not used) and warns about internals; neither concerns the user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


class ImagesToLogits(nn.Module):
    """uint8 images (N, 28, 28) → logits (N, 10), preprocessing included."""

    def __init__(self, model: nn.Module, flip: bool) -> None:
        super().__init__()
        self.model, self.flip = model, flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = eval_batch(images)  # the preprocessing cnnlab trains and evaluates with
        logits = self.model(x)
        if self.flip:
            logits = (logits + self.model(x.flip(-1))) / 2
        return logits


def export_onnx(source: Path, out: Path, opset: int = DEFAULT_OPSET,
                model_code: str | None = None) -> dict[str, str]:
    """Write `source`'s model (a run folder or checkpoint) to `out`; return its metadata."""
    if out.suffix != ".onnx":
        raise CnnlabError(f"--out {out}: name the file *.onnx")
    for package in ("onnx", "onnxscript"):
        _require(package)
    predictor = Predictor.load(source, torch.device("cpu"), model_code)
    model = predictor.model.to(memory_format=torch.contiguous_format).eval()
    graph = ImagesToLogits(model, predictor.flip)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(proto.SerializeToString()))
    return metadata


class OnnxPredictor(Predictor):
    """An exported model run by onnxruntime (CPU provider), with the same interface as a
    PyTorch `Predictor`: logits, evaluate, predict."""

    def __init__(self, session: Any, source: Path) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        try:
            recipe = parse_recipe(json.loads(meta["recipe"]), str(source))
            accuracy = float(meta["test_accuracy"]) if meta.get("test_accuracy") else None
            epoch = int(meta["epoch"])
        except (KeyError, ValueError) as e:
            raise CnnlabError(f"{source} is an ONNX model but not one cnnlab exported "
                              f"(no {e} in its metadata); export it with `cnnlab export`") from e
        super().__init__(None, recipe.evaluate.flip, recipe, epoch, accuracy)
        self.session = session

    @classmethod
    def load_onnx(cls, source: Path) -> OnnxPredictor:
        ort = _require("onnxruntime")
        if not source.is_file():
            raise CnnlabError(f"{source}: no such ONNX model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            session = ort.InferenceSession(str(source), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for damaged files
            raise CnnlabError(f"{source} is not a loadable ONNX model ({type(e).__name__}); "
                              "export it again with `cnnlab export`") from e
        return cls(session, source)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def runtime(self) -> str:
        return "onnxruntime"

    def logits(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        chunks = images.cpu().split(batch_size or 1000)
        return torch.cat([torch.from_numpy(self.session.run(["logits"],
                                                            {"images": c.numpy()})[0])
                          for c in chunks])
