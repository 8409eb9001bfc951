"""The training engine: one epoch, evaluation, metrics.csv, checkpoints, complete resume.

Randomness is a function of (seed, epoch): the model is initialised from `seed`, and each
epoch reseeds the data order, the augmentation draws and dropout from (seed, epoch). A run
resumed from the checkpoint of epoch k therefore continues exactly as the uninterrupted
run would have, and the checkpoint needs no RNG state beyond its seed and epoch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cnnlab import __version__
from cnnlab.augment import eval_batch, train_batch
from cnnlab.data import ImageSet, ensure_data, load_split
from cnnlab.errors import CnnlabError, Interrupted
from cnnlab.files import atomic_write, atomic_write_text
from cnnlab.models import get_model
from cnnlab.presets import load_preset

METRICS_HEADER = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                  "seconds", "train_img_per_s")
CHECKPOINT_FORMAT = "cnnlab-checkpoint-v1"


@dataclass
class TrainConfig:
    """Everything that decides what a run computes (the recipe plus seed and data limits)."""

    preset: str
    model: str
    batch_size: int
    epochs: int
    lr: float
    step_size: int
    gamma: float
    augment: bool
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    bf16: bool = False  # bf16 autocast, CUDA only

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The preset's settings with every non-None override applied, validated."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in load_preset(name).items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        checks = [
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0 (got {self.lr})"),
            (self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"batch size must be >= 1 (got {self.batch_size})"),
            (self.step_size >= 1, f"step size must be >= 1 (got {self.step_size})"),
            (self.gamma > 0 and math.isfinite(self.gamma), f"gamma must be > 0 (got {self.gamma})"),
            (self.limit_train is None or self.limit_train >= 1,
             f"limit-train must be >= 1 (got {self.limit_train})"),
            (self.limit_test is None or self.limit_test >= 1,
             f"limit-test must be >= 1 (got {self.limit_test})"),
        ]
        for ok, message in checks:
            if not ok:
                raise CnnlabError(message)
        get_model(self.model)  # raises on an unknown model name


def resolve_device(name: str = "auto") -> torch.device:
    """auto → cuda, else mps, else cpu; an explicit device must exist."""
    cuda = torch.cuda.is_available()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name.startswith("cuda") and not cuda:
        raise CnnlabError(f"--device {name}: CUDA is not available here (torch "
                          f"{torch.__version__}); use --device cpu or auto")
    if name == "mps" and not mps:
        raise CnnlabError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CnnlabError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Seed dropout and return the generator for this epoch's data order and augmentation."""
    epoch_seed = (seed << 20) + epoch
    torch.manual_seed(epoch_seed)
    return torch.Generator(device=device).manual_seed(epoch_seed)


# --------------------------------------------------------------------------- the loop

@dataclass
class EpochStats:
    loss: float
    acc: float
    seconds: float


class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop at the next step
    boundary; a second one aborts at once (the last checkpoint is already on disk)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last unless the model says it runs faster in NCHW (a class attribute
    `channels_last = False`, set from `cnnlab bench` measurements)."""
    if getattr(model, "channels_last", True):
        return torch.channels_last
    return torch.contiguous_format


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """On the device, in the memory format it trains fastest in; feed it through `as_input`."""
    return model.to(device=device, memory_format=memory_format(model))


def make_optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam, with the fused single-kernel update where torch has one (CPU and CUDA):
    measured 15–20 % faster training for alexnet and custom on CPU."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))


def as_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The batch with the strides of the model's memory format spelled out. For 1-channel
    images both layouts are valid, so `x.contiguous(memory_format=...)` keeps the NCHW
    strides, and the first convolution would then hand NCHW activations to a
    channels_last network (measured: NCHW max-pool forward is 10-15x slower here)."""
    return torch.empty_like(x, memory_format=memory_format(model)).copy_(x)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: ImageSet,
                    config: TrainConfig, epoch: int, stop: StopRequest | None = None,
                    show_progress: bool = False) -> EpochStats:
    """One pass over `data` in a seeded random order; the last partial batch is kept."""
    model.train()
    device = data.images.device
    generator = epoch_generator(config.seed, epoch, device)
    order = torch.randperm(len(data), generator=generator, device=device)
    batches = order.split(config.batch_size)
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
               disable=not show_progress, file=sys.stderr)
    for step, index in enumerate(bar, 1):
        if stop is not None and stop.signum is not None:
            raise _StopAtStep(step)
        images, labels = data.images[index], data.labels[index]
        x = train_batch(images, generator) if config.augment else eval_batch(images)
        with torch.autocast(device.type, torch.bfloat16, enabled=config.bf16):
            logits = model(as_input(x, model))
            loss = F.cross_entropy(logits, labels)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise _NonFiniteLoss(step, loss_value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss_value * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
    bar.close()
    return EpochStats(loss_sum / seen, correct / seen, time.perf_counter() - start)


class _StopAtStep(Exception):
    def __init__(self, step: int) -> None:
        self.step = step


class _NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float) -> None:
        self.step, self.value = step, value


def eval_batch_size(device: torch.device) -> int:
    """Large batches keep a GPU busy; on CPU, batches of 128 stay in cache and measured
    1.6× faster than 1,000 for the custom network."""
    return 1000 if device.type == "cuda" else 128


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor,
                   batch_size: int | None = None) -> torch.Tensor:
    """Logits for uint8 images, in eval mode."""
    model.eval()
    batch_size = batch_size or eval_batch_size(images.device)
    chunks = images.split(batch_size)
    return torch.cat([model(as_input(eval_batch(chunk), model)) for chunk in chunks])


def evaluate(model: nn.Module, data: ImageSet,
             batch_size: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all of `data`."""
    logits = predict_logits(model, data.images, batch_size)
    loss = F.cross_entropy(logits, data.labels).item()
    acc = (logits.argmax(1) == data.labels).float().mean().item()
    return loss, acc


# --------------------------------------------------------------------------- files

def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv; a damaged file is an error, never a silently wrong number."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(METRICS_HEADER) - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"no column {', '.join(sorted(missing))}")
            return [{k: int(row[k]) if k == "epoch" else float(row[k]) for k in METRICS_HEADER}
                    for row in reader]
    except (OSError, ValueError, TypeError, csv.Error) as e:
        raise CnnlabError(f"{path}: unreadable ({e}); "
                          "retrain the run or move its folder away") from e


def command_line() -> str:
    """The command this process was started with, quoted so it can be pasted back."""
    return "cnnlab " + shlex.join(sys.argv[1:])


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int,
                    config: TrainConfig, metrics: list[dict[str, float]]) -> None:
    """Tensors and plain data only, so it loads with `torch.load(weights_only=True)`."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "config": asdict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "metrics": metrics,
    }
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a cnnlab checkpoint safely: plain data and tensors only, never code."""
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CnnlabError(f"{path}: no such checkpoint; give a run folder or a .pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds Python objects, not just tensors; refusing to run its code"
        else:
            reason = "not a PyTorch checkpoint file, or a truncated or damaged one"
        raise CnnlabError(f"{path} is not a loadable cnnlab checkpoint: {reason}") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return state


def model_from_checkpoint(state: dict[str, Any], source: Path) -> nn.Module:
    model = get_model(state["config"]["model"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CnnlabError(f"{source}: its weights do not fit model {state['config']['model']!r} "
                          "(a checkpoint of another architecture?)") from e
    return model


def git_commit() -> str | None:
    """The commit of the cnnlab source in use, when it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def resume_config(run_dir: Path, preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """The saved run's config; options given again must agree with it (explains which not)."""
    names = {f.name for f in fields(TrainConfig)}
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    # Fields added since the run was saved take their defaults; retired ones are dropped.
    saved = {**defaults, **{k: v for k, v in read_config(run_dir)["config"].items()
                            if k in names}}
    asked = {k: v for k, v in overrides.items() if v is not None}
    if preset is not None:
        asked["preset"] = preset
    differ = [f"{k} (saved {saved.get(k)!r}, given {v!r})" for k, v in asked.items()
              if saved.get(k) != v]
    if differ:
        raise CnnlabError(f"cannot resume {run_dir}: options disagree with the saved run: "
                          f"{'; '.join(differ)}; drop them or start a new run with --out")
    config = TrainConfig(**saved)
    config.validate()
    return config


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not (run_dir / "last.pt").is_file() or not path.is_file():
        raise CnnlabError(f"{run_dir} is not a cnnlab run folder (needs config.json and "
                          "last.pt); give the folder a training run wrote")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CnnlabError(f"{path}: unreadable ({e}); the run folder is damaged") from e


# --------------------------------------------------------------------------- a whole run

def train(config: TrainConfig, run_dir: Path, data_dir: Path, device: torch.device,
          resume: bool = False, quiet: bool = False,
          on_epoch: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train `config` into `run_dir` (or continue it there); return the metrics rows."""
    if config.bf16 and device.type != "cuda":
        raise CnnlabError("--bf16 needs a CUDA device; on CPU cnnlab trains in fp32 "
                          "(bf16 convolutions there are far slower)")
    if device.type == "cuda":
        # Fastest kernels for the fixed input size; makes CUDA runs non-deterministic.
        torch.backends.cudnn.benchmark = True
    ensure_data(data_dir)
    train_set = load_split(data_dir, "train").head(config.limit_train).to(device)
    test_set = load_split(data_dir, "test").head(config.limit_test).to(device)

    torch.manual_seed(config.seed)
    model = prepare_model(get_model(config.model), device)
    optimizer = make_optimizer(model, config.lr, device)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
    rows: list[dict[str, float]] = []
    checkpoint = run_dir / "last.pt"
    if resume:
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rows = state["metrics"]
        # The checkpoint is the record: a crash between saving it and metrics.csv is mended.
        write_metrics(run_dir / "metrics.csv", rows)
    else:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CnnlabError(f"cannot create run folder {run_dir}: {e.strerror}") from e
        atomic_write_text(run_dir / "config.json", json.dumps({
            "config": asdict(config),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cnnlab": __version__,
            "git_commit": git_commit(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(),
        }, indent=2) + "\n")
        write_metrics(run_dir / "metrics.csv", rows)

    show_progress = not quiet and sys.stderr.isatty()
    with stop_on_signals() as stop:
        for epoch in range(len(rows) + 1, config.epochs + 1):
            start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            try:
                stats = train_one_epoch(model, optimizer, train_set, config, epoch, stop,
                                        show_progress)
            except _StopAtStep as e:
                name = signal.Signals(stop.signum).name
                note = checkpoint_note(run_dir, len(rows))
                raise Interrupted(f"{name}: stopped at epoch {epoch} step {e.step}; {note}",
                                  stop.signum) from None
            except _NonFiniteLoss as e:
                raise CnnlabError(
                    f"loss became {e.value} at epoch {epoch} step {e.step}; training stopped, "
                    f"{checkpoint_note(run_dir, len(rows), resume_hint=False)}; try a lower --lr"
                ) from None
            test_loss, test_acc = evaluate(model, test_set)
            scheduler.step()
            row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc,
                   "test_loss": test_loss, "test_acc": test_acc, "lr": lr,
                   "seconds": time.perf_counter() - start,
                   "train_img_per_s": len(train_set) / stats.seconds}
            rows.append(row)
            save_checkpoint(checkpoint, model, optimizer, scheduler, epoch, config, rows)
            write_metrics(run_dir / "metrics.csv", rows)
            if not quiet:
                print(format_row(row, config.epochs), flush=True)
            if on_epoch is not None:
                on_epoch(row)
    return rows


def checkpoint_note(run_dir: Path, epochs_done: int, resume_hint: bool = True) -> str:
    if epochs_done == 0:
        return "no epoch had finished, so there is no checkpoint yet"
    note = f"the checkpoint of epoch {epochs_done} is in {run_dir / 'last.pt'}"
    return note + (f"; continue with `cnnlab train --resume {run_dir}`" if resume_hint else "")


def format_row(row: dict[str, float], epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {100 * row['train_acc']:5.2f}%  test loss {row['test_loss']:.4f} "
            f"acc {100 * row['test_acc']:5.2f}%  lr {row['lr']:.2g}  "
            f"{row['seconds']:.1f}s  {row['train_img_per_s']:.0f} img/s")
