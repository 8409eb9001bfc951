"""Every figure cnnlab draws: a run's own curves, the study report's and the search report's.

Figures are built as `matplotlib.figure.Figure` objects, which render to PNG without pyplot,
so no backend is switched and nothing global changes when this module is imported.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from cnnlab.data import CLASSES
from cnnlab.files import atomic_write
from cnnlab.runs import Run

if TYPE_CHECKING:
    import torch


def save_png(fig: Figure, path: Path) -> bytes:
    """Write `fig` to `path` as PNG (atomically) and return the bytes written."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    png = buffer.getvalue()
    atomic_write(path, lambda f: f.write(png))
    return png


# --------------------------------------------------------------------------- one run

def run_figures(rows: list[dict[str, Any]], title: str) -> dict[str, Figure]:
    """A run's loss.png (train, validation and test loss per epoch, like the study's
    Figures 1–5) and accuracy.png, by file name."""
    epochs = [r["epoch"] for r in rows]
    figures = {}
    for name, key, ylabel in (("loss.png", "loss", "cross-entropy loss"),
                              ("accuracy.png", "acc", "accuracy (%)")):
        scale = 100 if key == "acc" else 1
        fig = Figure(figsize=(6, 4), dpi=110, layout="tight")
        ax = fig.subplots()
        for split, marker in (("train", "o-"), ("val", "^-"), ("test", "s-")):
            values = [r.get(f"{split}_{key}") for r in rows]
            if all(v is not None for v in values):
                ax.plot(epochs, [scale * v for v in values], marker, ms=3, label=split)
        ax.set(title=f"{title}: {ylabel.split(' (')[0]}", xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        figures[name] = fig
    return figures


def write_run_figures(folder: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Write `run_figures` into the run folder."""
    for name, fig in run_figures(rows, title).items():
        save_png(fig, folder / name)


# --------------------------------------------------------------------------- the study report

def band(ax: Axes, runs: list[Run], key: str, label: str, scale: float = 1.0,
         style: str = "-") -> None:
    """Mean line over seeds, with a shaded min–max band when there are several seeds."""
    epochs = sorted({row["epoch"] for r in runs for row in r.metrics if row[key] is not None})
    values = [[scale * row[key] for r in runs for row in r.metrics if row["epoch"] == e
               and row[key] is not None] for e in epochs]
    line, = ax.plot(epochs, [statistics.mean(v) for v in values], style, marker="o", ms=3,
                    label=label if len(runs) == 1 else f"{label} (mean of {len(runs)} seeds)")
    if len(runs) > 1:
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values],
                        color=line.get_color(), alpha=0.2, lw=0)


def finish(ax: Axes, title: str, ylabel: str) -> None:
    """Title, labels, whole-number epochs, grid and legend of a per-epoch plot."""
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def loss_figure(recipe: str, runs: list[Run]) -> Figure:
    fig = Figure(figsize=(6, 4), dpi=110, layout="tight")
    ax = fig.subplots()
    band(ax, runs, "train_loss", "train")
    band(ax, runs, "test_loss", "test", style="--")
    note = " (band: min–max over seeds)" if len(runs) > 1 else ""
    finish(ax, f"{recipe}: train and test loss{note}", "cross-entropy loss")
    return fig


def accuracy_figure(groups: dict[str, list[Run]]) -> Figure:
    fig = Figure(figsize=(7, 4.5), dpi=110, layout="tight")
    ax = fig.subplots()
    for recipe, runs in groups.items():
        band(ax, runs, "test_acc", recipe, scale=100)
    finish(ax, "Test accuracy per epoch, all recipes", "test accuracy (%)")
    return fig


def ablation_figure(groups: dict[str, list[Run]]) -> Figure:
    """Test loss and test accuracy of the BatchNorm ablation's recipes (`groups` holds only
    those), side by side: every seed its own thin line, since a recipe's seeds may split
    between runs that learned and runs that collapsed, whose mean no run followed. Collapsed
    runs are dashed and faint."""
    fig = Figure(figsize=(11, 4.2), dpi=110, layout="tight")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for i, (name, runs) in enumerate(groups.items()):
        for ax, key, scale in ((loss_ax, "test_loss", 1), (acc_ax, "test_acc", 100)):
            seed_lines(ax, name, runs, key, scale, color=f"C{i % 10}")
    finish(loss_ax, "BatchNorm ablation: test loss (one line per seed)", "cross-entropy loss")
    finish(acc_ax, "BatchNorm ablation: test accuracy (one line per seed)", "test accuracy (%)")
    return fig


def seed_lines(ax: Axes, name: str, runs: list[Run], key: str, scale: float,
               color: str) -> None:
    """One thin line per seed in the recipe's colour, solid for runs that learned and dashed
    for runs that collapsed to chance; the legend names each kind once, with its count."""
    split = any(r.collapsed for r in runs) and not all(r.collapsed for r in runs)
    for collapsed, style, alpha in ((False, "-", 0.9), (True, "--", 0.45)):
        chosen = [r for r in runs if r.collapsed == collapsed]
        kind = " collapsed to chance" if collapsed else " that learned" if split else ""
        for k, run in enumerate(chosen):
            label = f"{name}: {len(chosen)} seed{'s' * (len(chosen) > 1)}{kind}" if k == 0 \
                else None
            ax.plot([row["epoch"] for row in run.evaluated],
                    [scale * row[key] for row in run.evaluated], style, color=color, lw=1,
                    marker="o", ms=2, alpha=alpha, label=label)


def confusion_figure(title: str, matrix: np.ndarray) -> Figure:
    fig = Figure(figsize=(7.5, 6.5), dpi=110, layout="tight")
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(CLASSES))
    ax.set_xticks(ticks, CLASSES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASSES)
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > matrix.max() / 2 else "black")
    return fig


def misclassified_figure(title: str, images: torch.Tensor, true: list[int],
                         predicted: list[int]) -> Figure:
    cols = 6
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(cols * 1.6, rows * 1.9 + 0.4), dpi=110, layout="tight")
    fig.suptitle(title)
    for k, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"true: {CLASSES[true[k]]}\npred: {CLASSES[predicted[k]]}", fontsize=7)
    return fig


def time_figure(groups: dict[str, list[Run]], target: float) -> Figure:
    """Test accuracy against cumulative training minutes, every seed of every recipe."""
    fig = Figure(figsize=(7.5, 4.5), dpi=110, layout="tight")
    ax = fig.subplots()
    for i, (name, runs) in enumerate(groups.items()):
        for k, run in enumerate(runs):
            ax.plot([r["elapsed"] / 60 for r in run.evaluated],
                    [100 * r["test_acc"] for r in run.evaluated],
                    "o-", ms=2.5, lw=1, color=f"C{i % 10}", alpha=0.8,
                    label=f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})" if k == 0
                    else None)
    ax.axhline(100 * target, color="k", ls="--", lw=1,
               label=f"the study's best, {100 * target:.1f}%")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    # Minor ticks labelled at 2× and 5× each power of ten only: all of them would overlap.
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
    ax.set_ylim(85, 100)
    ax.set(title="Time to accuracy", xlabel="cumulative training time (min, log scale; "
           "evaluation included)", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- the search report

def search_figure(trials: Sequence[dict[str, Any]], log_params: dict[str, bool],
                  metric: str) -> Figure:
    """The objective against each searched parameter; pruned trials hollow."""
    fig = Figure(figsize=(4.2 * len(log_params), 3.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(log_params), squeeze=False)[0]
    scale = 100 if metric.endswith("acc") else 1
    for ax, (key, log) in zip(axes, log_params.items(), strict=True):
        for state, style in (("COMPLETE", {"color": "C0"}),
                             ("PRUNED", {"facecolors": "none", "edgecolors": "C1"})):
            chosen = [t for t in trials if t["state"] == state and t["value"] is not None]
            ax.scatter([t["params"][key] for t in chosen],
                       [scale * t["value"] for t in chosen], label=state.lower(), **style)
        finish(ax, key, f"{metric}{' (%)' if scale == 100 else ''}")
        ax.set_xlabel(key)
        if log:
            ax.set_xscale("log")
    return fig
