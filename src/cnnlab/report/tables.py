"""The study report's tables of results and of time to accuracy, with named columns.

A column is named by its header, so a caller that shows part of a table (the terminal after
`cnnlab report`) picks its columns by name.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import NamedTuple

from cnnlab.device import train_gflops
from cnnlab.models import count_macs, count_parameters, create_model, is_user_code
from cnnlab.recipe import STUDY_ORDER, builtin
from cnnlab.runs import Run
from cnnlab.stats import mean_interval, sample_std

# The results table's columns that fit a terminal.
TERMINAL_COLUMNS = ("recipe", "seeds", "final test acc (%)", "study (%)", "Δ (points)",
                    "epochs", "training time (s, all seeds)")


class Table(NamedTuple):
    """Headers and rows of cells; a column is named by its header."""

    headers: list[str]
    rows: list[list[str]]

    @classmethod
    def from_records(cls, records: list[dict[str, str]]) -> Table:
        """A table of rows given as {header: cell}, each with the same headers in order."""
        headers = list(records[0]) if records else []
        return cls(headers, [[record[h] for h in headers] for record in records])

    def select(self, names: Sequence[str]) -> Table:
        """Only the named columns, in the order named."""
        index = [self.headers.index(name) for name in names]
        return Table(list(names), [[row[i] for i in index] for row in self.rows])


# --------------------------------------------------------------------------- cells

def spread(values: list[float]) -> str:
    """The value for one run; mean ± std (min–max) for several."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return (f"{statistics.mean(values):.2f} ± {sample_std(values):.2f} "
            f"({min(values):.2f}–{max(values):.2f})")


def pct_summary(values: list[float]) -> str:
    """Fractions as percentages, in `spread`'s form."""
    return spread([100 * v for v in values])


def mean_final(runs: list[Run]) -> float:
    return statistics.mean(r.final_acc for r in runs)


def trained_as_study(runs: list[Run]) -> bool:
    """Whether the runs trained as long as the study's recipe, on all the data: only then
    is their accuracy comparable with the study's (a sweep may run its first epochs only)."""
    return all((r.recipe.name not in STUDY_ORDER
                or r.recipe.epochs == builtin(r.recipe.name).epochs)
               and not r.recipe.limit_train and not r.recipe.limit_test for r in runs)


def epochs_cell(runs: list[Run]) -> str:
    cells = dict.fromkeys(str(len(r.metrics)) if r.complete else
                          f"{len(r.metrics)} of {r.planned_epochs} (incomplete)" for r in runs)
    return ", ".join(cells)


def recorded(runs: list[Run], key: str, missing: str) -> str:
    """The distinct values the runs recorded in config.json under `key`, in order; `missing`
    stands for a run that recorded none (absent or null)."""
    return ", ".join(dict.fromkeys(str(r.info.get(key) or missing) for r in runs))


# --------------------------------------------------------------------------- results

def interval_cell(runs: list[Run]) -> str:
    """Student's t interval of the mean accuracy over seeds, in percent; empty for one
    seed. Runs that collapsed to chance make the spread bimodal and such an interval
    meaningless: the cell says so (section 3 compares the runs that learned)."""
    collapsed = sum(r.collapsed for r in runs)
    if collapsed:
        return f"— ({collapsed} of {len(runs)} collapsed)"
    interval = mean_interval([r.final_acc for r in runs])
    return "" if interval is None else f"{100 * interval[0]:.2f}–{100 * interval[1]:.2f}"


def results_table(groups: dict[str, list[Run]]) -> Table:
    return Table.from_records([result_record(name, runs) for name, runs in groups.items()])


def result_record(name: str, runs: list[Run]) -> dict[str, str]:
    """One recipe's row of the results table."""
    study = runs[0].recipe.study.accuracy
    spec = runs[0].recipe.model
    model = None if is_user_code(spec.name) else create_model(spec.name, spec.args)
    epochs = [row for r in runs for row in r.metrics]
    return {
        "recipe": name,
        "seeds": ", ".join(str(r.recipe.seed) for r in runs),
        "final test acc (%)": pct_summary([r.final_acc for r in runs]),
        "mean's 95 % interval (%)": interval_cell(runs),
        "study (%)": "" if study is None else f"{100 * study:.1f}",
        "Δ (points)": "" if study is None else (f"{100 * (mean_final(runs) - study):+.2f}"
                                                if trained_as_study(runs)
                                                else "— (not its recipe)"),
        "best-epoch test acc (%, picked on test set: optimistic)":
            pct_summary([r.best_acc for r in runs]),
        "parameters": "—" if model is None else f"{count_parameters(model):,}",
        "MACs/image": "—" if model is None else f"{count_macs(model):,}",
        "epochs": epochs_cell(runs),
        "training time (s, all seeds)": f"{sum(row['seconds'] for row in epochs):.1f}",
        "median train img/s": f"{statistics.median(row['train_img_per_s'] for row in epochs):.0f}",
        "device": recorded(runs, "device", "?"),
    }


# --------------------------------------------------------------------------- time to accuracy

def study_best() -> float:
    """The study's best accuracy (its custom network's 93.3 %): the bar for time to accuracy."""
    return max(builtin(name).study.accuracy for name in STUDY_ORDER)


def time_to(run: Run, accuracy: float) -> tuple[int, float] | None:
    """The first epoch whose test accuracy reaches `accuracy`, and the seconds until then."""
    for row in run.evaluated:
        if row["test_acc"] >= accuracy:
            return row["epoch"], row["elapsed"]
    return None


def split_by_machine(groups: dict[str, list[Run]]
                     ) -> dict[str | None, dict[str, list[Run]]]:
    """The groups split by where each run recorded in config.json that it ran (machine,
    device and threads: one CPU's time with 1 thread is not its time with 2), in the order
    they first appear, then None for the runs that recorded no machine (older folders):
    times from different machines never share a mean."""
    split: dict[str | None, dict[str, list[Run]]] = {}
    for name, runs in groups.items():
        for run in runs:
            info = run.info
            where = (f"{info['machine']}, {info.get('device', '?')} × "
                     f"{info.get('threads', '?')} threads") if info.get("machine") else None
            split.setdefault(where, {}).setdefault(name, []).append(run)
    return dict(sorted(split.items(), key=lambda item: item[0] is None))


def time_table(groups: dict[str, list[Run]], target: float) -> Table:
    records = []
    for name, runs in groups.items():
        reached = [hit for r in runs if (hit := time_to(r, target))]
        records.append({
            "recipe": name,
            "seeds": str(len(runs)),
            f"seeds reaching {100 * target:.1f}%": f"{len(reached)} of {len(runs)}",
            "time to reach it (min)": spread([t / 60 for _, t in reached]) if reached
            else "never",
            "first epoch": ", ".join(str(e) for e, _ in reached) or "–",
            "final accuracy": pct_summary([r.final_acc for r in runs]),
            "training time per run (min)": spread([r.elapsed[-1] / 60 for r in runs]),
            "train GFLOP/s (% of matmul peak)": gflops_cell(runs),
            # older run folders did not record the CPU or GPU model
            "machine": recorded(runs, "machine", "not recorded"),
        })
    return Table.from_records(records)


def gflops_cell(runs: list[Run]) -> str:
    """The runs' achieved training GFLOP/s (median images/s over their epochs), and its share
    of the fp32 matmul peak the runs measured as they started, where they did."""
    spec = runs[0].recipe.model
    if is_user_code(spec.name):
        return "—"
    images_per_s = statistics.median(row["train_img_per_s"] for r in runs for row in r.metrics)
    gflops = train_gflops(images_per_s, count_macs(create_model(spec.name, spec.args)))
    peaks = [r.info["matmul_peak_gflops"] for r in runs if r.info.get("matmul_peak_gflops")]
    share = f" ({100 * gflops / statistics.median(peaks):.0f} %)" if peaks else ""
    return f"{gflops:.0f}{share}"
