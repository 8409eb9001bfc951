"""Views of a run's progress beside metrics.csv (which the run folder always writes): the
console's epoch lines, and TensorBoard scalars per epoch and every N steps
(`--log tensorboard`, needs `pip install 'cnnlab[tensorboard]'`)."""

from __future__ import annotations

from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import TENSORBOARD_DIR, RunFolder

EPOCH_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "lr", "train_img_per_s")


class Logger:
    """Receives a run's progress; subclasses add one view each and override what they need."""

    def start(self, run: RunFolder, step: int) -> None:
        """Called before the first epoch (of this session), with the global step."""

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """After each optimizer step: step counts from 1 over the whole run."""

    def log_epoch(self, row: dict[str, Any]) -> None:
        """After each finished and saved epoch, with its metrics row."""

    def close(self) -> None:
        """When training ends, however it ends."""


def format_epoch(row: dict[str, Any], epochs: int, brief: bool = False) -> str:
    """One epoch's metrics row as one line: every number (`cnnlab train`), or with `brief`
    the epoch and its validation and test accuracy (the lines of many runs interleaved)."""
    tested = row["test_acc"] is not None  # not when evaluated after the last epoch only
    if brief:
        val = (f"  val acc {100 * row['val_acc']:.2f}%" if row.get("val_acc") is not None
               else "")
        test = f"  test acc {100 * row['test_acc']:.2f}%" if tested else "  not evaluated"
        return f"epoch {row['epoch']}/{epochs}{val}{test}"
    val = (f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:5.2f}%  "
           if row.get("val_acc") is not None else "")
    test = (f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:5.2f}%  " if tested
            else "not evaluated  ")
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {100 * row['train_acc']:5.2f}%  {val}{test}lr {row['lr']:.2g}  "
            f"{row['seconds']:.1f}s  {row['train_img_per_s']:.0f} img/s")


class ConsoleLogger(Logger):
    """`cnnlab train`'s line per epoch on stdout."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def log_epoch(self, row: dict[str, Any]) -> None:
        print(format_epoch(row, self.epochs), flush=True)


class TensorBoardLogger(Logger):
    """Event files in RUN_DIR/tensorboard/; a resumed run drops the steps after its
    checkpoint (`purge_step`) so curves never double back."""

    def __init__(self, every: int = 50) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CnnlabError("--log tensorboard needs the tensorboard package: "
                              "pip install 'cnnlab[tensorboard]'") from None
        self._writer_class = SummaryWriter
        self.every = every
        self.writer: Any = None

    def start(self, run: RunFolder, step: int) -> None:
        self.writer = self._writer_class(str(run.path / TENSORBOARD_DIR),
                                         purge_step=step or None)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if step % self.every == 0:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        for name in EPOCH_SCALARS:
            if row.get(name) is not None:
                self.writer.add_scalar(f"epoch/{name}", row[name], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
