"""What the networks learned: the study report's section built from each recipe's saved model
(first-layer filters, feature maps per class, dead ReLUs, Grad-CAM over mistakes), and the
figures `cnnlab explain` writes for single pictures.

Every figure here is computed from a model (cnnlab.explain), so this module sits above the
inference code, unlike cnnlab.report.figures, which `cnnlab train` imports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cnnlab.data import CLASSES, ImageSet, load_split
from cnnlab.errors import CnnlabError
from cnnlab.explain import blocks, dead_units, first_filters, grad_cam
from cnnlab.inference import Predictor
from cnnlab.models.custom import ConvolutionalNetwork
from cnnlab.report.document import Document
from cnnlab.runs import Run, RunFolder

MAX_GRADCAM = 16      # misclassified test images per Grad-CAM grid
CLASS_CHANNELS = 4    # channels per block in the report's per-class feature maps
IMAGE_CHANNELS = 16   # channels per block in `cnnlab explain`'s feature maps
# The BatchNorm ablation's recipes, whose dead ReLUs show how a no-BN network collapses.
DEAD_RELU_RECIPES = ("custom", "custom_nobn", "custom_nobn_lr1e-3")


# --------------------------------------------------------------------------- figures
# Many small maps are drawn as one mosaic image per axes: one axes per map made a figure
# of a hundred maps take seconds to lay out.

FEATURE_COLORS = colormaps["viridis"].with_extremes(bad="white")
FILTER_COLORS = colormaps["RdBu_r"].with_extremes(bad="white")


def mosaic(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    """Equal-sized 2-D tiles in a grid, row by row, one NaN pixel (the background) apart."""
    height, width = tiles[0].shape
    rows = -(-len(tiles) // cols)
    out = np.full((rows * (height + 1) - 1, cols * (width + 1) - 1), np.nan)
    for k, tile in enumerate(tiles):
        top, left = (k // cols) * (height + 1), (k % cols) * (width + 1)
        out[top:top + height, left:left + width] = tile
    return out


def scaled(values: torch.Tensor) -> np.ndarray:
    """A feature map stretched to [0, 1] on its own (a constant map is all 0)."""
    values = values.float()
    low, span = values.min(), values.max() - values.min()
    return ((values - low) / span if span > 0 else values * 0).numpy()


def _image(ax: Axes, image: torch.Tensor, title: str = "", fontsize: float = 7) -> None:
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")


def _overlay(ax: Axes, image: torch.Tensor, cam: torch.Tensor, title: str,
             fontsize: float = 7) -> None:
    """The 28×28 image with its Grad-CAM laid over it (red: where the class's evidence is)."""
    _image(ax, image, title, fontsize)
    ax.imshow(cam.numpy(), cmap="jet", vmin=0, vmax=1, alpha=0.45, interpolation="bilinear")


def strongest(maps: torch.Tensor, count: int) -> list[int]:
    """The `count` channels with the largest mean activation over maps (..., C, H, W), the
    strongest first (ties: the lower channel)."""
    means = maps.float().mean(dim=(-2, -1)).reshape(-1, maps.shape[-3]).mean(0)
    return sorted(range(len(means)), key=lambda c: (-means[c].item(), c))[:count]


def gradcam_figure(title: str, image: torch.Tensor, cam: torch.Tensor) -> Figure:
    """One picture as the model saw it and with its Grad-CAM over it."""
    fig = Figure(figsize=(5, 2.9), dpi=100, layout="constrained")
    fig.suptitle(title, fontsize=9)
    seen, looked = fig.subplots(1, 2)
    _image(seen, image, "what the model saw (28×28)", 8)
    _overlay(looked, image, cam, "Grad-CAM: where it looked", 8)
    return fig


def features_figure(title: str, image: torch.Tensor,
                    maps: list[tuple[str, torch.Tensor]]) -> Figure:
    """One picture's feature maps: a row per convolutional block, its strongest channels
    (each on its own colour scale)."""
    fig = Figure(figsize=(12, 1.3 * (len(maps) + 1) + 0.3), dpi=90, layout="constrained")
    fig.suptitle(title, fontsize=9)
    axes = fig.subplots(len(maps) + 1, 1, squeeze=False)[:, 0]
    _image(axes[0], image, "input", 8)
    for ax, (name, values) in zip(axes[1:], maps, strict=True):
        channels = strongest(values, IMAGE_CHANNELS)
        shown = (f"the {len(channels)} strongest" if len(channels) < len(values)
                 else "strongest first")
        ax.imshow(mosaic([scaled(values[c]) for c in channels], IMAGE_CHANNELS),
                  cmap=FEATURE_COLORS, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{name}: {len(values)} channels of {values.shape[1]}×{values.shape[2]}, "
                     f"{shown}: {', '.join(map(str, channels))}", fontsize=8)
        ax.axis("off")
    return fig


def filters_figure(title: str, filters: torch.Tensor) -> Figure:
    """Each filter of the first layer on its own symmetric colour scale (red +, blue −)."""
    cols = int(np.ceil(np.sqrt(len(filters))))
    bound = filters.flatten(1).abs().amax(1).clamp_min(1e-12)[:, None, None]
    tiles = list((filters / bound).numpy())
    fig = Figure(figsize=(cols * 0.5 + 0.6, -(-len(filters) // cols) * 0.5 + 0.7), dpi=90,
                 layout="constrained")
    ax = fig.subplots()
    ax.imshow(mosaic(tiles, cols), cmap=FILTER_COLORS, vmin=-1, vmax=1,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return fig


def class_features_figure(title: str, data: ImageSet,
                          maps: list[tuple[str, torch.Tensor]]) -> Figure:
    """A row per image (one per class), a column group per block: the block's channels that
    are strongest over these images, the same channels in every row."""
    chosen = [(name, values, strongest(values, CLASS_CHANNELS)) for name, values in maps]
    widths = [1] + [len(channels) for _, _, channels in chosen]
    fig = Figure(figsize=(sum(widths) * 0.75 + 1, len(data) * 0.75 + 0.8), dpi=80,
                 layout="constrained")
    fig.suptitle(title, fontsize=9)
    axes = fig.subplots(1, len(widths), width_ratios=widths)
    axes[0].imshow(mosaic(list(data.images.float().numpy()), 1), cmap="gray", vmin=0,
                   vmax=255, interpolation="nearest", aspect="auto")
    axes[0].set_yticks([29 * i + 13.5 for i in range(len(data))],
                       [CLASSES[int(label)] for label in data.labels], fontsize=7)
    axes[0].set_xticks([])
    axes[0].set_title("input", fontsize=7)
    for ax, (name, values, channels) in zip(axes[1:], chosen, strict=True):
        tiles = [scaled(values[i, c]) for i in range(len(data)) for c in channels]
        ax.imshow(mosaic(tiles, len(channels)), cmap=FEATURE_COLORS, vmin=0, vmax=1,
                  interpolation="nearest", aspect="auto")
        ax.set_title(f"{name}\nchannels {', '.join(map(str, channels))}", fontsize=7)
        ax.axis("off")
    return fig


def gradcam_grid_figure(title: str, images: torch.Tensor, cams: torch.Tensor,
                        true: list[int], predicted: list[int]) -> Figure:
    cols = 8
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(cols * 1.45, rows * 1.75 + 0.4), dpi=90, layout="constrained")
    fig.suptitle(title, fontsize=9)
    for k, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        ax.axis("off")
        if k < len(images):
            _overlay(ax, images[k], cams[k],
                     f"true: {CLASSES[true[k]]}\npred: {CLASSES[predicted[k]]}", 6)
    return fig


# --------------------------------------------------------------------------- the section

def model_run(runs: list[Run]) -> Run | None:
    """The lowest-seed finished run whose folder keeps a model (model.pt or last.pt)."""
    return next((r for r in runs if r.complete and RunFolder(r.path).model_source.is_file()),
                None)


def first_of_each_class(labels: torch.Tensor) -> list[int]:
    """The index of the first image of each class present, in class order."""
    return [int((labels == c).nonzero()[0]) for c in range(len(CLASSES)) if (labels == c).any()]


def learned_section(doc: Document, groups: dict[str, list[Run]], data_dir: Path,
                    folder: Path, heading: str) -> None:
    """Per recipe, from its saved model: first-layer filters, feature maps of one test image
    per class, Grad-CAM over misclassified test images; then the ablation's dead ReLUs."""
    doc.heading(2, heading)
    doc.para(f"Computed from each recipe's saved model (the lowest seed whose finished run "
             f"folder keeps model.pt or last.pt) on the test set; `cnnlab report {folder}` "
             "redraws every figure and table here, and `cnnlab explain RUN --test-images "
             "LIST` draws a single test image's feature maps and Grad-CAM.")
    try:
        test_set = load_split(data_dir, "test")
    except CnnlabError as e:
        doc.para(f"Skipped: {e}")
        return
    for recipe, runs in groups.items():
        run = model_run(runs)
        if run is None:
            doc.heading(3, recipe)
            doc.para(f"No finished {recipe} run folder keeps a model (model.pt or last.pt), "
                     "so this part is skipped; training writes model.pt when a run finishes, "
                     "and `cnnlab export RUN --out RUN/model.pt` writes it from a run's last.pt.")
            continue
        doc.heading(3, f"{recipe} ({run.path.name})")
        try:
            predictor = Predictor.load(run.path)
        except CnnlabError as e:  # e.g. a network of the user's own, whose code is not given
            doc.para(f"Skipped: {e}")
            continue
        model_part(doc, recipe, run, predictor, test_set)
    dead_relu_part(doc, groups, test_set)


def model_part(doc: Document, recipe: str, run: Run, predictor: Predictor,
               test_set: ImageSet) -> None:
    """One recipe's filters, per-class feature maps and Grad-CAM over its mistakes."""
    model, data = predictor.model, test_set.head(predictor.recipe.limit_test)
    try:
        filters = first_filters(model)
    except CnnlabError as e:
        doc.para(f"First-layer filters skipped: {e}")
    else:
        doc.figure(f"filters-{recipe}.png", filters_figure(
            f"{recipe}: first-layer filters ({len(filters)} × {filters.shape[-2]}×"
            f"{filters.shape[-1]})", filters),
            f"{recipe}: the first layer's filters as the network applies them to the image"
            + (" (conv1 is 1×1, so these are conv2∘conv1, one 3×3 convolution)"
               if isinstance(model, ConvolutionalNetwork) else ""))
    index = first_of_each_class(data.labels)
    examples = ImageSet(data.images[index], data.labels[index])
    maps = blocks(model, examples.images)
    if not maps:
        doc.para("This network has no convolutional block (a nonlinearity whose output is a "
                 "C×H×W map), so it has no feature maps and no Grad-CAM.")
        return
    doc.figure(f"features-{recipe}.png", class_features_figure(
        f"{recipe}: feature maps of the first test image of each class", examples, maps),
        f"{recipe}: each convolutional block's {CLASS_CHANNELS} strongest channels on the "
        f"first test image of each class; {IMAGE_CHANNELS} per block, image by image: "
        f"`cnnlab explain {run.path} --test-images {','.join(map(str, index))}`")
    predicted = predictor.logits(data.images).argmax(1).cpu()
    wrong = (predicted != data.labels).nonzero().flatten()[:MAX_GRADCAM]
    if not len(wrong):
        doc.para("No test image is misclassified, so there is no Grad-CAM of a mistake.")
        return
    cams = grad_cam(model, data.images[wrong], predicted[wrong])
    doc.figure(f"gradcam-{recipe}.png", gradcam_grid_figure(
        f"{recipe}: Grad-CAM of the predicted class on the first {len(wrong)} misclassified "
        "test images", data.images[wrong], cams, data.labels[wrong].tolist(),
        predicted[wrong].tolist()),
        f"{recipe}: where the network looked when it was wrong (Grad-CAM on its last "
        "convolutional block, for the class it predicted; red: most evidence, blue all over: "
        f"no region raised that class); one image at a time: `cnnlab "
        f"explain {run.path} --test-images {','.join(map(str, wrong.tolist()))}`")


def dead_relu_part(doc: Document, groups: dict[str, list[Run]], test_set: ImageSet) -> None:
    """Dead ReLU units per layer of every finished ablation run that keeps a model (nothing
    when the study has none of the ablation's recipes)."""
    if not any(name in groups for name in DEAD_RELU_RECIPES):
        return
    runs = [r for name in DEAD_RELU_RECIPES for r in groups.get(name, [])
            if r.complete and RunFolder(r.path).model_source.is_file()]
    doc.heading(3, "Dead ReLUs in the BatchNorm ablation")
    if not runs:
        doc.para("No finished run of custom, custom_nobn or custom_nobn_lr1e-3 keeps a model, "
                 "so there is no dead-ReLU count; `cnnlab export RUN --out RUN/model.pt` "
                 "writes one from a run's last.pt.")
        return
    counts = []
    for run in runs:
        try:
            predictor = Predictor.load(run.path)
        except CnnlabError as e:
            doc.para(f"{run.path.name} left out: {e}")
            continue
        data = test_set.head(predictor.recipe.limit_test)
        counts.append((run, len(data), dead_units(predictor.model, data.images)))
    layers = list(dict.fromkeys(name for _, _, found in counts for name, _, _ in found))
    rows = []
    for run, images, found in counts:
        by_layer = {name: f"{dead}/{total} ({100 * dead / total:.0f}%)"
                    for name, dead, total in found}
        rows.append([run.recipe.name, run.path.name, f"{100 * run.final_acc:.2f}",
                     "yes" if run.collapsed else "no", f"{images:,}",
                     *(by_layer.get(name, "—") for name in layers)])
    doc.table(["recipe", "run", "final accuracy (%)", "collapsed", "test images",
               *(f"{name}: dead" for name in layers)], rows)
    doc.para("A unit is dead when it never fires (is never above zero) on any test image: "
             "after a convolution a unit is a channel, dead when no position of it fires on "
             "any image; after a fully connected layer it is a neuron. A run has collapsed "
             "when its final accuracy is within 5 points of chance. Once every unit of a layer is "
             "dead, the network's output no longer depends on its input and no gradient "
             "flows back through that layer: how custom_nobn collapses "
             "(results/fidelity/NOBN-COLLAPSE.md). `cnnlab report` recounts them from each "
             "run's model.")
