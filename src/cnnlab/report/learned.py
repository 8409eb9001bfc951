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

def _image(ax: Axes, image: torch.Tensor, title: str = "", fontsize: float = 7) -> None:
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")


def _overlay(ax: Axes, image: torch.Tensor, cam: torch.Tensor, title: str,
             fontsize: float = 7) -> None:
    """The 28×28 image with its Grad-CAM laid over it (red: where the class's evidence is)."""
    _image(ax, image, title, fontsize)
    ax.imshow(cam.numpy(), cmap="jet", vmin=0, vmax=1, alpha=0.45, interpolation="bilinear")


def _map(ax: Axes, values: torch.Tensor, title: str = "") -> None:
    ax.imshow(values.numpy(), cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=6)
    ax.axis("off")


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
    """One picture's feature maps: a row per convolutional block, its strongest channels."""
    cols = min(IMAGE_CHANNELS, max(m.shape[0] for _, m in maps))
    fig = Figure(figsize=(cols * 0.75, (len(maps) + 1) * 1.05 + 0.3), dpi=90,
                 layout="constrained")
    fig.suptitle(title, fontsize=9)
    rows = fig.subfigures(len(maps) + 1, 1)
    _image(rows[0].subplots(1, cols, squeeze=False)[0, 0], image, "input")
    for ax in rows[0].axes[1:]:
        ax.axis("off")
    for row, (name, values) in zip(rows[1:], maps, strict=True):
        channels = strongest(values, cols)
        shown = f"the {len(channels)} strongest" if len(channels) < len(values) else \
            "strongest first"
        row.suptitle(f"{name}: {len(values)} channels of {values.shape[1]}×{values.shape[2]}, "
                     f"{shown}", fontsize=7)
        for k, ax in enumerate(row.subplots(1, cols, squeeze=False)[0]):
            ax.axis("off")
            if k < len(channels):
                _map(ax, values[channels[k]], f"ch {channels[k]}")
    return fig


def filters_figure(title: str, filters: torch.Tensor) -> Figure:
    """Each filter of the first layer, on its own symmetric colour scale (red +, blue −)."""
    cols = int(np.ceil(np.sqrt(len(filters))))
    rows = -(-len(filters) // cols)
    fig = Figure(figsize=(cols * 0.7 + 0.2, rows * 0.7 + 0.5), dpi=90, layout="constrained")
    fig.suptitle(title, fontsize=9)
    for k, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        ax.axis("off")
        if k < len(filters):
            bound = max(filters[k].abs().max().item(), 1e-12)
            ax.imshow(filters[k].numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound,
                      interpolation="nearest")
    return fig


def class_features_figure(title: str, data: ImageSet,
                          maps: list[tuple[str, torch.Tensor]]) -> Figure:
    """A row per image (one per class), a column group per block: the block's channels that
    are strongest over these images, the same channels in every row."""
    chosen = [(name, values, strongest(values, CLASS_CHANNELS)) for name, values in maps]
    cols = 1 + sum(len(channels) for _, _, channels in chosen)
    fig = Figure(figsize=(cols * 0.72, len(data) * 0.78 + 0.5), dpi=80, layout="constrained")
    fig.suptitle(title, fontsize=9)
    axes = fig.subplots(len(data), cols, squeeze=False)
    for i, row in enumerate(axes):
        _image(row[0], data.images[i], CLASSES[int(data.labels[i])], 6)
        col = 1
        for name, values, channels in chosen:
            for k, channel in enumerate(channels):
                _map(row[col], values[i, channel],
                     (f"{name}\nch {channel}" if k == 0 else f"ch {channel}") if i == 0 else "")
                col += 1
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


def first_of_each_class(data: ImageSet) -> ImageSet:
    """The first test image of each class present, in class order."""
    index = [int((data.labels == c).nonzero()[0]) for c in range(len(CLASSES))
             if (data.labels == c).any()]
    return ImageSet(data.images[index], data.labels[index])


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
        model_part(doc, recipe, run, Predictor.load(run.path), test_set)
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
    examples = first_of_each_class(data)
    index = ",".join(str(int((data.labels == c).nonzero()[0])) for c in examples.labels)
    doc.figure(f"features-{recipe}.png", class_features_figure(
        f"{recipe}: feature maps of the first test image of each class", examples,
        blocks(model, examples.images)),
        f"{recipe}: each convolutional block's {CLASS_CHANNELS} strongest channels on the "
        f"first test image of each class; all channels of one image: `cnnlab explain "
        f"{run.path} --test-images {index}`")
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
    """Dead ReLU units per layer of every finished ablation run that keeps a model."""
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
        predictor = Predictor.load(run.path)
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
