"""Shared fixtures: the real Fashion-MNIST folder and small IDX files written on the spot."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import load_datasets, missing_files
from cnnlab.recipe import builtin
from cnnlab.runs import RunFolder
from cnnlab.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real dataset: $CNNLAB_DATA, else the shared copy beside the checkout."""
    path = Path(os.environ.get("CNNLAB_DATA") or REPO.parent / "shared/data/fashion-mnist")
    if missing_files(path):
        pytest.fail(f"Fashion-MNIST not found in {path}: set CNNLAB_DATA to its folder")
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding `array`."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_dataset(folder: Path, n_train: int = 50, n_test: int = 20, gz: bool = True,
                  seed: int = 0) -> Path:
    """A tiny valid dataset in the four IDX files (random pixels, labels 0..9)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in files.items():
        payload = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)
    return folder


def computed(rows: list[dict]) -> list[dict]:
    """Metrics rows without the columns that are measured time rather than results."""
    return [{k: v for k, v in row.items() if k not in ("seconds", "train_img_per_s")}
            for row in rows]


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error: exit 2, nothing on stdout, one line on stderr."""
    from cnnlab.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("cnnlab: error: ") and captured.err.count("\n") == 1
    return captured.err


CPU = torch.device("cpu")


def train_recipe(recipe, run_dir: Path, data_dir: Path, resume: bool = False, loggers=()):
    """Train `recipe` on the real data into `run_dir`, as `cnnlab train` does."""
    data = load_datasets(data_dir, recipe.split.val, recipe.limit_train, recipe.limit_test)
    return train(recipe, data, RunFolder(run_dir), CPU, resume=resume, loggers=loggers)


def study_recipe(builtin_name: str, **overrides):
    """A built-in recipe with top-level or dotted-key overrides."""
    recipe = builtin(builtin_name)
    return recipe.with_overrides(overrides) if overrides else recipe
