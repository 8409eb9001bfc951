"""A/B of `train_one_epoch` before (commit 5a9d56a) and after the recipe redesign, in one
process, alternating epoch by epoch on the same data and network.

    git worktree add /tmp/base 5a9d56a
    python -m experiments.bench.ab_loop /tmp/base/src src DATA_DIR lenet 9600 20

Two versions of one package cannot be imported side by side by name, so this script loads
them by hand (load_cnnlab): the old package first, keeping its functions, then every
`cnnlab` module is dropped and the new package loaded in its place. It imports nothing else
from cnnlab or experiments, so it does not depend on which cnnlab is installed.
"""

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import torch


def load_cnnlab(src: str) -> ModuleType:
    """Load the package `cnnlab` from the folder `src`/cnnlab, after forgetting every cnnlab
    module loaded so far; its submodules are then found there as well."""
    for module in [m for m in sys.modules if m == "cnnlab" or m.startswith("cnnlab.")]:
        del sys.modules[module]
    folder = Path(src) / "cnnlab"
    spec = importlib.util.spec_from_file_location(
        "cnnlab", folder / "__init__.py", submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["cnnlab"] = package
    spec.loader.exec_module(package)
    return package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for arg in ("old_src", "new_src", "data_dir", "model"):
        parser.add_argument(arg)
    parser.add_argument("images", type=int)
    parser.add_argument("repeats", type=int)
    args = parser.parse_args()
    old_src, new_src, data_dir = args.old_src, args.new_src, args.data_dir
    name, images, repeats = args.model, args.images, args.repeats
    cpu = torch.device("cpu")

    load_cnnlab(old_src)
    old_models = importlib.import_module("cnnlab.models")
    old_train = importlib.import_module("cnnlab.train")
    data = importlib.import_module("cnnlab.data").load_split(Path(data_dir), "train").head(images)
    old_config = old_train.TrainConfig.from_preset(name)
    torch.manual_seed(0)
    old_model = old_train.prepare_model(old_models.get_model(name), cpu)
    old_optimizer = old_train.make_optimizer(old_model, old_config.lr, cpu)

    load_cnnlab(new_src)
    new_train = importlib.import_module("cnnlab.train")
    prepare_model = importlib.import_module("cnnlab.device").prepare_model
    get_model = importlib.import_module("cnnlab.models").get_model
    build_parts = importlib.import_module("cnnlab.parts").build_parts
    builtin = importlib.import_module("cnnlab.recipe").builtin

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


if __name__ == "__main__":
    main()
