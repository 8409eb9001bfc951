"""Shared fixtures: the real Fashion-MNIST folder and small IDX files written on the spot."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import ensure_data, load_datasets, resolve_data_dir
from cnnlab.errors import CnnlabError
from cnnlab.recipe import builtin
from cnnlab.runs import RunFolder
from cnnlab.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real dataset, found as cnnlab finds it ($CNNLAB_DATA, else
    ~/.cache/cnnlab/fashion-mnist) and downloaded there when missing, as `make demo` does."""
    path = resolve_data_dir()
    try:
        ensure_data(path)
    except CnnlabError as e:
        pytest.fail(f"the real-data tests need Fashion-MNIST: {e}")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reads the real data is in the `real_data` tier: it asks for `data_dir`."""
    for item in items:
        if "data_dir" in item.fixturenames:
            item.add_marker(pytest.mark.real_data)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Learnable random IDX files, 1,000 training and 200 test images: for the tests of what
    surrounds a model (inference, the API), which need no real data."""
    return write_dataset(tmp_path_factory.mktemp("synthetic"), n_train=1000, n_test=200,
                         learnable=True)


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory, synthetic_dir: Path) -> Path:
    """A small speednet trained on the synthetic data for 2 epochs (a few seconds), which
    tells its classes apart by wide margins."""
    run = tmp_path_factory.mktemp("synthetic-run")
    recipe = study_recipe("lenet", name="tiny", epochs=2, **{
        "model.name": "speednet", "model.args": {"widths": [8, 16, 32]},
        "schedule.name": "constant"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is faster, and never oversubscribed
    try:
        train_recipe(recipe, run, synthetic_dir)
    finally:
        torch.set_num_threads(threads)
    return run


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding `array`."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_dataset(folder: Path, n_train: int = 50, n_test: int = 20, gz: bool = True,
                  seed: int = 0, learnable: bool = False) -> Path:
    """A tiny valid dataset in the four IDX files (random pixels, labels 0..9); `learnable`
    lays each class's own fixed pattern over the noise, so a model learns it at once."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    if learnable:  # light patterns inside a dark border, as Fashion-MNIST looks
        patterns = np.zeros((10, 28, 28), dtype=np.int64)
        patterns[:, 2:-2, 2:-2] = rng.integers(0, 2, (10, 24, 24)) * 192
        for split in ("train", "t10k"):
            labels = files[f"{split}-labels-idx1-ubyte"]
            noise = files[f"{split}-images-idx3-ubyte"]
            files[f"{split}-images-idx3-ubyte"] = patterns[labels] + noise // 4
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
