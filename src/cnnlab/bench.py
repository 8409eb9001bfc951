"""Speed measurement: cnnlab's training path against a reference built like the study's code.

The reference path is what the study ran: a per-sample `Dataset` doing torchvision's
transforms one image at a time (`cnnlab.reference`), `DataLoader(batch_size=64,
shuffle=True, num_workers=0)`, the plain eager module in NCHW and plain Adam. cnnlab's
path keeps the data resident as tensors, augments whole batches on the device, runs
channels_last, and uses the exact fused stem of the custom networks. Both are timed in one
process, alternating repeat by repeat, so that drift of a shared machine hits both sides
alike.

A third measurement, cnnlab's model alone on one fixed batch (no data pipeline, no
bookkeeping), bounds what any loop could reach with this model code: its ratio to the
reference is the ceiling of the speed-up.

Recipes (`--recipes`: built-in names or recipe files) are timed as they train: cnnlab's
loop at the recipe's batch size, augmentation, optimizer and weight average, the recipes
taking turns repeat by repeat. Their achieved GFLOP/s are set against the fp32 matmul peak
measured in the same process (the median of samples taken at the start and after each
repeat): how close each recipe runs to the CPU's limit.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cnnlab import __version__
from cnnlab.augment import eval_batch
from cnnlab.data import ImageSet, load_split
from cnnlab.device import (
    as_input,
    check_precision,
    machine_name,
    matmul_peak_gflops,
    prepare_model,
    train_gflops,
)
from cnnlab.errors import CnnlabError
from cnnlab.inference import predict_logits
from cnnlab.models import count_macs, create_model, fit_to_data, get_model, is_user_code
from cnnlab.models.registry import plain_path
from cnnlab.parts import Parts, build_parts
from cnnlab.recipe import Recipe, builtin, list_builtin
from cnnlab.reference import PerSampleDataset
from cnnlab.train import FIT_IMAGES, train_one_epoch

BATCH = 64


def _timed(fn: Callable[[], object]) -> float:
    """Wall seconds of `fn`, including GPU work it queued."""
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
          y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def reference_train(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                    steps: int) -> float:
    """Seconds for `steps` training steps fed by the per-sample DataLoader."""
    def run() -> None:
        for step, (x, y) in enumerate(loader, 1):
            _step(model, optimizer, x, y)
            if step == steps:
                break
    model.train()
    with plain_path(model):
        return _timed(run)


def cnnlab_train(parts: Parts, data: ImageSet, steps: int) -> float:
    """Seconds for `steps` training steps of cnnlab's own loop (`train_one_epoch`, with its
    loss and accuracy bookkeeping and the recipe's per-step parts) on resident data with
    batched augmentation."""
    subset = data.head(steps * parts.recipe.batch_size)
    return _timed(lambda: train_one_epoch(parts, subset, epoch=1))


def model_only_train(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                     y: torch.Tensor, steps: int) -> float:
    """Seconds for `steps` training steps of the prepared model on one fixed batch."""
    def run() -> None:
        for _ in range(steps):
            _step(model, optimizer, x, y)
    model.train()
    return _timed(run)


def reference_eval(model: nn.Module, loader: DataLoader) -> float:
    def run() -> None:
        with torch.no_grad():
            for x, _ in loader:
                model(x)
    model.eval()
    with plain_path(model):
        return _timed(run)


def _summary(seconds: list[float], images: int) -> dict[str, Any]:
    rates = [images / s for s in seconds]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "samples": rates}


def bench_model(name: str, train_set: ImageSet, test_set: ImageSet, steps: int, repeats: int,
                device: torch.device, between_repeats: Callable[[], None]) -> dict[str, Any]:
    """Train and eval images/s of both paths for one model, alternating repeat by repeat."""
    # Each study network has a recipe of its name; any other is timed under the study's
    # custom recipe (Adam, rotation + flip). The batch is the study's for all.
    base = (builtin(name) if name in list_builtin()
            else builtin("custom").with_overrides({"model.name": name}))
    recipe = base.with_overrides({"batch_size": BATCH})
    torch.manual_seed(0)
    reference = get_model(name).to(device)
    fast = prepare_model(get_model(name), device)
    fast.load_state_dict(reference.state_dict())
    opt_ref = torch.optim.Adam(reference.parameters(), lr=recipe.optimizer.lr)
    parts = build_parts(recipe, fast, device, steps)
    opt_fast = parts.optimizer
    loader = DataLoader(PerSampleDataset(train_set.to("cpu"), bool(recipe.augment)),
                        batch_size=BATCH, shuffle=True, num_workers=0)
    test_loader = DataLoader(PerSampleDataset(test_set.to("cpu"), augment=False),
                             batch_size=BATCH)

    fixed_x = as_input(eval_batch(train_set.images[:BATCH]), fast)
    fixed_y = train_set.labels[:BATCH]

    # Warm-up: first calls allocate and pick kernels.
    reference_train(reference, opt_ref, loader, 3)
    cnnlab_train(parts, train_set, 3)
    model_only_train(fast, opt_fast, fixed_x, fixed_y, 3)
    times: dict[str, list[float]] = {k: [] for k in ("ref_train", "fast_train", "model_only",
                                                     "ref_eval", "fast_eval")}
    for _ in range(repeats):
        times["ref_train"].append(reference_train(reference, opt_ref, loader, steps))
        times["fast_train"].append(cnnlab_train(parts, train_set, steps))
        times["model_only"].append(model_only_train(fast, opt_fast, fixed_x, fixed_y, steps))
        times["ref_eval"].append(reference_eval(reference, test_loader))
        times["fast_eval"].append(_timed(lambda: predict_logits(fast, test_set.images)))
        between_repeats()
    images = steps * BATCH
    result = {
        "macs_per_image": count_macs(get_model(name)),
        "train": {"reference": _summary(times["ref_train"], images),
                  "cnnlab": _summary(times["fast_train"], images),
                  "model_only": _summary(times["model_only"], images)},
        "eval": {"reference": _summary(times["ref_eval"], len(test_set)),
                 "cnnlab": _summary(times["fast_eval"], len(test_set))},
    }
    for kind in ("train", "eval"):
        side = result[kind]
        side["ratio"] = side["cnnlab"]["median"] / side["reference"]["median"]
    train = result["train"]
    train["ceiling_ratio"] = train["model_only"]["median"] / train["reference"]["median"]
    result["train"]["effective_gflops"] = {
        side: train_gflops(result["train"][side]["median"], result["macs_per_image"])
        for side in ("reference", "cnnlab")}
    return result


def bench_recipes(recipes: dict[str, Recipe], train_set: ImageSet, test_set: ImageSet,
                  steps: int, repeats: int, device: torch.device,
                  between_repeats: Callable[[], None]) -> dict[str, dict[str, Any]]:
    """Training images/s of each recipe's own loop, and evaluation images/s with its
    test-time views: what a run of it spends its time on. The recipes take turns, repeat by
    repeat, so that drift of a shared machine hits each alike and their ratios hold."""
    runs = {label: recipe_parts(recipe, train_set, 3 + repeats * steps, device)
            for label, recipe in recipes.items()}
    train: dict[str, list[float]] = {label: [] for label in runs}
    evaluate: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, parts in runs.items():
            train[label].append(cnnlab_train(parts, train_set, steps))
            evaluate[label].append(_timed(lambda parts=parts: predict_logits(
                parts.model, test_set.images, parts.recipe.evaluate)))
        between_repeats()
    result = {}
    for label, parts in runs.items():
        recipe = parts.recipe
        macs = count_macs(create_model(recipe.model.name, recipe.model.args))
        result[label] = {"batch_size": recipe.batch_size, "precision": recipe.precision,
                         "macs_per_image": macs,
                         "train": _summary(train[label], steps * recipe.batch_size),
                         "eval": _summary(evaluate[label], len(test_set))}
        result[label]["train"]["gflops"] = train_gflops(result[label]["train"]["median"], macs)
    first = next(iter(result.values()))["train"]["samples"]
    for r in result.values():  # paired: each turn's images/s against the first recipe's
        r["train"]["vs_first"] = statistics.median(
            rate / rate_first for rate, rate_first in zip(r["train"]["samples"], first,
                                                          strict=True))
    return result


def recipe_parts(recipe: Recipe, train_set: ImageSet, steps: int,
                 device: torch.device) -> Parts:
    """The recipe's model and parts as a run builds them, 3 warm-up steps taken. Its
    schedule counts `steps` steps in every epoch, so that any number of epochs leaves room
    for the warm-up and the timed steps (one-cycle refuses to step past its end)."""
    torch.manual_seed(0)
    model = prepare_model(create_model(recipe.model.name, recipe.model.args), device,
                          recipe.model.memory_format)
    fit_to_data(model, eval_batch(train_set.images[:FIT_IMAGES]))  # as training does
    parts = build_parts(recipe, model, device, steps)
    cnnlab_train(parts, train_set, 3)  # warm-up: first calls allocate and pick kernels
    return parts


def run_bench(models: list[str], data_dir: Path, device: torch.device, steps: int = 30,
              repeats: int = 5, eval_images: int = 2000,
              log: Callable[[str], None] = print,
              recipes: dict[str, Recipe] | None = None) -> dict[str, Any]:
    """`models`: study networks, each against the study-style reference; `recipes`: label →
    recipe (a built-in's name, or the file it came from), timed in their own loops."""
    recipes = recipes or {}
    for label, recipe in recipes.items():  # refused before the data loads and anything runs
        if is_user_code(recipe.model.name):
            raise CnnlabError(f"--recipes {label}: its model {recipe.model.name} is your own "
                              "code, which `cnnlab bench` does not import; it times built-in "
                              "networks (a run's metrics.csv records its training images/s)")
        check_precision(recipe.precision, device)
    train_set = load_split(data_dir, "train").to(device)
    # Every batch is checked before anything is measured, not after minutes of it.
    batches = ([(f"{BATCH}", BATCH)] if models else []) + [
        (f"recipe {label}'s batch {recipe.batch_size}", recipe.batch_size)
        for label, recipe in recipes.items()]
    for what, batch in batches:
        if steps * batch > len(train_set):
            raise CnnlabError(f"{steps} steps of {what} need {steps * batch} training "
                              f"images; the data has {len(train_set)}: lower --steps")
    test_set = load_split(data_dir, "test").head(eval_images).to(device)
    peaks: list[float] = []

    def sample_peak() -> None:
        """The CPU's matmul peak, sampled once per repeat beside the timings set against it:
        one sample taken while a shared machine is busy would skew every % of peak."""
        if device.type == "cpu":
            peaks.append(matmul_peak_gflops())

    sample_peak()
    result: dict[str, Any] = {
        "cnnlab": __version__, "torch": torch.__version__, "device": str(device),
        "threads": torch.get_num_threads(), "machine": machine_name(device),
        "batch_size": BATCH, "steps": steps, "repeats": repeats, "eval_images": len(test_set),
        "models": {}, "recipes": {},
    }
    for name in models:
        log(f"benchmarking {name} ({repeats} repeats of {steps} steps per path)…")
        result["models"][name] = bench_model(name, train_set, test_set, steps, repeats, device,
                                             sample_peak)
    if recipes:
        log(f"benchmarking recipes {', '.join(recipes)} ({repeats} repeats of {steps} steps "
            "each, taking turns)…")
        result["recipes"] = bench_recipes(recipes, train_set, test_set, steps, repeats, device,
                                          sample_peak)
    result["matmul_peak_gflops"] = statistics.median(peaks) if peaks else None
    result["matmul_peak_samples"] = peaks
    return result


def format_bench(result: dict[str, Any]) -> str:
    """The bench as Markdown tables (the README shows one)."""
    peak = result["matmul_peak_gflops"]
    lines = [
        f"{result['machine']}, {result['threads']} threads, torch {result['torch']}, "
        f"device {result['device']}, median (min–max) of {result['repeats']} repeats of "
        f"{result['steps']} training steps",
    ]
    if result["models"]:
        lines += ["", *_models_table(result)]
    if result["recipes"]:
        lines += ["", *_recipes_table(result)]
    if peak is not None:
        lines += ["", f"fp32 matmul peak (2048×2048, same threads): {peak:.0f} GFLOP/s, the "
                  f"median of {len(result['matmul_peak_samples'])} samples, one at the start and "
                  "one after each repeat. "
                  "GFLOP/s counts 3 × 2 × the plain network's MACs per training image, so "
                  "work a model saves (the fused stem, a frozen whitening stem's weight "
                  "gradients) shows as extra effective speed."]
    return "\n".join(lines)


def _recipes_table(result: dict[str, Any]) -> list[str]:
    peak = result["matmul_peak_gflops"]
    lines = ["Recipes, each in its own training loop (its batch, augmentation, optimizer) and "
             "evaluated with its test-time views, taking turns; × first: the median over "
             "repeats of its training images/s against the first recipe's in the same turn; "
             "% of peak: fp32 recipes only:", "",
             "| recipe | batch | MACs/img | train img/s | × first | train GFLOP/s "
             "| % of matmul peak | eval img/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in result["recipes"].items():
        gflops = r["train"]["gflops"]
        share = f"{100 * gflops / peak:.0f} %" if peak and r["precision"] == "fp32" else "—"
        lines.append(f"| {name} | {r['batch_size']} | {r['macs_per_image'] / 1e6:.1f} M | "
                     f"{_rate(r['train'])} | {r['train']['vs_first']:.2f}× | {gflops:.0f} | "
                     f"{share} | {_rate(r['eval'])} |")
    return lines


def _models_table(result: dict[str, Any]) -> list[str]:
    peak = result["matmul_peak_gflops"]
    lines = [
        f"Study networks at the study's batch {result['batch_size']}, cnnlab's path against "
        "the study-style reference:",
        "",
        "| model | MACs/img | train img/s reference | train img/s cnnlab | train × "
        "| model alone img/s (ceiling ×) "
        "| eval img/s reference | eval img/s cnnlab | eval × | train GFLOP/s ref → cnnlab |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in result["models"].items():
        t, e = m["train"], m["eval"]
        flops = t["effective_gflops"]
        of_peak = f" ({100 * flops['cnnlab'] / peak:.0f} % of peak)" if peak else ""
        lines.append(
            f"| {name} | {m['macs_per_image'] / 1e6:.1f} M | {_rate(t['reference'])} | "
            f"{_rate(t['cnnlab'])} | **{t['ratio']:.2f}×** | "
            f"{t['model_only']['median']:,.0f} ({t['ceiling_ratio']:.2f}×) | "
            f"{_rate(e['reference'])} | {_rate(e['cnnlab'])} | {e['ratio']:.2f}× | "
            f"{flops['reference']:.0f} → {flops['cnnlab']:.0f}{of_peak} |")
    return lines + ["", "Model alone: cnnlab's model on one fixed batch, no data pipeline; "
                    "its ratio to the reference is the most any training loop could gain "
                    "with this model code."]


def _rate(s: dict[str, float]) -> str:
    return f"{s['median']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f})"
