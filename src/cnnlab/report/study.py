"""The study report, built from run folders alone.

`build_report` reads `DIR/runs/<recipe>-seed<k>/` (metrics.csv, config.json, predictions.csv
or last.pt) and writes REPORT.md, a self-contained report.html and PNG figures, so a report
can be rebuilt, restyled or extended at any time without training again. Its sections follow
in this module in the order they appear in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cnnlab import __version__
from cnnlab.data import CLASSES, ImageSet, load_split
from cnnlab.device import machine_name
from cnnlab.errors import CnnlabError
from cnnlab.files import make_folder
from cnnlab.inference import Predictor
from cnnlab.report import figures
from cnnlab.report.document import Document
from cnnlab.report.learned import learned_section
from cnnlab.report.tables import recorded, results_table, split_by_machine, study_best, time_table
from cnnlab.report.verdicts import ABLATION, ablation_text, more_seeds_text, results_notes
from cnnlab.runs import Run, RunFolder, git_commit, load_runs

MAX_MISCLASSIFIED = 24
SECTIONS = ("1. Results", "2. Loss curves", "3. BatchNorm ablation", "4. Final models",
            "5. What the networks learned", "6. Time to accuracy", "7. Environment")
TITLE = "Fashion-MNIST CNN study: report"


def build_report(folder: Path, data_dir: Path, command: str,
                 collapse_dirs: Sequence[Path] = (),
                 time_dirs: Sequence[Path] = ()) -> tuple[Path, Path]:
    """Write FOLDER/REPORT.md, FOLDER/report.html and FOLDER/figures/*.png; return the two
    reports. `collapse_dirs`: folders of more ablation runs whose collapse rates join the
    BatchNorm ablation; `time_dirs`: folders of other recipes' runs (e.g. the study's) that
    join the time-to-accuracy section."""
    folder = Path(folder)
    groups, skipped = load_runs(folder)
    more_seeds = [more_seeds_text(Path(d)) for d in collapse_dirs]
    timed = dict(groups)
    for other in map(Path, time_dirs):
        for name, runs in load_runs(other)[0].items():
            timed[name if name not in timed else f"{name} ({other})"] = runs
    figures_dir = folder / "figures"
    make_folder(figures_dir, "the figures folder")
    doc = Document(figures_dir)
    doc.heading(1, TITLE)
    doc.para(f"Built from {sum(map(len, groups.values()))} run(s) in {folder / 'runs'}. "
             "Accuracies are on the Fashion-MNIST test set, in percent; with several seeds "
             "they read mean ± standard deviation (n − 1) (min–max).")
    results_section(doc, groups, skipped)
    loss_section(doc, groups)
    ablation_section(doc, groups, more_seeds)
    final_model_section(doc, groups, data_dir)
    learned_section(doc, groups, data_dir, folder, SECTIONS[4])
    time_section(doc, timed)
    environment_section(doc, [r for runs in groups.values() for r in runs], command)
    return doc.write(folder / "REPORT.md", folder / "report.html", TITLE)


def results_section(doc: Document, groups: dict[str, list[Run]], skipped: list[str]) -> None:
    doc.heading(2, SECTIONS[0])
    doc.table(*results_table(groups))
    doc.bullets(skipped + results_notes(groups) + [
        "Best-epoch accuracy is the highest test accuracy of any epoch, so the epoch is "
        "selected on the test set: an optimistic figure, not a fair estimate.",
        "Δ is the final accuracy (mean over seeds) minus the study's, in percentage points; "
        "left out for runs that trained for other epochs or on subsets than the study's "
        "recipe."])


def loss_section(doc: Document, groups: dict[str, list[Run]]) -> None:
    doc.heading(2, SECTIONS[1])
    for recipe, runs in groups.items():
        doc.figure(f"loss-{recipe}.png", figures.loss_figure(recipe, runs),
                   f"{recipe}: train and test loss per epoch")
    doc.figure("accuracy-all.png", figures.accuracy_figure(groups),
               "Test accuracy per epoch, all recipes")


def ablation_section(doc: Document, groups: dict[str, list[Run]],
                     more_seeds: list[list[str]]) -> None:
    """BatchNorm on and off: curves, findings, and collapse rates over more seeds."""
    doc.heading(2, SECTIONS[2])
    paragraphs = ablation_text(groups)
    ablation = {name: groups[name] for name in ABLATION if name in groups}
    if len(ablation) >= 2:
        doc.figure("bn-ablation.png", figures.ablation_figure(ablation),
                   "BatchNorm ablation: test loss and test accuracy per epoch, one line per "
                   "seed (runs that collapsed to chance dashed)")
    for text in paragraphs:
        doc.para(text)
    for head, *rates in more_seeds:
        doc.para(head)
        doc.bullets(rates)


def final_model_section(doc: Document, groups: dict[str, list[Run]], data_dir: Path) -> None:
    """Confusion matrix, per-class accuracy and misclassified images of each recipe's lowest
    seed that kept its final model's answers; a recipe none of whose folders did says so."""
    doc.heading(2, SECTIONS[3])
    doc.para("For each recipe, the model after the last epoch (its weight average when the "
             "recipe keeps one) of the lowest seed whose folder kept it: from the run's "
             "predictions.csv, or from its model (last.pt or model.pt) for runs that predate "
             "that file.")
    test_set: ImageSet | None = None
    for recipe, runs in groups.items():
        folders = [(r, RunFolder(r.path)) for r in runs]
        kept = [(r, f) for r, f in folders
                if f.predictions_path.is_file() or f.model_source.is_file()]
        if not kept:
            doc.heading(3, recipe)
            doc.para(f"No {recipe} run folder has predictions.csv or a model (last.pt or "
                     "model.pt), so this part is skipped (its runs predate predictions.csv, "
                     "and their models were not kept); one more seed adds it: "
                     f"`cnnlab reproduce --runs {recipe} "
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
        final_model_part(doc, recipe, f"Model of seed {run.recipe.seed} after epoch {epoch}",
                         data, predicted)


def final_predictions(folder: RunFolder, run: Run, test_set: ImageSet
                      ) -> tuple[int, ImageSet, torch.Tensor]:
    """(epoch, test images, predicted classes) of the run's final model: from
    predictions.csv, else from its model (last.pt or model.pt)."""
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
        return run.metrics[-1]["epoch"], data, predicted
    predictor = Predictor.load(folder.model_source)
    data = test_set.head(predictor.recipe.limit_test)
    return predictor.epoch, data, predictor.logits(data.images).argmax(1)


def final_model_part(doc: Document, recipe: str, model: str, data: ImageSet,
                     predicted: torch.Tensor) -> None:
    """One recipe's final model (`model` says which): its score, confusion matrix,
    per-class table and mistakes."""
    matrix = confusion(data.labels, predicted)
    correct = int(np.trace(matrix))
    doc.para(f"{model}: {correct:,} of {len(data):,} test "
             f"images right ({100 * correct / len(data):.2f}%).")
    doc.figure(f"confusion-{recipe}.png", figures.confusion_figure(
        f"{recipe}: confusion matrix ({len(data):,} test images)", matrix),
        f"{recipe}: confusion matrix (counts)")
    doc.table(["class", "test images", "right", "accuracy (%)", "most often taken for"],
              per_class_rows(matrix))
    wrong = (predicted != data.labels).nonzero().flatten()[:MAX_MISCLASSIFIED]
    if len(wrong):
        doc.figure(f"misclassified-{recipe}.png", figures.misclassified_figure(
            f"{recipe}: misclassified test images (first {len(wrong)})", data.images[wrong],
            data.labels[wrong].tolist(), predicted[wrong].tolist()),
            f"{recipe}: misclassified test images with true and predicted labels")
    else:
        doc.para("No test image is misclassified.")


def confusion(labels: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    n = len(CLASSES)
    flat = (labels * n + predicted).bincount(minlength=n * n)
    return flat.reshape(n, n).numpy()


def per_class_rows(matrix: np.ndarray) -> list[list[str]]:
    """Per true class: test images, right, accuracy and the class most often predicted
    instead."""
    rows = []
    for i, name in enumerate(CLASSES):
        total = int(matrix[i].sum())
        off = matrix[i].copy()
        off[i] = 0
        confused = CLASSES[int(off.argmax())] if off.any() else "—"
        rows.append([name, str(total), str(int(matrix[i, i])),
                     f"{100 * matrix[i, i] / total:.1f}" if total else "—", confused])
    return rows


def time_section(doc: Document, groups: dict[str, list[Run]]) -> None:
    """Time to the study's best accuracy, one table per machine the runs recorded: times
    compare only within a machine, so runs that recorded none are listed apart."""
    target = study_best()
    doc.heading(2, SECTIONS[5])
    doc.figure("time-to-accuracy.png", figures.time_figure(groups, target),
               "Test accuracy against cumulative training time, every seed (axis from 85%)")
    for machine, on_machine in split_by_machine(groups).items():
        runs = [r for machine_runs in on_machine.values() for r in machine_runs]
        devices = ", ".join(dict.fromkeys(f"{r.info.get('device', '?')} × "
                                          f"{r.info.get('threads', '?')} threads" for r in runs))
        doc.para(f"On {machine}: {len(runs)} run(s)." if machine else
                 f"Machine not recorded: {len(runs)} run(s) from folders older than the machine "
                 f"field of config.json, {devices}; their times may come from different "
                 "machines.")
        doc.table(*time_table(on_machine, target))
    unrecorded = [f"{name} {sum(not r.info.get('machine') for r in runs)} of {len(runs)}"
                  for name, runs in groups.items() if any(not r.info.get("machine") for r in runs)]
    doc.para(f"Time is the sum of metrics.csv's seconds up to the epoch that first reached "
             f"{100 * target:.1f}% test accuracy (training and per-epoch evaluation; the "
             "test curve is read here, never used to choose a recipe). Times compare only "
             "between runs on the same machine, so each table holds one machine's runs; the "
             "figure draws every run. Train GFLOP/s is 3 × 2 × the network's multiply-adds "
             "per training image at the median images/s of the runs' epochs; in brackets its "
             "share of the fp32 matmul peak (1024×1024, the run's threads) that each run "
             "measured as it started, where it recorded one: how close the recipe runs to "
             "the machine's limit."
             + (" Run folders that did not record their machine, per recipe: "
                f"{', '.join(unrecorded)}; their times are listed apart and averaged with no "
                "other run's." if unrecorded else ""))


def environment_section(doc: Document, runs: list[Run], command: str) -> None:
    started = sorted(str(r.info["started"]) for r in runs if r.info.get("started"))
    doc.heading(2, SECTIONS[6])
    doc.table(["", "this report", "training runs (as recorded)"], [
        ["cnnlab", __version__, recorded(runs, "cnnlab", "unknown")],
        ["git commit", git_commit() or "unknown", recorded(runs, "git_commit", "unknown")],
        ["torch", torch.__version__, recorded(runs, "torch", "unknown")],
        ["device", "cpu", recorded(runs, "device", "unknown")],
        ["machine", machine_name(torch.device("cpu")), recorded(runs, "machine", "unknown")],
        ["threads", str(torch.get_num_threads()), recorded(runs, "threads", "unknown")],
        ["date", datetime.now(timezone.utc).isoformat(timespec="seconds"),
         f"{started[0]} to {started[-1]}" if started else "unknown"],
    ])
    doc.para("This report was produced by:")
    doc.code(command)
