"""Figures of training runs, and the study report built from run folders alone.

`build_report` reads `DIR/runs/<recipe>-seed<k>/` (metrics.csv, config.json, last.pt) and
writes REPORT.md, a self-contained report.html and PNG figures, so a report can be
rebuilt, restyled or extended at any time without training again.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from cnnlab import __version__  # noqa: E402
from cnnlab.data import CLASSES, ImageSet, load_split  # noqa: E402
from cnnlab.device import machine_name  # noqa: E402
from cnnlab.errors import CnnlabError  # noqa: E402
from cnnlab.files import atomic_write, atomic_write_text  # noqa: E402
from cnnlab.inference import Predictor  # noqa: E402
from cnnlab.models import count_macs, count_parameters, create_model, is_user_code  # noqa: E402
from cnnlab.recipe import (  # noqa: E402
    STUDY_ORDER,
    Recipe,
    builtin,
    changed_settings,
    from_record,
    list_builtin,
)
from cnnlab.runs import RunFolder, git_commit  # noqa: E402
from cnnlab.stats import wilson_interval  # noqa: E402

ABLATION = ("custom", "custom_nobn", "custom_nobn_lr1e-3")
MAX_MISCLASSIFIED = 24
SECTIONS = ("1. Results", "2. Loss curves", "3. BatchNorm ablation", "4. Final models",
            "5. Time to accuracy", "6. Environment")


# --------------------------------------------------------------------------- run folders

@dataclass
class Run:
    """One training run as its folder recorded it."""

    path: Path
    info: dict[str, Any]          # config.json
    recipe: Recipe                # as recorded in config.json
    rows: list[dict[str, Any]]    # metrics.csv

    @property
    def planned_epochs(self) -> int:
        return self.recipe.epochs

    @property
    def complete(self) -> bool:
        return len(self.rows) >= self.planned_epochs

    @property
    def final_acc(self) -> float:
        return self.rows[-1]["test_acc"]

    @property
    def best_acc(self) -> float:
        return max(r["test_acc"] for r in self.rows)


def read_run(path: Path) -> Run:
    """Parse one run folder; a damaged file is an error, never a silently wrong number."""
    folder = RunFolder(path)
    info = folder.info(require_checkpoint=False)
    return Run(path, info, from_record(info, str(folder.config_path)), folder.read_metrics())


def recipe_order(name: str) -> tuple[int, str]:
    return (STUDY_ORDER.index(name) if name in STUDY_ORDER else len(STUDY_ORDER), name)


def load_runs(study_dir: Path) -> tuple[dict[str, list[Run]], list[str]]:
    """Runs grouped by recipe name (the study's first, in its order; then by seed), and
    notes on runs left out."""
    if not study_dir.is_dir():
        raise CnnlabError(f"study folder {study_dir} does not exist; give the folder that "
                          "holds runs/<recipe>-seed<k>/")
    folders = sorted(p for p in (study_dir / "runs").glob("*/")
                     if RunFolder(p).config_path.exists() or RunFolder(p).metrics_path.exists())
    if not folders:
        raise CnnlabError(f"{study_dir / 'runs'} holds no run folders; train into it first, "
                          f"e.g. `cnnlab train lenet --seed 0 --out {study_dir}/runs/lenet-seed0`")
    groups: dict[str, list[Run]] = {}
    notes = []
    for folder in folders:
        run = read_run(folder)
        if not run.rows:
            notes.append(f"{folder.name} has no finished epoch and is left out.")
            continue
        groups.setdefault(run.recipe.name, []).append(run)
    if not groups:
        raise CnnlabError(f"no run in {study_dir / 'runs'} has finished an epoch; "
                          "let training run for at least one epoch")
    return ({name: sorted(groups[name], key=lambda r: r.recipe.seed)
             for name in sorted(groups, key=recipe_order)}, notes)


# --------------------------------------------------------------------------- numbers

def std(values: list[float]) -> float | None:
    """Sample standard deviation (n − 1); None for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else None


def spread(values: list[float]) -> str:
    """The value for one run; mean ± std (min–max) for several."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return (f"{statistics.mean(values):.2f} ± {std(values):.2f} "
            f"({min(values):.2f}–{max(values):.2f})")


def pct_summary(values: list[float]) -> str:
    """Fractions as percentages, in `spread`'s form."""
    return spread([100 * v for v in values])


def mean_final(runs: list[Run]) -> float:
    return statistics.mean(r.final_acc for r in runs)


def epochs_cell(runs: list[Run]) -> str:
    cells = dict.fromkeys(str(len(r.rows)) if r.complete else
                          f"{len(r.rows)} of {r.planned_epochs} (incomplete)" for r in runs)
    return ", ".join(cells)


# Within 5 points of chance: a network that collapsed (a no-BN network at a high learning
# rate can die in its first steps) rather than trained badly.
CHANCE_BAND = 1 / len(CLASSES) + 0.05


def did_not_learn(run: Run) -> bool:
    return run.final_acc < CHANCE_BAND


def volatility(run: Run) -> float | None:
    """How erratic the test loss is: std of its epoch-to-epoch changes."""
    changes = np.diff([r["test_loss"] for r in run.rows])
    return std(changes.tolist())


def results_table(groups: dict[str, list[Run]]) -> tuple[list[str], list[list[str]]]:
    headers = ["recipe", "seeds", "final test acc (%)", "study (%)", "Δ (points)",
               "best-epoch test acc (%, picked on test set: optimistic)", "parameters",
               "MACs/image", "epochs", "training time (s, all seeds)", "median train img/s",
               "device"]
    rows = []
    for name, runs in groups.items():
        study = runs[0].recipe.study.accuracy
        spec = runs[0].recipe.model
        model = None if is_user_code(spec.name) else create_model(spec.name, spec.args)
        rows.append([
            name,
            ", ".join(str(r.recipe.seed) for r in runs),
            pct_summary([r.final_acc for r in runs]),
            "" if study is None else f"{100 * study:.1f}",
            "" if study is None else (f"{100 * (mean_final(runs) - study):+.2f}"
                                      if trained_as_study(runs) else "— (not its recipe)"),
            pct_summary([r.best_acc for r in runs]),
            "—" if model is None else f"{count_parameters(model):,}",
            "—" if model is None else f"{count_macs(model):,}",
            epochs_cell(runs),
            f"{sum(row['seconds'] for r in runs for row in r.rows):.1f}",
            f"{statistics.median(row['train_img_per_s'] for r in runs for row in r.rows):.0f}",
            ", ".join(dict.fromkeys(str(r.info.get("device", "?")) for r in runs)),
        ])
    return headers, rows


def trained_as_study(runs: list[Run]) -> bool:
    """Whether the runs trained as long as the study's recipe, on all the data: only then
    is their accuracy comparable with the study's (a sweep may run its first epochs only)."""
    return all((r.recipe.name not in STUDY_ORDER
                or r.recipe.epochs == builtin(r.recipe.name).epochs)
               and not r.recipe.limit_train and not r.recipe.limit_test for r in runs)


def band_verdict(name: str, runs: list[Run]) -> str | None:
    """Whether the final accuracy lands within the recipe's tolerance of the study's."""
    study_spec = runs[0].recipe.study
    tolerance = study_spec.tolerance
    if tolerance is None or not trained_as_study(runs):
        return None
    study, ours = 100 * study_spec.accuracy, 100 * mean_final(runs)
    inside = abs(ours - study) <= tolerance
    return (f"{name}: {ours:.2f}% is {'within' if inside else 'OUTSIDE'} ±{tolerance} "
            f"points of the study's {study:.1f}%"
            + ("." if all(r.complete for r in runs) else " (run incomplete)."))


def results_notes(groups: dict[str, list[Run]]) -> list[str]:
    notes = [v for name, runs in groups.items() if (v := band_verdict(name, runs))]
    if any(name in STUDY_ORDER for name in groups):
        notes += [f"{name}: no run of this study recipe in this folder yet."
                  for name in STUDY_ORDER if name not in groups]
    for recipe, runs in groups.items():
        for r in runs:
            if did_not_learn(r):
                notes.append(f"{r.path.name} did not learn: final test accuracy "
                             f"{100 * r.final_acc:.2f}% where chance is "
                             f"{100 / len(CLASSES):.0f}% (final train loss "
                             f"{r.rows[-1]['train_loss']:.3f}; ln 10 = 2.303). It counts in "
                             f"the means and spreads.")
            if not r.complete:
                notes.append(f"{r.path.name} is incomplete: {len(r.rows)} of "
                             f"{r.planned_epochs} epochs; its last finished epoch counts as "
                             "final.")
        limits = {(r.recipe.limit_train, r.recipe.limit_test) for r in runs}
        for train_n, test_n in sorted(limits, key=str):
            if train_n or test_n:
                notes.append(f"{recipe}: trained on {train_n or 'all'} training images and "
                             f"tested on {test_n or 'all'} test images, so its accuracy is not "
                             "comparable with the study's.")
    return notes


def ablation_text(groups: dict[str, list[Run]]) -> list[str]:
    """The BatchNorm ablation's findings, computed from the runs (no written-in verdicts)."""
    present = [name for name in ABLATION if name in groups]
    if len(present) < 2:
        return [f"Comparison skipped: needs at least two of {', '.join(ABLATION)}; "
                f"this study has {', '.join(present) or 'none'}."] + collapse_text(groups,
                                                                                   present)
    means = {name: mean_final(groups[name]) for name in present}
    best = max(present, key=means.get)
    others = [name for name in present if name != best]
    gaps = ", ".join(f"{100 * (means[best] - means[o]):.2f} points above {o} "
                     f"({100 * means[o]:.2f}%)" for o in others)
    text = [f"Best final test accuracy: {best} with {100 * means[best]:.2f}% "
            f"(mean over {len(groups[best])} seed(s)), {gaps}."]

    vol = {}
    for name in present:
        # A collapsed run's test loss is flat, which would pass for stable training.
        learned = [r for r in groups[name] if not did_not_learn(r)]
        values = [v for v in map(volatility, learned) if v is not None]
        vol[name] = statistics.mean(values) if values else None
    listed = "; ".join(f"{name} {v:.4f}" if v is not None else
                       f"{name} n/a (needs 3 epochs of a run that learned)"
                       for name, v in vol.items())
    sentence = ("Test-loss volatility, the standard deviation of epoch-to-epoch test-loss "
                f"changes (mean over the seeds that learned): {listed}.")
    base = vol.get("custom")
    verdicts = [f"{name}'s test loss is {'more' if v > base else 'not more'} erratic than "
                f"custom's ({v / base:.1f}×)"
                for name, v in vol.items() if name != "custom" and v is not None] if base else []
    text.append(" ".join([sentence, "; ".join(verdicts) + "." if verdicts else
                          "A comparison with BatchNorm needs custom with 3 or more epochs."]))

    spreads = []
    for o in others:
        if len(groups[best]) < 2 or len(groups[o]) < 2:
            spreads.append(f"against {o} it cannot be judged: "
                           f"{best if len(groups[best]) < 2 else o} has only one seed")
            continue
        spread = 100 * max(std([r.final_acc for r in groups[n]]) for n in (best, o))
        gap = 100 * (means[best] - means[o])
        spreads.append(f"against {o} the gap of {gap:.2f} points "
                       f"{'exceeds' if gap > spread else 'does not exceed'} the larger "
                       f"seed-to-seed std ({spread:.2f} points)")
    text.append("Gap versus seed-to-seed spread: " + "; ".join(spreads) + ".")

    return text + collapse_text(groups, present)


def collapse_text(groups: dict[str, list[Run]], present: list[str]) -> list[str]:
    """How often each recipe's runs collapsed to chance, with a 95 % interval, and when."""
    text = []
    for name in present:
        runs = groups[name]
        collapsed = [r for r in runs if did_not_learn(r)]
        trained = [r for r in runs if not did_not_learn(r)]
        low, high = wilson_interval(len(collapsed), len(runs))
        when = ", ".join(f"{r.path.name} from epoch {chance_from(r)}" for r in collapsed)
        text.append(f"{len(collapsed)} of {len(runs)} {name} runs did not learn"
                    + (f" (at chance level to the end: {when})" if collapsed else "")
                    + f"; collapse rate {100 * len(collapsed) / len(runs):.0f}% (95% Wilson "
                    f"interval {100 * low:.0f}–{100 * high:.0f}%); "
                    + (f"the runs that did reached {100 * mean_final(trained):.2f}% on average."
                       if trained else "none learned."))
    return text


def more_seeds_text(folder: Path) -> list[str]:
    """Collapse rates of the ablation recipes over the finished runs of another folder (a
    sweep over many seeds, often of fewer epochs): reported beside the study's, not mixed in."""
    groups, _ = load_runs(folder)
    present = [name for name in ABLATION if name in groups]
    if not present:
        raise CnnlabError(f"{folder / 'runs'} holds no run of {', '.join(ABLATION)}; give a "
                          "folder of BatchNorm-ablation runs to --collapse-runs")
    finished = {name: [r for r in groups[name] if r.complete] for name in present}
    epochs = sorted({r.planned_epochs for runs in finished.values() for r in runs})
    left = sum(len(groups[n]) - len(finished[n]) for n in present)
    changed = sorted({f"{key}={json.dumps(value)}" for runs in finished.values()
                      for r in runs for key, value in settings_beyond_builtin(r.recipe).items()})
    head = (f"More seeds, from {folder / 'runs'} ({len(sum(finished.values(), []))} finished "
            f"run(s) of {'/'.join(map(str, epochs)) or '—'} epochs"
            + (f"; {left} unfinished run(s) left out" if left else "")
            + (f"; changed from the built-in recipe: {', '.join(changed)}" if changed else "")
            + "):")
    return [head] + collapse_text({n: runs for n, runs in finished.items() if runs},
                                  [n for n in present if finished[n]])


def settings_beyond_builtin(recipe: Recipe) -> dict[str, Any]:
    """The settings in which a run of a built-in recipe departs from it (other than its seed
    and length), so that runs computed another way say so; none for other recipes."""
    if recipe.name not in list_builtin():
        return {}
    return {key: value for key, (_, value) in changed_settings(recipe, builtin(recipe.name)).items()
            if key not in ("seed", "epochs")}


def chance_from(run: Run) -> int:
    """The first epoch of the run's final stretch at chance level."""
    epoch = run.rows[-1]["epoch"]
    for row in reversed(run.rows):
        if row["test_acc"] >= CHANCE_BAND:
            break
        epoch = row["epoch"]
    return epoch


def confusion(labels: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    n = len(CLASSES)
    flat = (labels * n + predicted).bincount(minlength=n * n)
    return flat.reshape(n, n).numpy()


# --------------------------------------------------------------------------- figures

def band(ax: Axes, runs: list[Run], key: str, label: str, scale: float = 1.0,
         style: str = "-") -> None:
    """Mean line over seeds, with a shaded min–max band when there are several seeds."""
    epochs = sorted({row["epoch"] for r in runs for row in r.rows})
    values = [[scale * row[key] for r in runs for row in r.rows if row["epoch"] == e]
              for e in epochs]
    line, = ax.plot(epochs, [statistics.mean(v) for v in values], style, marker="o", ms=3,
                    label=label if len(runs) == 1 else f"{label} (mean of {len(runs)} seeds)")
    if len(runs) > 1:
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values],
                        color=line.get_color(), alpha=0.2, lw=0)


def finish(ax: Axes, title: str, ylabel: str) -> None:
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def loss_figure(recipe: str, runs: list[Run]) -> Figure:
    fig = Figure(figsize=(6, 4), dpi=110, layout="tight")
    ax = fig.subplots()
    band(ax, runs, "train_loss", "train")
    band(ax, runs, "test_loss", "test", style="--")
    note = " (band: min–max over seeds)" if len(runs) > 1 else ""
    finish(ax, f"{recipe}: train and test loss{note}", "cross-entropy loss")
    return fig


def accuracy_figure(groups: dict[str, list[Run]]) -> Figure:
    fig = Figure(figsize=(7, 4.5), dpi=110, layout="tight")
    ax = fig.subplots()
    for recipe, runs in groups.items():
        band(ax, runs, "test_acc", recipe, scale=100)
    finish(ax, "Test accuracy per epoch, all recipes", "test accuracy (%)")
    return fig


def ablation_figure(groups: dict[str, list[Run]]) -> Figure:
    fig = Figure(figsize=(11, 4.2), dpi=110, layout="tight")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for name in ABLATION:
        if name in groups:
            band(loss_ax, groups[name], "test_loss", name)
            band(acc_ax, groups[name], "test_acc", name, scale=100)
    finish(loss_ax, "BatchNorm ablation: test loss", "cross-entropy loss")
    finish(acc_ax, "BatchNorm ablation: test accuracy", "test accuracy (%)")
    return fig


def confusion_figure(title: str, matrix: np.ndarray) -> Figure:
    fig = Figure(figsize=(7.5, 6.5), dpi=110, layout="tight")
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(CLASSES))
    ax.set_xticks(ticks, CLASSES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASSES)
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > matrix.max() / 2 else "black")
    return fig


def misclassified_figure(title: str, images: torch.Tensor, true: list[int],
                         predicted: list[int]) -> Figure:
    cols = 6
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(cols * 1.6, rows * 1.9 + 0.4), dpi=110, layout="tight")
    fig.suptitle(title)
    for k, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"true: {CLASSES[true[k]]}\npred: {CLASSES[predicted[k]]}", fontsize=7)
    return fig


def study_best() -> float:
    """The study's best accuracy (its custom network's 93.3 %): the bar for time to accuracy."""
    return max(builtin(name).study.accuracy for name in STUDY_ORDER)


def elapsed(run: Run) -> list[float]:
    """Cumulative training seconds (evaluation included) at the end of each epoch."""
    return list(itertools.accumulate(r["seconds"] for r in run.rows))


def time_to(run: Run, accuracy: float) -> tuple[int, float] | None:
    """The first epoch whose test accuracy reaches `accuracy`, and the seconds until then."""
    for row, seconds in zip(run.rows, elapsed(run), strict=True):
        if row["test_acc"] >= accuracy:
            return row["epoch"], seconds
    return None


def time_table(groups: dict[str, list[Run]], target: float) -> tuple[list[str], list[list[str]]]:
    headers = ["recipe", "seeds", f"seeds reaching {100 * target:.1f}%",
               "time to reach it (min)", "first epoch", "final accuracy",
               "training time per run (min)", "machine"]
    rows = []
    for name, runs in groups.items():
        reached = [hit for r in runs if (hit := time_to(r, target))]
        rows.append([name, str(len(runs)), f"{len(reached)} of {len(runs)}",
                     spread([t / 60 for _, t in reached]) if reached else "never",
                     ", ".join(str(e) for e, _ in reached) or "–",
                     pct_summary([r.final_acc for r in runs]),
                     spread([elapsed(r)[-1] / 60 for r in runs]), machines(runs)])
    return headers, rows


def machines(runs: list[Run]) -> str:
    """The CPU or GPU models the runs recorded (older run folders did not record one)."""
    return ", ".join(dict.fromkeys(str(r.info.get("machine", "not recorded")) for r in runs))


def time_figure(groups: dict[str, list[Run]], target: float) -> Figure:
    """Test accuracy against cumulative training minutes, every seed of every recipe."""
    fig = Figure(figsize=(7.5, 4.5), dpi=110, layout="tight")
    ax = fig.subplots()
    for i, (name, runs) in enumerate(groups.items()):
        for k, run in enumerate(runs):
            ax.plot([t / 60 for t in elapsed(run)], [100 * r["test_acc"] for r in run.rows],
                    "o-", ms=2.5, lw=1, color=f"C{i % 10}", alpha=0.8,
                    label=f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})" if k == 0
                    else None)
    ax.axhline(100 * target, color="k", ls="--", lw=1,
               label=f"the study's best, {100 * target:.1f}%")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    # Minor ticks labelled at 2× and 5× each power of ten only: all of them would overlap.
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
    ax.set_ylim(85, 100)
    ax.set(title="Time to accuracy", xlabel="cumulative training time (min, log scale; "
           "evaluation included)", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def time_section(doc: Document, groups: dict[str, list[Run]]) -> None:
    target = study_best()
    doc.heading(2, SECTIONS[4])
    doc.figure("time-to-accuracy.png", time_figure(groups, target),
               "Test accuracy against cumulative training time, every seed (axis from 85%)")
    doc.table(*time_table(groups, target))
    devices = ", ".join(dict.fromkeys(f"{r.info.get('device', '?')} × "
                                      f"{r.info.get('threads', '?')} threads"
                                      for runs in groups.values() for r in runs))
    doc.para(f"Time is the sum of metrics.csv's seconds up to the epoch that first reached "
             f"{100 * target:.1f}% test accuracy (training and per-epoch evaluation; the "
             "test curve is read here, never used to choose a recipe). Times compare only "
             f"between runs on the same machine; these ran on: {devices}.")


# --------------------------------------------------------------------------- the document

@dataclass
class Document:
    """Markdown and HTML written side by side, so the two reports never disagree."""

    figures_dir: Path
    md: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(f"{text}\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        if items:
            self.md.append("".join(f"- {item}\n" for item in items))
            self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items)
                             + "</ul>")

    def code(self, text: str) -> None:
        self.md.append(f"```\n{text}\n```\n")
        self.html.append(f"<pre><code>{html.escape(text)}</code></pre>")

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        def md_row(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n"
        self.md.append(md_row(headers) + md_row(["---"] * len(headers))
                       + "".join(map(md_row, rows)))
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in rows)
        self.html.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, name: str, fig: Figure, caption: str) -> None:
        """Save `fig` as figures/<name>, linked from REPORT.md and embedded in the HTML."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        png = buffer.getvalue()
        atomic_write(self.figures_dir / name, lambda f: f.write(png))
        self.md.append(f"![{caption}](figures/{name})\n\n*{caption}*\n")
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" '
                         f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                         "</figcaption></figure>")

    def render_html(self, title: str) -> str:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;font-size:.9em;margin:1em 0}"
                 "th,td{border:1px solid #bbb;padding:.3em .5em;text-align:left}"
                 "th{background:#eee}img{max-width:100%}figcaption{font-style:italic}"
                 "pre{background:#f4f4f4;padding:.5em;overflow-x:auto}")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
                + "\n".join(self.html) + "\n</body></html>\n")


# --------------------------------------------------------------------------- sections

def final_model_section(doc: Document, groups: dict[str, list[Run]], data_dir: Path) -> None:
    """Confusion matrix, per-class accuracy and misclassified images of each first seed."""
    doc.heading(2, SECTIONS[3])
    doc.para("For each recipe, the model after the last epoch (its weight average when the "
             "recipe keeps one) of the first seed whose folder kept it: from the run's "
             "predictions.csv, or from its last.pt for runs that predate that file.")
    test_set: ImageSet | None = None
    for recipe, runs in groups.items():
        folders = [(r, RunFolder(r.path)) for r in runs]
        kept = [(r, f) for r, f in folders
                if f.predictions_path.is_file() or f.checkpoint.is_file()]
        if not kept:
            doc.heading(3, recipe)
            doc.para(f"No {recipe} run folder has predictions.csv or last.pt, so this part "
                     "is skipped (its runs predate predictions.csv, and their checkpoints "
                     f"were not kept); one more seed adds it: `cnnlab reproduce --runs {recipe} "
                     f"--seeds {max(r.recipe.seed for r in runs) + 1} "
                     f"--out {runs[0].path.parent.parent}`.")
            continue
        run, folder = kept[0]
        doc.heading(3, f"{recipe} ({run.path.name})")
        try:
            test_set = test_set or load_split(data_dir, "test")
            epoch, data, predicted = final_predictions(folder, run, test_set)
        except CnnlabError as e:
            doc.para(f"Skipped: {e}")
            continue
        matrix = confusion(data.labels, predicted)
        correct = int(np.trace(matrix))
        doc.para(f"Model after epoch {epoch}: {correct:,} of {len(data):,} test "
                 f"images right ({100 * correct / len(data):.2f}%).")
        doc.figure(f"confusion-{recipe}.png",
                   confusion_figure(f"{recipe}: confusion matrix ({len(data):,} test images)",
                                    matrix), f"{recipe}: confusion matrix (counts)")
        rows = []
        for i, name in enumerate(CLASSES):
            total = int(matrix[i].sum())
            off = matrix[i].copy()
            off[i] = 0
            confused = CLASSES[int(off.argmax())] if off.any() else "—"
            rows.append([name, str(total), str(int(matrix[i, i])),
                         f"{100 * matrix[i, i] / total:.1f}" if total else "—", confused])
        doc.table(["class", "test images", "right", "accuracy (%)", "most often taken for"],
                  rows)
        wrong = (predicted != data.labels).nonzero().flatten()[:MAX_MISCLASSIFIED]
        if len(wrong):
            doc.figure(f"misclassified-{recipe}.png", misclassified_figure(
                f"{recipe}: misclassified test images (first {len(wrong)})", data.images[wrong],
                data.labels[wrong].tolist(), predicted[wrong].tolist()),
                f"{recipe}: misclassified test images with true and predicted labels")
        else:
            doc.para("No test image is misclassified.")


def final_predictions(folder: RunFolder, run: Run, test_set: ImageSet
                      ) -> tuple[int, ImageSet, torch.Tensor]:
    """(epoch, test images, predicted classes) of the run's final model: from
    predictions.csv, else from last.pt."""
    saved = folder.read_predictions()
    if saved is not None:
        labels, predicted = saved
        data = test_set.head(len(labels))
        if not torch.equal(data.labels, labels):
            raise CnnlabError(f"{folder.predictions_path} does not match the test set in the "
                              "data folder; point --data-dir at Fashion-MNIST")
        # Written just before the epoch's checkpoint and metrics row: an interruption in
        # between leaves predictions one epoch ahead, until the run is resumed.
        if abs((labels == predicted).float().mean().item() - run.final_acc) > 1e-6:
            raise CnnlabError(f"{folder.predictions_path} is not from the last epoch in "
                              f"metrics.csv (an interrupted run?); resume it with "
                              f"`cnnlab train --resume {folder.path}`")
        return run.rows[-1]["epoch"], data, predicted
    predictor = Predictor.load(folder.checkpoint)
    data = test_set.head(predictor.recipe.limit_test)
    return predictor.epoch, data, predictor.logits(data.images).argmax(1)


def environment_section(doc: Document, runs: list[Run], command: str) -> None:
    def recorded(key: str) -> str:
        return ", ".join(dict.fromkeys(str(r.info.get(key) or "unknown") for r in runs))

    started = sorted(str(r.info["started"]) for r in runs if r.info.get("started"))
    doc.heading(2, SECTIONS[5])
    doc.table(["", "this report", "training runs (as recorded)"], [
        ["cnnlab", __version__, recorded("cnnlab")],
        ["git commit", git_commit() or "unknown", recorded("git_commit")],
        ["torch", torch.__version__, recorded("torch")],
        ["device", "cpu", recorded("device")],
        ["machine", machine_name(torch.device("cpu")), recorded("machine")],
        ["threads", str(torch.get_num_threads()), recorded("threads")],
        ["date", datetime.now(timezone.utc).isoformat(timespec="seconds"),
         f"{started[0]} to {started[-1]}" if started else "unknown"],
    ])
    doc.para("This report was produced by:")
    doc.code(command)


def build_report(study_dir: Path, data_dir: Path, command: str,
                 collapse_dirs: Sequence[Path] = (),
                 time_dirs: Sequence[Path] = ()) -> tuple[Path, Path]:
    """Write DIR/REPORT.md, DIR/report.html and DIR/figures/*.png; return the two reports.
    `collapse_dirs`: folders of more ablation runs whose collapse rates join section 3;
    `time_dirs`: folders of other recipes' runs (e.g. the study's) that join section 5."""
    study_dir = Path(study_dir)
    groups, skipped = load_runs(study_dir)
    more_seeds = [more_seeds_text(Path(d)) for d in collapse_dirs]
    timed = dict(groups)
    for folder in map(Path, time_dirs):
        for name, runs in load_runs(folder)[0].items():
            timed[name if name not in timed else f"{name} ({folder})"] = runs
    figures_dir = study_dir / "figures"
    try:
        figures_dir.mkdir(exist_ok=True)
    except OSError as e:
        raise CnnlabError(f"cannot create {figures_dir}: {e.strerror}; "
                          "make the study folder writable") from e
    doc = Document(figures_dir)
    title = "Fashion-MNIST CNN study: report"
    doc.heading(1, title)
    doc.para(f"Built from {sum(map(len, groups.values()))} run(s) in {study_dir / 'runs'}. "
             "Accuracies are on the Fashion-MNIST test set, in percent; with several seeds "
             "they read mean ± standard deviation (n − 1) (min–max).")

    doc.heading(2, SECTIONS[0])
    doc.table(*results_table(groups))
    doc.bullets(skipped + results_notes(groups) + [
        "Best-epoch accuracy is the highest test accuracy of any epoch, so the epoch is "
        "selected on the test set: an optimistic figure, not a fair estimate.",
        "Δ is the final accuracy (mean over seeds) minus the study's, in percentage points; "
        "left out for runs that trained for other epochs or on subsets than the study's "
        "recipe."])

    doc.heading(2, SECTIONS[1])
    for recipe, runs in groups.items():
        doc.figure(f"loss-{recipe}.png", loss_figure(recipe, runs),
                   f"{recipe}: train and test loss per epoch")
    doc.figure("accuracy-all.png", accuracy_figure(groups), "Test accuracy per epoch, all recipes")

    doc.heading(2, SECTIONS[2])
    paragraphs = ablation_text(groups)
    if sum(name in groups for name in ABLATION) >= 2:
        doc.figure("bn-ablation.png", ablation_figure(groups),
                   "BatchNorm ablation: test loss and test accuracy per epoch")
    for text in paragraphs:
        doc.para(text)
    for head, *rates in more_seeds:
        doc.para(head)
        doc.bullets(rates)

    final_model_section(doc, groups, data_dir)
    time_section(doc, timed)
    environment_section(doc, [r for runs in groups.values() for r in runs], command)

    md_path, html_path = study_dir / "REPORT.md", study_dir / "report.html"
    atomic_write_text(md_path, "\n".join(doc.md))
    atomic_write_text(html_path, doc.render_html(title))
    return md_path, html_path


# --------------------------------------------------------------------------- search sweeps

def search_figure(trials: list[dict[str, Any]], log_params: dict[str, bool],
                  metric: str) -> Figure:
    """The objective against each searched parameter; pruned trials hollow."""
    fig = Figure(figsize=(4.2 * len(log_params), 3.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(log_params), squeeze=False)[0]
    scale = 100 if metric.endswith("acc") else 1
    for ax, (key, log) in zip(axes, log_params.items(), strict=True):
        for state, style in (("COMPLETE", {"color": "C0"}),
                             ("PRUNED", {"facecolors": "none", "edgecolors": "C1"})):
            chosen = [t for t in trials if t["state"] == state and t["value"] is not None]
            ax.scatter([t["params"][key] for t in chosen],
                       [scale * t["value"] for t in chosen], label=state.lower(), **style)
        finish(ax, key, f"{metric}{' (%)' if scale == 100 else ''}")
        ax.set_xlabel(key)
        if log:
            ax.set_xscale("log")
    return fig


def build_search_report(sweep_dir: Path, name: str, trials: list[dict[str, Any]],
                        log_params: dict[str, bool], importances: dict[str, float] | None,
                        metric: str, direction: str, command: str) -> tuple[Path, Path]:
    """SWEEP.md and sweep.html of a search: best trials, the objective against each
    parameter, parameter importances."""
    figures_dir = sweep_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    doc = Document(figures_dir)
    title = f"Sweep {name}: search"
    doc.heading(1, title)
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    complete = sorted((t for t in trials if t["state"] == "COMPLETE"),
                      key=lambda t: t["value"], reverse=direction == "maximize")
    counts = ", ".join(f"{sum(t['state'] == s for t in trials)} {s.lower()}"
                       for s in sorted({t["state"] for t in trials}))
    doc.para(f"{len(trials)} trials ({counts}). The objective, {metric}, is measured on the "
             "validation split at the final epoch (pruned trials: at the epoch they were "
             "stopped); the test set plays no part in the choice.")
    doc.heading(2, "Best trials")
    doc.table(["trial", metric, *log_params, "epochs", "run folder"],
              [[str(t["trial"]), f"{t['value']:.4f}",
                *(f"{t['params'][k]:.4g}" if isinstance(t["params"][k], float)
                  else str(t["params"][k]) for k in log_params),
                str(t["epochs"]), t["run"] or ""] for t in complete[:10]])
    if finished:
        doc.heading(2, "The objective against each parameter")
        doc.figure("search-params.png", search_figure(finished, log_params, metric),
                   f"{metric} against each searched parameter (hollow: pruned)")
    doc.heading(2, "Parameter importances")
    if importances:
        doc.table(["parameter", "importance"],
                  [[k, f"{v:.3f}"] for k, v in importances.items()])
        doc.para("PED-ANOVA importances (Optuna): how much each parameter's distribution "
                 "differs between the best trials and all trials.")
    else:
        doc.para("Not enough finished trials to estimate importances.")
    doc.heading(2, "Command")
    doc.code(command)
    md_path, html_path = sweep_dir / "SWEEP.md", sweep_dir / "sweep.html"
    atomic_write_text(md_path, "\n".join(doc.md))
    atomic_write_text(html_path, doc.render_html(title))
    return md_path, html_path
