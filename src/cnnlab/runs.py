"""The run folder, the one place that knows its layout:

| file | what |
| --- | --- |
| config.json | the resolved recipe and where and how it ran (the code: git commit and diff) |
| metrics.csv | one row per finished epoch |
| last.pt | the checkpoint after the last finished epoch (what a resume needs) |
| model.pt | once the run has finished: its reported weights alone, to keep and load |
| predictions.csv | that epoch's reported model on each test image: true and predicted class |
| loss.png, accuracy.png | train, validation and test curves |
| tensorboard/ | event files, with `--log tensorboard` |

`RunFolder` writes and reads one folder; `read_run` and `load_runs` read finished folders back
as `Run`s, for the reports and the experiments.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cnnlab import __version__
from cnnlab.data import CLASSES
from cnnlab.device import machine_name, matmul_peak_gflops
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write_text, make_folder
from cnnlab.recipe import STUDY_ORDER, Recipe, from_record

METRICS_HEADER = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                  "seconds", "train_img_per_s", "val_loss", "val_acc")
# Columns a metrics.csv may lack: files written before the validation split existed.
OPTIONAL_COLUMNS = ("val_loss", "val_acc")
# Columns an epoch's row leaves empty when it was not evaluated (evaluate.every_epoch false).
EVALUATION_COLUMNS = ("test_loss", "test_acc", *OPTIONAL_COLUMNS)
RUN_FILES = ("last.pt", "model.pt", "metrics.csv", "predictions.csv", "config.json",
             "loss.png", "accuracy.png")
TENSORBOARD_DIR = "tensorboard"  # `--log tensorboard`'s event files, replaced with the run
# The matrix side of the matmul peak a run measures as it starts: 2·1024³ FLOP a repeat,
# a fraction of a second, against `cnnlab bench`'s 2048.
RUN_PEAK_N = 1024
# Within 5 points of chance: a network that collapsed (a no-BN network at a high learning
# rate can die in its first steps) rather than trained badly.
CHANCE_BAND = 1 / len(CLASSES) + 0.05


def command_line() -> str:
    """The command this process was started with, quoted so it can be pasted back:
    `cnnlab ARGS`, or `python -m MODULE ARGS` for a script that trains through cnnlab's
    functions (experiments/)."""
    module = getattr(sys.modules["__main__"].__spec__, "name", "")
    if module and module.split(".")[0] != "cnnlab":
        return "python -m " + shlex.join([module, *sys.argv[1:]])
    return "cnnlab " + shlex.join(sys.argv[1:])


PACKAGE_DIR = Path(__file__).parent
# What `git diff` records of a dirty checkout: the package's source and its dependencies.
CODE_PATHS = (".", ":(top)pyproject.toml")


def _git(*args: str) -> str | None:
    """The output of a git command run in the package's folder; None outside a checkout."""
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True,
                             errors="replace", timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the cnnlab source in use, when it runs from a git checkout."""
    return (_git("rev-parse", "HEAD") or "").strip() or None


def git_diff() -> str | None:
    """How the package's tracked source and pyproject.toml differ from the commit ("" when
    they do not), so that a run records the code that produced it; None outside a checkout.
    """
    return _git("diff", "--no-color", "--no-ext-diff", "HEAD", "--", *CODE_PATHS)


def git_record() -> dict[str, Any]:
    """config.json's git fields: the commit, whether the code differs from it (None outside
    a checkout) and, when it does, the diff."""
    commit = git_commit()
    diff = git_diff() if commit else None
    record: dict[str, Any] = {"git_commit": commit,
                              "git_dirty": None if diff is None else bool(diff)}
    if diff:
        record["git_diff"] = diff
    return record


def write_metrics(path: Path, metrics: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row.get(k) for k in METRICS_HEADER} for row in metrics)
    atomic_write_text(path, buffer.getvalue())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.csv (evaluation columns None when empty or absent); a damaged
    file is an error, never a silently wrong number."""
    def number(key: str, text: str | None) -> float | int | None:
        if key in EVALUATION_COLUMNS and not text:
            return None
        value = int(text) if key == "epoch" else float(text)
        if not math.isfinite(value) and not key.endswith("_loss"):  # a loss may overflow
            raise ValueError(f"{key} {text}")
        return value

    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            required = set(METRICS_HEADER) - set(OPTIONAL_COLUMNS)
            missing = required - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"no column {', '.join(sorted(missing))}")
            return [{k: number(k, row.get(k)) for k in METRICS_HEADER} for row in reader]
    except (OSError, ValueError, TypeError, csv.Error) as e:
        raise CnnlabError(f"{path}: unreadable ({e}); "
                          "retrain the run or move its folder away") from e


class RunFolder:
    """A training run on disk."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / "last.pt"

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    @property
    def model_source(self) -> Path:
        """Where the run's model loads from: last.pt, else model.pt (a finished run whose
        checkpoint was not kept); last.pt's path when neither is there."""
        if not self.checkpoint.is_file() and self.model_path.is_file():
            return self.model_path
        return self.checkpoint

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def predictions_path(self) -> Path:
        return self.path / "predictions.csv"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def name(self) -> str:
        return self.path.name

    def claim(self, overwrite: bool) -> None:
        """Refuse to start over an existing run unless `overwrite` says so."""
        if self.path.exists() and not self.path.is_dir():
            raise CnnlabError(f"run folder {self.path} is a file; move it away, or choose "
                              "another folder")
        existing = [name for name in (*RUN_FILES, TENSORBOARD_DIR)
                    if (self.path / name).exists()]
        if existing and not overwrite:
            resume = ("continue it with --resume, or " if self.checkpoint.is_file()
                      else "it has no checkpoint to continue from; ")
            raise CnnlabError(f"{self.path} already holds a run ({', '.join(existing)}); "
                              f"{resume}replace it with --overwrite")
        for name in existing:
            if name == TENSORBOARD_DIR:
                shutil.rmtree(self.path / name)
            else:
                (self.path / name).unlink()

    def start(self, recipe: Recipe, device: torch.device, model_code: str | None) -> None:
        """Create the folder with config.json and an empty metrics.csv."""
        make_folder(self.path, "run folder")
        info = {
            "recipe": recipe.to_dict(),
            "model_code": model_code,
            "device": str(device),
            "machine": machine_name(device),
            "threads": torch.get_num_threads(),
            # The CPU's limit, measured as the run starts, for the report's % of peak.
            "matmul_peak_gflops": (round(matmul_peak_gflops(RUN_PEAK_N), 1)
                                   if device.type == "cpu" else None),
            "torch": torch.__version__,
            "cnnlab": __version__,
            **git_record(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(),
        }
        atomic_write_text(self.config_path, json.dumps(info, indent=2) + "\n")
        write_metrics(self.metrics_path, [])

    def info(self, *, require_checkpoint: bool) -> dict[str, Any]:
        """config.json as saved. Resuming or loading a run needs its last.pt beside it
        (`require_checkpoint`); reading a run's record, as a report does, does not."""
        if require_checkpoint and (not self.checkpoint.is_file()
                                   or not self.config_path.is_file()):
            raise CnnlabError(f"{self.path} is not a cnnlab run folder (needs config.json and "
                              "last.pt); give the folder a training run wrote")
        try:
            info = json.loads(self.config_path.read_text())
            if not isinstance(info, dict) or ("recipe" not in info and "config" not in info):
                raise ValueError("no recipe in it")
            peak = info.get("matmul_peak_gflops")  # a report divides by it
            if peak is not None and (not isinstance(peak, int | float) or not peak > 0):
                raise ValueError(f"matmul_peak_gflops {peak!r} is not a positive number")
            return info
        except (OSError, ValueError) as e:
            raise CnnlabError(f"{self.config_path}: unreadable ({e}); the run folder is "
                              "damaged") from e

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.csv: one row per finished epoch."""
        return read_metrics(self.metrics_path)

    def write_metrics(self, metrics: list[dict[str, Any]]) -> None:
        write_metrics(self.metrics_path, metrics)

    def write_predictions(self, labels: torch.Tensor, predicted: torch.Tensor) -> None:
        """Kept beside metrics.csv so a report's confusion matrices and misclassified
        images need no checkpoint (checkpoints are large and seldom committed)."""
        pairs = zip(labels.tolist(), predicted.tolist(), strict=True)
        lines = ["label,predicted"] + [f"{t},{p}" for t, p in pairs]
        atomic_write_text(self.predictions_path, "\n".join(lines) + "\n")

    def read_predictions(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(labels, predicted) from predictions.csv; None when the run has none."""
        if not self.predictions_path.is_file():
            return None
        try:
            with open(self.predictions_path, newline="") as f:
                reader = csv.reader(f)
                if next(reader, None) != ["label", "predicted"]:
                    raise ValueError("not the header label,predicted")
                pairs = [(int(t), int(p)) for t, p in reader]
            if any(not 0 <= c < len(CLASSES) for pair in pairs for c in pair):
                raise ValueError(f"a class outside 0..{len(CLASSES) - 1}")
        except (OSError, ValueError, csv.Error) as e:
            raise CnnlabError(f"{self.predictions_path}: unreadable ({e}); delete it to use "
                              "the run's last.pt instead") from e
        labels, predicted = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).unbind(1)
        return labels, predicted

    def epochs_done(self) -> int:
        return len(self.read_metrics()) if self.checkpoint.is_file() else 0


@dataclass
class Run:
    """One training run as its folder recorded it."""

    path: Path
    info: dict[str, Any]          # config.json
    recipe: Recipe                # as recorded in config.json
    metrics: list[dict[str, Any]]  # metrics.csv, one row per epoch

    @property
    def planned_epochs(self) -> int:
        return self.recipe.epochs

    @property
    def complete(self) -> bool:
        return len(self.metrics) >= self.planned_epochs

    @property
    def final_acc(self) -> float:
        return self.metrics[-1]["test_acc"]

    @property
    def best_acc(self) -> float:
        return max(r["test_acc"] for r in self.evaluated)

    @property
    def evaluated(self) -> list[dict[str, Any]]:
        """The rows of the epochs whose test set was evaluated (all, unless the recipe
        evaluates after its last epoch only), each with its cumulative `elapsed` seconds."""
        return [{**row, "elapsed": t} for row, t in zip(self.metrics, self.elapsed,
                                                        strict=True)
                if row["test_acc"] is not None]

    @property
    def collapsed(self) -> bool:
        """Whether the run ended at chance level: it collapsed rather than trained badly."""
        return self.final_acc < CHANCE_BAND

    @property
    def elapsed(self) -> list[float]:
        """Cumulative training seconds (evaluation included) at the end of each epoch."""
        return list(itertools.accumulate(r["seconds"] for r in self.metrics))


def read_run(path: Path) -> Run:
    """Parse one run folder; a damaged file is an error, never a silently wrong number."""
    folder = RunFolder(path)
    info = folder.info(require_checkpoint=False)
    return Run(path, info, from_record(info, str(folder.config_path)), folder.read_metrics())


def _recipe_order(name: str) -> tuple[int, str]:
    return (STUDY_ORDER.index(name) if name in STUDY_ORDER else len(STUDY_ORDER), name)


def load_runs(folder: Path) -> tuple[dict[str, list[Run]], list[str]]:
    """Runs of FOLDER/runs/ grouped by recipe name (the study's first, in its order; then by
    seed), and notes on runs left out."""
    if not folder.is_dir():
        raise CnnlabError(f"study folder {folder} does not exist; give the folder that "
                          "holds runs/<recipe>-seed<k>/")
    paths = sorted(p for p in (folder / "runs").glob("*/")
                   if RunFolder(p).config_path.exists() or RunFolder(p).metrics_path.exists())
    if not paths:
        raise CnnlabError(f"{folder / 'runs'} holds no run folders; train into it first, "
                          f"e.g. `cnnlab train lenet --seed 0 --out {folder}/runs/lenet-seed0`")
    groups: dict[str, list[Run]] = {}
    notes = []
    for path in paths:
        run = read_run(path)
        if not run.metrics:
            notes.append(f"{path.name} has no finished epoch and is left out.")
            continue
        if run.metrics[-1]["test_acc"] is None:
            notes.append(f"{path.name} stopped before its evaluation (its recipe evaluates "
                         "after the last epoch only) and is left out.")
            continue
        groups.setdefault(run.recipe.name, []).append(run)
    if not groups:
        raise CnnlabError(f"no run in {folder / 'runs'} has finished an epoch; "
                          "let training run for at least one epoch")
    return ({name: sorted(groups[name], key=lambda r: r.recipe.seed)
             for name in sorted(groups, key=_recipe_order)}, notes)
