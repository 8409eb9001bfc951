"""Where cnnlab's batched pipeline and dropout draw their random numbers within an epoch.

Run from the repository root: `python -m experiments.fidelity.shared_streams`

`train_one_epoch` seeds the global generator (dropout) and the data generator (order and
augmentation) with the same epoch seed, so both produce the same raw stream. This prints
where in that stream each consumer reads: the permutation first, then per batch the angles
and the flips on the data side; custom_nobn's dropout mask of each step (64 × 512 units) on
the global side.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cnnlab.train import epoch_seed

N, BATCH, UNITS = 60_000, 64, 512


def main() -> None:
    seed = epoch_seed(0, 1)
    data = torch.Generator().manual_seed(seed)
    torch.randperm(N, generator=data)
    first_angles = torch.rand(BATCH, generator=data)
    stream = torch.rand(4 * N, generator=torch.Generator().manual_seed(seed))
    starts = [i for i in range(len(stream) - BATCH)
              if torch.equal(stream[i:i + BATCH], first_angles)]
    print(f"data generator: the permutation of {N} images takes the first {starts[0]} "
          f"numbers; batch k's angles start at {starts[0]} + {2 * BATCH}·(k−1), its flips "
          f"{BATCH} later")

    ones = torch.ones(BATCH, UNITS)
    torch.manual_seed(seed)
    masks = [F.dropout(ones, 0.5, training=True) for _ in range(2)]
    per_step = next(k for k in (UNITS * BATCH // 2, UNITS * BATCH, 2 * UNITS * BATCH)
                    if skipped_then_dropout(seed, k, ones).equal(masks[1]))
    print(f"global generator: one dropout mask of {BATCH}×{UNITS} units takes {per_step} "
          f"numbers, so step t's mask reads numbers {per_step}·(t−1) to {per_step}·t − 1")
    print(f"so step 1's mask reads the numbers that made the permutation, and step 2's "
          f"those of batches {1 + (per_step - starts[0]) // (2 * BATCH)} to "
          f"{1 + (2 * per_step - 1 - starts[0]) // (2 * BATCH)}'s angles and flips")


def skipped_then_dropout(seed: int, skip: int, ones: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(seed)
    torch.rand(skip)
    return F.dropout(ones, 0.5, training=True)


if __name__ == "__main__":
    main()
