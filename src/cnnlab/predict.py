"""Classify your own pictures with a trained model.

Any PNG or JPEG becomes what the network was trained on: a 28×28 grayscale image of a light
object on a dark background, normalized like the training data.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.data import CLASSES, IMAGE_SIZE
from cnnlab.errors import CnnlabError
from cnnlab.train import load_checkpoint, model_from_checkpoint, predict_logits, prepare_model


@dataclass
class Prediction:
    image: str
    inverted: bool                 # whether a light background was turned dark
    top: list[tuple[str, float]]   # (class, probability), most likely first


def load_image(path: Path) -> Image.Image:
    """Open and fully decode `path` (an animation's first frame), upright per its EXIF.

    Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) applies, and so that
    a huge image fails up front, exceeding it is an error here, not just a warning.
    """
    if path.is_dir():
        raise CnnlabError(f"{path} is a folder; give image files (PNG or JPEG)")
    if not path.exists():
        raise CnnlabError(f"{path}: no such file; give image files (PNG or JPEG)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # positioned at frame 0
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


def predict(checkpoint: Path, paths: list[Path], invert: bool = True, top: int = 3,
            device: torch.device | None = None) -> list[Prediction]:
    """The `top` most likely classes for each picture; every picture is checked first."""
    if not 1 <= top <= len(CLASSES):
        raise CnnlabError(f"--top must be between 1 and {len(CLASSES)} (got {top})")
    inputs = [to_input(load_image(path), invert) for path in paths]
    device = device or torch.device("cpu")
    model = prepare_model(model_from_checkpoint(load_checkpoint(checkpoint), checkpoint), device)
    images = torch.stack([tensor for tensor, _ in inputs]).to(device)
    probabilities = predict_logits(model, images).softmax(1).cpu()
    results = []
    for path, (_, inverted), probs in zip(paths, inputs, probabilities, strict=True):
        values, indices = probs.topk(top)
        results.append(Prediction(str(path), inverted, [
            (CLASSES[i], p) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]))
    return results


def format_text(predictions: list[Prediction]) -> str:
    lines = []
    for p in predictions:
        classes = ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in p.top)
        lines.append(f"{p.image}{' (inverted)' if p.inverted else ''}: {classes}")
    return "\n".join(lines)


def format_json(predictions: list[Prediction]) -> str:
    return json.dumps([{**asdict(p), "top": [{"class": name, "probability": prob}
                                            for name, prob in p.top]}
                       for p in predictions], indent=2)
