"""The loop: one epoch with per-step hooks, evaluation, and a whole run with checkpoints and
complete resume; `start_or_resume` is how every command (train, reproduce, the sweep worker)
begins or continues a run.

Randomness is a function of (seed, epoch): the model is initialised from `seed`, and each
epoch reseeds the data order, the augmentation draws and dropout from (seed, epoch). A run
resumed from the checkpoint of epoch k therefore continues exactly as the uninterrupted
run would have, and the checkpoint needs no RNG state beyond its seed and epoch. The
process's global RNG and flags are restored when `train` returns, so several runs can
share one process.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cnnlab.augment import Draws, augment_batch, eval_batch
from cnnlab.checkpoint import load_checkpoint, save_checkpoint, save_model
from cnnlab.data import Datasets, ImageSet, load_datasets
from cnnlab.device import as_input, autocast, check_precision, prepare_model
from cnnlab.errors import CnnlabError, Diverged, Interrupted
from cnnlab.inference import Predictor
from cnnlab.loggers import Logger
from cnnlab.models import create_model, fit_to_data, start_epoch
from cnnlab.parts import Parts, build_parts, loss_fn
from cnnlab.recipe import Recipe, changed_settings, from_record
from cnnlab.runs import RunFolder


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed << 20) + epoch


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


@contextmanager
def isolated_global_state(device: torch.device) -> Iterator[None]:
    """Seeds and flags a run sets are put back afterwards: the global RNG (dropout draws
    from it) and cudnn.benchmark."""
    benchmark = torch.backends.cudnn.benchmark
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        if device.type == "cuda":
            # Fastest kernels for the fixed input size; makes CUDA runs non-deterministic.
            torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = benchmark


class _StopAtStep(Exception):
    def __init__(self, step: int) -> None:
        self.step = step


class _NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float) -> None:
        self.step, self.value = step, value


def train_one_epoch(parts: Parts, data: ImageSet, epoch: int, stop: StopRequest | None = None,
                    show_progress: bool = False, loggers: Sequence[Logger] = (),
                    first_step: int = 0, max_steps: int | None = None) -> EpochStats:
    """One pass over `data` in a seeded random order; the last partial batch is kept.
    After every optimizer step the recipe's per-step parts run (schedule, weight average).
    `max_steps` ends the epoch early, after that many steps (studies of the first steps);
    the stats are those of the steps done."""
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (got {max_steps})")
    recipe, model, optimizer = parts.recipe, parts.model, parts.optimizer
    criterion = loss_fn(recipe)
    model.train()
    start_epoch(model, epoch)
    device = data.images.device
    seed = epoch_seed(recipe.seed, epoch)
    torch.manual_seed(seed)  # dropout, and the per-image pipeline's draws
    batches = (per_image_batches if recipe.pipeline == "per_image" else batched)(
        recipe, data, epoch, seed)
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch}/{recipe.epochs}", unit="batch", leave=False,
               disable=not show_progress, file=sys.stderr,
               total=min(math.ceil(len(data) / recipe.batch_size), max_steps or math.inf))
    for step, (x, labels) in enumerate(bar, 1):
        if stop is not None and stop.signum is not None:
            raise _StopAtStep(step)
        with autocast(recipe.precision, device):
            logits = model(as_input(x, model))
            loss = criterion(logits, labels)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise _NonFiniteLoss(step, loss_value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        parts.after_step(epoch)
        loss_sum += loss_value * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        for logger in loggers:
            logger.log_step(first_step + step, {"train/loss": loss_value, "train/lr": lr})
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
        if step == max_steps:
            break
    bar.close()
    return EpochStats(loss_sum / seen, correct / seen, time.perf_counter() - start)


def batched(recipe: Recipe, data: ImageSet, epoch: int,
            seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """cnnlab's pipeline: a seeded permutation of the resident images, each batch augmented
    at once on the training device, every sample with its own draws."""
    device = data.images.device
    generator = torch.Generator(device=device).manual_seed(seed)
    order = torch.randperm(len(data), generator=generator, device=device)
    for index in order.split(recipe.batch_size):
        draws = Draws(generator, index, len(data), recipe.seed, epoch)
        yield augment_batch(data.images[index], recipe.augment, draws), data.labels[index]


def per_image_batches(recipe: Recipe, data: ImageSet, epoch: int,
                      seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The study's pipeline: torchvision's transforms one image at a time (drawing from the
    global RNG, seeded per epoch) behind a shuffling DataLoader."""
    from torch.utils.data import DataLoader

    from cnnlab.reference import PerSampleDataset

    device = data.images.device
    loader = DataLoader(PerSampleDataset(data, augment=bool(recipe.augment)),
                        batch_size=recipe.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    for x, labels in loader:
        yield x.to(device), labels.to(device)


# Training images that layers set from data (speednet's whitening stem) are fitted to.
FIT_IMAGES = 2000


def steps_per_epoch(recipe: Recipe, data: Datasets) -> int:
    return math.ceil(len(data.train) / recipe.batch_size)


def train(recipe: Recipe, data: Datasets, run: RunFolder, device: torch.device, *,
          resume: bool = False, progress: bool = False, loggers: Sequence[Logger] = (),
          model_code: str | None = None) -> list[dict[str, Any]]:
    """Train `recipe` on `data` into `run` (or continue it there); return its metrics, one
    row per epoch.

    `model_code` is the source of a user's network (`recipe.model.name` of the form
    FILE.py:FACTORY) that the caller permits importing; built-in networks need none.
    """
    check_precision(recipe.precision, device)
    data = data.to(device)
    per_epoch = steps_per_epoch(recipe, data)
    with isolated_global_state(device):
        torch.manual_seed(recipe.seed)
        model = prepare_model(create_model(recipe.model.name, recipe.model.args, model_code),
                              device, recipe.model.memory_format)
        if not resume:  # a resumed run has them in its checkpoint
            fit_to_data(model, eval_batch(data.train.images[:FIT_IMAGES]))
        parts = build_parts(recipe, model, device, per_epoch)
        metrics: list[dict[str, Any]] = []
        if resume:
            state = load_checkpoint(run.checkpoint)
            parts.load_state_dict(state)
            metrics = state["metrics"]
            # The checkpoint is the record: a crash between saving it and metrics.csv is mended.
            run.write_metrics(metrics)
        else:
            run.start(recipe, device, model_code)
        for logger in loggers:
            logger.start(run, len(metrics) * per_epoch)
        try:
            with stop_on_signals() as stop:
                for epoch in range(len(metrics) + 1, recipe.epochs + 1):
                    row, predicted = _epoch(parts, data, run, epoch, stop, progress, loggers,
                                            per_epoch)
                    metrics.append(row)
                    if predicted is not None:
                        run.write_predictions(data.test.labels, predicted)
                    save_checkpoint(run.checkpoint, parts.state_dict(), epoch, recipe, metrics)
                    run.write_metrics(metrics)
                    for logger in loggers:
                        logger.log_epoch(row)
            if len(metrics) >= recipe.epochs:
                save_model(run.model_path, {"epoch": len(metrics), "recipe": recipe.to_dict(),
                                            "metrics": metrics, **parts.state_dict()})
        finally:
            for logger in loggers:
                logger.close()
            if metrics:
                # Imported here: matplotlib would slow every command that imports training.
                from cnnlab.report.figures import write_run_figures

                write_run_figures(run.path, metrics, recipe.name)
    return metrics


def _epoch(parts: Parts, data: Datasets, run: RunFolder, epoch: int, stop: StopRequest,
           progress: bool, loggers: Sequence[Logger],
           per_epoch: int) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Train one epoch, evaluate the recipe's reported weights (after every epoch, or after
    the last only), step the per-epoch parts; return the metrics row and the test-set
    predictions (None when this epoch was not evaluated)."""
    start = time.perf_counter()
    lr = parts.optimizer.param_groups[0]["lr"]
    try:
        stats = train_one_epoch(parts, data.train, epoch, stop, progress, loggers,
                                (epoch - 1) * per_epoch)
    except _StopAtStep as e:
        name = signal.Signals(stop.signum).name
        note = checkpoint_note(run, epoch - 1)
        raise Interrupted(f"{name}: stopped at epoch {epoch} step {e.step}; {note}",
                          stop.signum) from None
    except _NonFiniteLoss as e:
        raise Diverged(
            f"loss became {e.value} at epoch {epoch} step {e.step}; training stopped, "
            f"{checkpoint_note(run, epoch - 1, resume_hint=False)}; try a lower --lr"
        ) from None
    test_loss = test_acc = predicted = val_loss = val_acc = None
    if parts.recipe.evaluate.every_epoch or epoch == parts.recipe.epochs:
        evaluator = Predictor(parts.evaluated, parts.recipe.evaluate)
        test_loss, test_acc, predicted = evaluator.evaluate_predicted(data.test)
        if data.val is not None:
            val_loss, val_acc = evaluator.evaluate(data.val)
    parts.after_epoch()
    return {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc,
            "test_loss": test_loss, "test_acc": test_acc, "lr": lr,
            "seconds": time.perf_counter() - start,
            "train_img_per_s": len(data.train) / stats.seconds,
            "val_loss": val_loss, "val_acc": val_acc}, predicted


def checkpoint_note(run: RunFolder, epochs_done: int, resume_hint: bool = True) -> str:
    if epochs_done == 0:
        return "no epoch had finished, so there is no checkpoint yet"
    note = f"the checkpoint of epoch {epochs_done} is in {run.checkpoint}"
    return note + (f"; continue with `cnnlab train --resume {run.path}`" if resume_hint else "")


def resume_recipe(run: RunFolder, overrides: dict[str, Any]) -> Recipe:
    """The saved run's recipe; settings given again must agree with it (says which not)."""
    saved = _saved_recipe(run)
    _refuse_other_settings(run, saved.with_overrides(overrides, "given"), saved)
    return saved


def resumable_epochs(run: RunFolder, recipe: Recipe) -> int:
    """How many epochs of `recipe` the run folder already holds (0 without a checkpoint);
    a folder holding other settings is refused, naming them. The whole recipe is compared,
    unset run options included: epochs trained on `limit_train` images must not be continued
    on all of them."""
    done = run.epochs_done()
    if done:
        _refuse_other_settings(run, recipe, _saved_recipe(run))
    return done


def _saved_recipe(run: RunFolder) -> Recipe:
    """The recipe in the run's config.json; refused when there is no checkpoint to resume."""
    return from_record(run.info(require_checkpoint=True), str(run.config_path))


def _refuse_other_settings(run: RunFolder, asked: Recipe, saved: Recipe) -> None:
    differ = [f"{k} (saved {before!r}, given {after!r})"
              for k, (before, after) in changed_settings(asked, saved).items()]
    if differ:
        raise CnnlabError(f"cannot resume {run.path}: options disagree with the saved run: "
                          f"{'; '.join(differ)}; drop them or start a new run with --out")


def start_or_resume(recipe: Recipe, run: RunFolder, data_dir: Path, device: torch.device, *,
                    resume: bool, loggers: Sequence[Logger] = (), progress_bar: bool = False,
                    model_code: str | None = None,
                    say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Load the recipe's data from `data_dir` (present: `ensure_data`) and train `recipe`
    into `run`, from the start or, with `resume`, on from its checkpoint; return its metrics.

    `say`, when given, first hears "starting" or "resuming after epoch K"; `progress_bar`
    shows one on stderr when that is a terminal. The one way every command starts a run.
    """
    if say is not None:
        done = run.epochs_done() if resume else 0
        say(f"resuming after epoch {done}" if done else "starting")
    data = load_datasets(data_dir, recipe.split.val, recipe.limit_train, recipe.limit_test)
    return train(recipe, data, run, device, resume=resume,
                 progress=progress_bar and sys.stderr.isatty(), loggers=loggers,
                 model_code=model_code)
