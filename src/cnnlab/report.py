"""Figures of training runs (loss and accuracy per epoch)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cnnlab.files import atomic_write  # noqa: E402


def plot_run(rows: list[dict[str, float]], out_dir: Path, title: str) -> list[Path]:
    """Write loss.png (train and test loss per epoch, like the study's Figures 1–5) and
    accuracy.png into `out_dir`; return their paths."""
    epochs = [r["epoch"] for r in rows]
    paths = []
    for name, key, ylabel in (("loss.png", "loss", "cross-entropy loss"),
                              ("accuracy.png", "acc", "accuracy (%)")):
        scale = 100 if key == "acc" else 1
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        ax.plot(epochs, [scale * r[f"train_{key}"] for r in rows], "o-", ms=3, label="train")
        ax.plot(epochs, [scale * r[f"test_{key}"] for r in rows], "s-", ms=3, label="test")
        ax.set(title=f"{title}: {ylabel.split(' (')[0]}", xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / name
        atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths
