"""The path from the study's recipe to faster ones, one change at a time, judged on the
validation split: the rows of ABLATION.md.

Run from the repository root (CNNLAB_DATA or --data-dir pointing at Fashion-MNIST):

    python -m experiments.recipes.ablate run [--rows KEY,KEY] [--seeds 0,1]
    python -m experiments.recipes.ablate table > results/recipes/ABLATION.md

`run` trains each row's seeds one after another, each with `cnnlab train` on one thread,
into results/recipes/ablation/<row>-seed<S>/; finished runs are skipped and interrupted
ones resumed, so it can be stopped and run again. Two `run`s side by side (say --seeds 0
and --seeds 1) use both cores of a 2-core machine; the training times in the table are
then one-thread times with the other core busy, comparable between rows on one machine
only. Every row
holds out 10,000 training images (`--val-split 10000`) and is judged by its final
validation accuracy; the test set is evaluated each epoch by the training loop but never
read here. `table` prints ABLATION.md: the table with the command of each row.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path

from cnnlab.runs import Run, read_run
from experiments.common import int_list, run_cnnlab

OUT = Path("results/recipes/ablation")  # from the repository root, as the commands print
VAL = 10_000


@dataclass
class Row:
    key: str  # run folders are <key>-seed<S>
    change: str  # what this row changes, against the row it builds on
    recipe: str  # a built-in recipe
    settings: dict[str, str]  # --set KEY=VALUE, everything that differs from the recipe
    kept: bool | str  # whether the rows after it build on it; "baseline": the path's first
    # row, built on; another str (shown as written): not built on, e.g. "in R" for a row
    # measured alone against the same row as others, which row R joins

    def command(self, seed: int | str) -> list[str]:
        sets = [arg for k, v in self.settings.items() for arg in ("--set", f"{k}={v}")]
        return ["cnnlab", "train", self.recipe, "--val-split", str(VAL), "--seed", str(seed),
                "--threads", "1", *sets, "--out", str(OUT / f"{self.key}-seed{seed}")]


def path(recipe: str, steps: list[tuple[str, str, dict[str, str], bool | str]],
         base: dict[str, str] | None = None) -> list[Row]:
    """Rows that each add one change to the last kept row, starting from `recipe` with
    `base` set; a change that did not help is measured (kept=False) and the next row builds
    on the row before it."""
    rows, settings = [], dict(base or {})
    for key, change, update, kept in steps:
        row = Row(key, change, recipe, {**settings, **update}, kept)
        rows.append(row)
        if kept in (True, "baseline"):
            settings = row.settings
    return rows


SGD_ONECYCLE = {"batch_size": "256", "optimizer.name": "sgd", "optimizer.lr": "0.4",
                "optimizer.nesterov": "true", "optimizer.weight_decay": "5e-4",
                "optimizer.norm_bias_decay": "false", "schedule.name": "onecycle",
                "schedule.anneal": "linear"}
SHIFT_FLIP = '[{name="translate", pixels=2}, {name="alternating_flip"}]'
SHIFT_FLIP_ERASE = '[{name="translate", pixels=2}, {name="alternating_flip"}, {name="erase"}]'
ROWS: list[Row] = path("custom", [
    ("study-1ep", "the study's `custom` recipe, cut to 1 epoch",
     {"epochs": "1"}, "baseline"),
    ("speednet-2ep", "speednet (32/64/128, depth 2) instead of the custom network, 2 epochs",
     {"epochs": "2", "model.name": "speednet"}, True),
    ("sgd-onecycle", "Nesterov SGD at batch 256 on a linear one-cycle schedule instead of "
     "Adam with StepLR", SGD_ONECYCLE, True),
    ("label-smoothing", "cross-entropy with label smoothing 0.1",
     {"loss.label_smoothing": "0.1"}, True),
    ("translate-altflip", "random translation by up to 2 pixels and the alternating flip "
     "instead of rotation by up to 10° and a random flip",
     {"augment": SHIFT_FLIP}, False),
    ("whiten", "the frozen 2×2 patch-whitening stem instead of a learned 3×3 convolution",
     {"model.args.whiten": "2"}, True),
    ("flip-tta", "test-time flip averaging", {"evaluate.flip": "true"}, True),
    ("ema", "an exponential moving average of the weights (decay 0.99, from epoch 2)",
     {"average.name": "ema", "average.decay": "0.99", "average.start_epoch": "2"}, False),
    ("4-epochs", "4 epochs instead of 2", {"epochs": "4"}, True),
    ("translate-altflip-4ep", "translation and the alternating flip again, at 4 epochs",
     {"augment": SHIFT_FLIP}, True),
    ("6-epochs", "6 epochs instead of 4: the recipe `fast` before Muon", {"epochs": "6"}, True),
    ("wide", "widths 64/128/256 instead of 32/64/128 (3.7× the multiply-adds)",
     {"model.args.widths": "[64, 128, 256]"}, True),
    ("erase", "random erasing (p 0.5) after the flip", {"augment": SHIFT_FLIP_ERASE}, False),
    ("20-epochs", "20 epochs instead of 6", {"epochs": "20"}, True),
    ("erase-20ep", "random erasing again, at 20 epochs", {"augment": SHIFT_FLIP_ERASE}, True),
    ("26-epochs", "26 epochs instead of 20: about 50 minutes at two threads on all 60k "
     "images: the recipe `strong` before Muon", {"epochs": "26"}, True),
])
# The recipe `fast` as these paths started from (row 6-epochs): the settings it has changed
# since are pinned, so that each row's command still trains what the row measured.
FAST_BEFORE_MUON = {"optimizer.name": "sgd", "evaluate.shift": "0",
                    "evaluate.every_epoch": "true"}
# The sprint: `fast` cut to the epochs that fit two CPU minutes, then each of the CIFAR-10
# speed runs' remaining tricks measured against that baseline alone; the winners together.
SPRINT: list[Row] = path("fast", [
    ("sprint-3ep", "the recipe `fast` before Muon, cut to 3 epochs", {"epochs": "3"},
     "baseline"),
    ("smoothing-0.2", "label smoothing 0.2 instead of 0.1", {"loss.label_smoothing": "0.2"},
     False),
    ("airbench-bn", "BatchNorm as airbench: running-average momentum 0.4 (torch's "
     "convention), scales frozen at 1", {"model.args": "{whiten=2, bn_momentum=0.4, "
                                         "bn_scale=false}"}, False),
    ("identity-init", "identity-initialised block convolutions",
     {"model.args": "{whiten=2, identity=true}"}, False),
    ("narrow-4ep", "widths 24/48/96 instead of 32/64/128 (0.59× the multiply-adds, 1.5× "
     "the images/s) for 4 epochs instead of 3", {"model.args": "{whiten=2, widths=[24, 48, "
                                                 "96]}", "epochs": "4"}, True),
    ("narrow-5ep", "5 epochs instead of 4", {"epochs": "5"}, "in sprint"),
    ("shift-tta", "test-time translation averaging by 1 pixel (3× the evaluation)",
     {"evaluate.shift": "1"}, "in sprint"),
    ("sprint", "5 epochs and translation averaging together, evaluated after the last epoch "
     "only: the recipe `sprint`", {"epochs": "5", "evaluate.shift": "1",
                                   "evaluate.every_epoch": "false"}, True),
    ("muon-0.15", "Muon on the convolution filters at lr 0.15",
     {"optimizer.name": "muon", "optimizer.filter_lr": "0.15"}, False),
    ("lookahead", "lookahead: every 5 steps slow weights move halfway to the network's, "
     "which restarts from them", {"average.name": "lookahead", "average.decay": "0.5",
                                 "average.every": "5"}, False),
    ("whiten-bias-2ep", "the whitening bias frozen after 2 of the 5 epochs",
     {"model.args": "{whiten=2, widths=[24, 48, 96], whiten_bias_epochs=2}"}, False),
    ("norm-bias-lr-4", "4× the learning rate for norm layers and biases",
     {"optimizer.norm_bias_lr_scale": "4"}, False),
    ("logit-scale", "logits scaled by 1/9, as airbench's",
     {"model.args": "{whiten=2, widths=[24, 48, 96], logit_scale=0.111111}"}, False),
    ("muon-0.05", "Muon on the convolution filters at lr 0.05 (SGD for the rest)",
     {"optimizer.name": "muon", "optimizer.filter_lr": "0.05"}, True),
    ("muon-4ep", "4 epochs instead of 5, with Muon", {"epochs": "4"}, True),
], FAST_BEFORE_MUON)
# 94 % in five minutes: `fast` itself (row 6-epochs above) with the sprint's test-time
# translation averaging, evaluated once, then Muon.
FAST: list[Row] = path("fast", [
    ("fast-shift-tta", "test-time translation averaging by 1 pixel, evaluated after the last "
     "epoch only (kept for the time it saves)",
     {"evaluate.shift": "1", "evaluate.every_epoch": "false"}, True),
    ("fast-muon", "Muon on the convolution filters at lr 0.05 (SGD for the rest)",
     {"optimizer.name": "muon", "optimizer.filter_lr": "0.05"}, True),
], FAST_BEFORE_MUON)
# 95.5 % in an hour: `strong` as it was (row 26-epochs above) with fast's kept changes, and
# the epochs that the one evaluation saves.
STRONG: list[Row] = path("strong", [
    ("strong-muon-32ep", "Muon on the convolution filters at lr 0.05, translation averaging, "
     "evaluated after the last epoch only, and 32 epochs instead of 26: the recipe `strong`",
     {"optimizer.name": "muon", "optimizer.filter_lr": "0.05", "evaluate.shift": "1",
      "evaluate.every_epoch": "false", "epochs": "32"}, True),
])
PATHS = {
    "From the study's recipe to `fast` and `strong`": (
        ROWS, "The two seeds of a row ran side by side."),
    "The sprint: `fast` in two CPU minutes": (
        SPRINT, "Until row `sprint`, the seeds of a row ran one after the other with a study "
        "run (custom_nobn_lr1e-3, one thread) on the other core, and for a few minutes tests "
        "beside them: their times compare roughly; row `sprint` ran its two seeds side by "
        "side. The rows from muon-0.15 to muon-0.05 were each measured against `sprint` "
        "alone; their seeds ran one after the other, one thread, with other work (a study "
        "run, a report rebuild) on the other core. Muon at 0.05 helped and is kept; row "
        "muon-4ep, which builds on it and is the recipe `sprint` since, ran its two seeds side "
        "by side: one epoch less for the same accuracy as `sprint` without Muon. Measured and "
        "not made rows: `torch.compile` of the training step "
        "(experiments/recipes/compile_probe.py: 29.7 s to compile, then 0.82× eager's "
        "speed) and batch 512 (no more images a second); see docs/beyond.md."),
    "94 % in five minutes: `fast` with translation averaging and Muon": (
        FAST, "Each row builds on row 6-epochs of the first table, the recipe `fast` before "
        "Muon (94.27 ± 0.04 %). The seeds of row fast-shift-tta ran one after the other, one "
        "thread, with a study run on the other core; those of fast-muon side by side. With "
        "the test set evaluated once, translation averaging gives the same accuracy in 24 % "
        "less time; Muon then adds 0.27 points, to 94.56 %, about where 94.0 % on the test set "
        "lies (validation runs 0.4–0.5 points above test for these recipes). Row fast-muon is "
        "the recipe `fast` since."),
    "95.5 % in an hour: `strong` with Muon and more epochs": (
        STRONG, "Builds on row 26-epochs of the first table, the recipe `strong` before Muon "
        "(95.30 ± 0.05 %), with the changes kept for `fast` at once and the epochs the one "
        "evaluation saves. Seed 0 ran alone, one thread, the other core idle. Seed 1 ran on "
        "another CPU, an AMD EPYC with AVX2 only (matmul peak 58 GFLOP/s at two threads, "
        "against 143 for the AVX-512 one), at two threads, beside a test run at the lowest "
        "priority: the time column mixes the two and compares with no other row."),
}


def run(rows: list[Row], seeds: list[int]) -> None:
    for row in rows:
        for seed in seeds:
            folder = OUT / f"{row.key}-seed{seed}"
            if (folder / "metrics.csv").exists() and read_run(folder).complete:
                continue
            args = row.command(seed)
            if (folder / "last.pt").exists():
                args = ["cnnlab", "train", "--resume", str(folder), "--threads", "1"]
            print("$", shlex.join(args), flush=True)
            run_cnnlab(*args[1:], "--quiet")


def table(rows: list[Row]) -> str:
    """ABLATION.md: the rows measured so far, a table per path, with the command of each."""
    runs: dict[str, list[Run]] = {}
    for folder in sorted(OUT.glob("*-seed*")):
        run = read_run(folder)
        if run.complete:
            runs.setdefault(folder.name.rsplit("-seed", 1)[0], []).append(run)
    lines = ["# From the study's recipe to faster ones, one change at a time", "",
             "Each row adds one change to the last row marked *kept*; a row that is not kept "
             "was measured and dropped, and the next row builds on the one before it; rows "
             "marked *in R* were each measured alone against the same row, and row R joins "
             "them. "
             f"Every run holds out {VAL:,} training images and is judged by its final "
             "validation accuracy (the test set is never read here). Training time is the "
             "sum of metrics.csv's seconds (training and evaluation), one thread per run with "
             "the other core busy (see each table), on the machine named. Produced by "
             "`python -m experiments.recipes.ablate run --seeds S` for S = 0 and 1, then "
             "`python -m experiments.recipes.ablate table > results/recipes/ABLATION.md`."]
    for title, (path_rows, note) in PATHS.items():
        shown = [row for row in path_rows if row in rows and runs.get(row.key)]
        if not shown:
            continue
        lines += ["", f"## {title}", "", note, "",
                  "| row | change | kept | seeds | validation accuracy (%) | training time "
                  "per run (s) | machine | command (per seed S) |", "|" + " --- |" * 8]
        lines += [table_row(row, runs[row.key]) for row in shown]
    return "\n".join(lines) + "\n"


def table_row(row: Row, done: list[Run]) -> str:
    acc = [100 * r.metrics[-1]["val_acc"] for r in done]
    seconds = [r.elapsed[-1] for r in done]
    cell = (f"{acc[0]:.2f}" if len(acc) == 1 else
            f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f}")
    command = shlex.join(row.command("S"))
    machines = ", ".join(dict.fromkeys(str(r.info.get("machine", "?")) for r in done))
    kept = "yes" if row.kept is True else "no" if row.kept is False else row.kept
    return (f"| {row.key} | {row.change} | {kept} | "
            f"{', '.join(str(r.recipe.seed) for r in done)} | {cell} | "
            f"{statistics.mean(seconds):.0f} | {machines} | `{command}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("run", "table"))
    parser.add_argument("--rows", help="comma-separated row keys (default: all)")
    parser.add_argument("--seeds", type=int_list, default=int_list("0,1"))
    args = parser.parse_args()
    every = [row for rows, _ in PATHS.values() for row in rows]
    keys = args.rows.split(",") if args.rows else [r.key for r in every]
    if unknown := set(keys) - {r.key for r in every}:
        parser.error(f"unknown row(s) {', '.join(sorted(unknown))}")
    rows = [r for r in every if r.key in keys]
    if args.action == "run":
        run(rows, args.seeds)
    else:
        print(table(rows), end="")


if __name__ == "__main__":
    main()
