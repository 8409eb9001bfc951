"""Optional views of a run beside metrics.csv: TensorBoard scalars per epoch and every N
steps (`--log tensorboard`, needs `pip install 'cnnlab[tensorboard]'`)."""

from __future__ import annotations

from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunFolder
from cnnlab.train import Logger

EPOCH_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "lr", "train_img_per_s")


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
        self.writer = self._writer_class(str(run.path / "tensorboard"),
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
