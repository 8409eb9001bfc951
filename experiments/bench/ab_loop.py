"""A/B of `train_one_epoch` before (commit 5a9d56a) and after the recipe redesign, in one
process, alternating epoch by epoch on the same data and network.

    git worktree add /tmp/base 5a9d56a
    python results/bench/ab_loop.py /tmp/base/src src DATA_DIR lenet 9600 20

The old package is imported first and its functions kept; then every `cnnlab` module is
dropped and the new package imported in its place.
"""

import statistics
import sys
import time
from pathlib import Path

import torch

old_src, new_src, data_dir, name, images, repeats = sys.argv[1:7]
images, repeats = int(images), int(repeats)
cpu = torch.device("cpu")

sys.path.insert(0, old_src)
import cnnlab.models as old_models  # noqa: E402
import cnnlab.train as old_train  # noqa: E402
from cnnlab.data import load_split  # noqa: E402

data = load_split(Path(data_dir), "train").head(images)
old_config = old_train.TrainConfig.from_preset(name)
torch.manual_seed(0)
old_model = old_train.prepare_model(old_models.get_model(name), cpu)
old_optimizer = old_train.make_optimizer(old_model, old_config.lr, cpu)

for module in [m for m in sys.modules if m.startswith("cnnlab")]:
    del sys.modules[module]
sys.path[0] = new_src
import cnnlab.train as new_train  # noqa: E402
from cnnlab.device import prepare_model  # noqa: E402
from cnnlab.models import get_model  # noqa: E402
from cnnlab.parts import build_parts  # noqa: E402
from cnnlab.recipe import builtin  # noqa: E402

assert old_train.__file__ != new_train.__file__
torch.manual_seed(0)
parts = build_parts(builtin(name), prepare_model(get_model(name), cpu), cpu, 1000)


def old(epoch: int) -> None:
    old_train.train_one_epoch(old_model, old_optimizer, data, old_config, epoch)


def new(epoch: int) -> None:
    new_train.train_one_epoch(parts, data, epoch)


old(1)
new(1)
rates: dict[str, list[float]] = {"old": [], "new": []}
for r in range(repeats):
    order = [("old", old), ("new", new)] if r % 2 == 0 else [("new", new), ("old", old)]
    for label, fn in order:
        start = time.perf_counter()
        fn(2 + r)
        rates[label].append(images / (time.perf_counter() - start))
paired = statistics.median(a / b for a, b in zip(rates["new"], rates["old"], strict=True))
print(f"{name}: median img/s old {statistics.median(rates['old']):.0f}, "
      f"new {statistics.median(rates['new']):.0f}; median new/old per pair {paired:.3f}")
