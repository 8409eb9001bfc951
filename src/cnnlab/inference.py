"""Inference with a trained model: the `Predictor` (PyTorch, or onnxruntime for an exported
model), and your own pictures turned into what the network was trained on (a 28×28
grayscale image of a light object on a dark background, normalized like the training data).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from cnnlab.augment import eval_batch, eval_views
from cnnlab.checkpoint import inference_weights, load_checkpoint
from cnnlab.data import CLASSES, IMAGE_SIZE, ImageSet
from cnnlab.device import as_input, eval_batch_size, prepare_model
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.recipe import EvaluateSpec, Recipe, from_record, parse_recipe

ONNX_INSTALL_HINT = "pip install 'cnnlab[export]'"


@dataclass
class Prediction:
    image: str
    inverted: bool                 # whether a light background was turned dark
    top: list[tuple[str, float]]   # (class, probability), most likely first
    input: torch.Tensor            # the uint8 28×28 image the model saw


def load_image(source: Path | bytes, name: str | None = None) -> Image.Image:
    """Open and fully decode a file or encoded bytes (an animation's first frame), upright
    per its EXIF.

    Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) applies, and so that
    a huge image fails up front, exceeding it is an error here, not just a warning.
    """
    path = name or (str(source) if isinstance(source, Path) else "image")
    if isinstance(source, Path):
        if source.is_dir():
            raise CnnlabError(f"{path} is a folder; give image files (PNG or JPEG)")
        if not source.exists():
            raise CnnlabError(f"{path}: no such file; give image files (PNG or JPEG)")
    elif not source:
        raise CnnlabError(f"{path}: empty; give a PNG or JPEG")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
            with opened as image:  # positioned at frame 0
                image.load()
                return ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise CnnlabError(f"{path}: too large ({e}); scale it down first") from e
    except UnidentifiedImageError as e:
        raise CnnlabError(f"{path} is not an image Pillow can read; give a PNG or JPEG") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise CnnlabError(f"{path}: unreadable or truncated image ({e}); "
                          "give a complete PNG or JPEG") from e


def to_gray(image: Image.Image) -> np.ndarray:
    """8-bit grayscale (H, W); transparent pixels become background.

    With transparency there is no background colour to look at, so the transparent part is
    filled with the colour that contrasts with the opaque part: white behind a dark object,
    black behind a light one.
    """
    if image.mode.startswith("I"):  # 16-bit PNG: scale to 8 bits (Pillow would clip)
        return (np.asarray(image, dtype=np.float32) / 257).clip(0, 255).round().astype(np.uint8)
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return np.asarray(image.convert("RGB").convert("L"))
    rgba = image.convert("RGBA")
    gray = np.asarray(rgba.convert("L"), dtype=np.float32)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    light_object = (gray * alpha).sum() > 127.5 * alpha.sum()
    filled = gray * alpha + (0 if light_object else 255) * (1 - alpha)
    return filled.round().astype(np.uint8)


def to_input(image: Image.Image, invert: bool = True) -> tuple[torch.Tensor, bool]:
    """A uint8 (28, 28) tensor in Fashion-MNIST's look, and whether it was inverted.

    The picture is padded to a square with its background colour (the median of its border
    pixels) so the aspect ratio survives the resize; a light background is inverted
    unless `invert` is False.
    """
    gray = to_gray(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = int(np.median(border))
    height, width = gray.shape
    side = max(height, width)
    square = np.full((side, side), background, dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = gray
    small = np.asarray(Image.fromarray(square).resize((IMAGE_SIZE, IMAGE_SIZE),
                                                      Image.Resampling.LANCZOS))
    inverted = invert and background > 127
    return torch.from_numpy(255 - small if inverted else small.copy()), inverted


def averaged_logits(model: nn.Module, x: torch.Tensor, views: EvaluateSpec) -> torch.Tensor:
    """The model's logits for a normalized batch, averaged over the recipe's test-time
    views (none, the mirror image, shifts): the one definition training evaluation,
    prediction and the exported ONNX graph share."""
    batches = eval_views(x, views.flip, views.shift)
    return sum(model(as_input(v, model)) for v in batches) / len(batches)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, views: EvaluateSpec | None = None,
                   batch_size: int | None = None) -> torch.Tensor:
    """Logits for uint8 images (N, 28, 28), in eval mode, averaged over the test-time
    `views` when given."""
    model.eval()
    views = views or EvaluateSpec()
    batch_size = batch_size or eval_batch_size(images.device)
    return torch.cat([averaged_logits(model, eval_batch(chunk), views)
                      for chunk in images.split(batch_size)])


class Predictor:
    """A trained model ready for inference: loaded once, on its device, in eval mode, with
    the preprocessing it was trained with. Training evaluation, `cnnlab evaluate`,
    `cnnlab predict` and the report all go through it."""

    def __init__(self, model: nn.Module, views: EvaluateSpec | None = None,
                 recipe: Recipe | None = None, epoch: int | None = None,
                 test_acc: float | None = None) -> None:
        self.model, self.views, self.recipe = model, views or EvaluateSpec(), recipe
        self.epoch, self.test_acc = epoch, test_acc  # as recorded when it was saved

    @classmethod
    def load(cls, source: Path, device: torch.device | None = None,
             model_code: str | None = None) -> Predictor:
        """From a run folder, a checkpoint file (the recipe's reported weights: its weight
        average when it keeps one) or an exported .onnx model (run by onnxruntime)."""
        source = Path(source)
        if source.suffix == ".onnx":
            return OnnxPredictor.load_onnx(source)
        state = load_checkpoint(source)
        recipe = from_record(state, str(source))
        model = create_model(recipe.model.name, recipe.model.args, model_code)
        try:
            model.load_state_dict(inference_weights(state))
        except RuntimeError as e:
            raise CnnlabError(f"{source}: its weights do not fit model {recipe.model.name!r} "
                              "(a checkpoint of another architecture?)") from e
        model = prepare_model(model, device or torch.device("cpu"))
        metrics = state["metrics"]
        return cls(model, recipe.evaluate, recipe, state["epoch"],
                   metrics[-1]["test_acc"] if metrics else None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def runtime(self) -> str:
        return "torch"

    def logits(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        return predict_logits(self.model, images.to(self.device), self.views, batch_size)

    def evaluate(self, data: ImageSet, batch_size: int | None = None) -> tuple[float, float]:
        """Mean cross-entropy (no label smoothing, so recipes compare) and accuracy."""
        loss, acc, _ = self.evaluate_predicted(data, batch_size)
        return loss, acc

    def evaluate_predicted(self, data: ImageSet, batch_size: int | None = None
                           ) -> tuple[float, float, torch.Tensor]:
        """`evaluate`, and the predicted class of every image (on the CPU)."""
        logits = self.logits(data.images, batch_size)
        labels = data.labels.to(logits.device)
        predicted = logits.argmax(1)
        loss = F.cross_entropy(logits, labels).item()
        acc = (predicted == labels).float().mean().item()
        return loss, acc, predicted.cpu()

    def predict(self, pictures: list[Path | bytes | Image.Image | torch.Tensor],
                names: list[str] | None = None, invert: bool = True,
                top: int = 3) -> list[Prediction]:
        """The `top` most likely classes of each picture (a file, encoded bytes, a PIL
        image, or a uint8 28×28 tensor already in Fashion-MNIST's look); every picture is
        checked before any is classified."""
        if not 1 <= top <= len(CLASSES):
            raise CnnlabError(f"--top must be between 1 and {len(CLASSES)} (got {top})")
        names = names or [str(p) if isinstance(p, Path) else f"image {i}"
                          for i, p in enumerate(pictures)]
        inputs = []
        for picture, name in zip(pictures, names, strict=True):
            if isinstance(picture, torch.Tensor):
                if picture.shape != (IMAGE_SIZE, IMAGE_SIZE) or picture.dtype != torch.uint8:
                    raise CnnlabError(f"{name}: a tensor input must be uint8 of shape 28×28")
                inputs.append((picture, False))
                continue
            image = picture if isinstance(picture, Image.Image) else load_image(picture, name)
            inputs.append(to_input(image, invert))
        images = torch.stack([tensor for tensor, _ in inputs])
        probabilities = self.logits(images).softmax(1).cpu()
        results = []
        for name, (seen, inverted), probs in zip(names, inputs, probabilities, strict=True):
            values, indices = probs.topk(top)
            results.append(Prediction(name, inverted, [
                (CLASSES[i], p) for p, i in zip(values.tolist(), indices.tolist(),
                                                strict=True)], seen))
        return results


class OnnxPredictor(Predictor):
    """An exported model run by onnxruntime (CPU provider), with the same interface as a
    PyTorch `Predictor`: logits, evaluate, predict."""

    def __init__(self, session: Any, source: Path) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        try:
            recipe = parse_recipe(json.loads(meta["recipe"]), str(source))
            accuracy = float(meta["test_accuracy"]) if meta.get("test_accuracy") else None
            epoch = int(meta["epoch"])
        except KeyError as e:
            raise CnnlabError(f"{source} is an ONNX model but not one cnnlab exported "
                              f"(no {e} in its metadata); export it with `cnnlab export`") from e
        except ValueError as e:
            raise CnnlabError(f"{source}: its cnnlab metadata is damaged ({e}); export it "
                              "again with `cnnlab export`") from e
        super().__init__(None, recipe.evaluate, recipe, epoch, accuracy)
        self.session = session

    @classmethod
    def load_onnx(cls, source: Path) -> OnnxPredictor:
        ort = require_onnx_package("onnxruntime")
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


def require_onnx_package(module: str) -> Any:
    """Import one of the optional ONNX packages, or say how to install them."""
    try:
        return __import__(module)
    except ImportError:
        raise CnnlabError(f"ONNX needs the {module} package: {ONNX_INSTALL_HINT}") from None


def format_text(predictions: list[Prediction]) -> str:
    lines = []
    for p in predictions:
        classes = ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in p.top)
        lines.append(f"{p.image}{' (inverted)' if p.inverted else ''}: {classes}")
    return "\n".join(lines)


def format_json(predictions: list[Prediction]) -> str:
    return json.dumps([{"image": p.image, "inverted": p.inverted,
                        "top": [{"class": name, "probability": prob} for name, prob in p.top]}
                       for p in predictions], indent=2)
