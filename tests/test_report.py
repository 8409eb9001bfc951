"""`cnnlab report`: a study report rebuilt from run folders, checked against their files."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.device import machine_name
from cnnlab.loggers import Logger
from cnnlab.models import count_macs, count_parameters, get_model
from cnnlab.recipe import builtin
from cnnlab.report.study import SECTIONS, build_report
from cnnlab.report.tables import results_table
from cnnlab.runs import RunFolder, load_runs
from cnnlab.stats import welch_interval
from conftest import one_line_error, study_recipe, train_recipe

PNG = b"\x89PNG\r\n\x1a\n"
COMMAND = "cnnlab report STUDY --data-dir DATA"


def says(text: str, *facts: str) -> bool:
    """Whether `text` states these figures and verdicts in this order, close together, in
    whatever words: rewording the report's prose breaks no test."""
    return re.search(".{0,200}?".join(map(re.escape, facts)), text, re.S) is not None


class StopAfterOneEpoch(Exception):
    """Raised after the first epoch to leave a run incomplete, as an interrupted run would be."""


class Stop(Logger):
    def log_epoch(self, row: dict[str, float]) -> None:
        raise StopAfterOneEpoch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: with two cores shared with another job, two threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_thread, data_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("study")
    for seed in (0, 1):
        recipe = study_recipe("lenet", epochs=2, limit_train=2000, limit_test=500, seed=seed)
        train_recipe(recipe, root / "runs" / f"lenet-seed{seed}", data_dir)
    recipe = study_recipe("custom_nobn", epochs=2, limit_train=500, limit_test=200)
    with pytest.raises(StopAfterOneEpoch):
        train_recipe(recipe, root / "runs" / "custom_nobn-seed0", data_dir, loggers=[Stop()])
    build_report(root, data_dir, COMMAND)
    return root


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def section(markdown: str, heading: str) -> str:
    return markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def parse_table(text: str) -> list[dict[str, str]]:
    """The first Markdown table in `text` as one dict per row."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


def machine_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Section 5's time tables, by the line that leads each: "On <machine>: …" or "Machine
    not recorded: …"."""
    parts = re.split(r"\n(On .+|Machine not recorded.+)\n", text)
    return {parts[i]: parse_table(parts[i + 1]) for i in range(1, len(parts), 2)}


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?", cell.replace(",", ""))]


def summary(values: list[float]) -> list[float]:
    """The numbers a table cell should show: the value, or mean, std, min and max."""
    if len(values) == 1:
        return values
    return [statistics.mean(values), statistics.stdev(values), min(values), max(values)]


def test_report_files_and_sections(study: Path) -> None:
    markdown = (study / "REPORT.md").read_text()
    page = (study / "report.html").read_text()
    for heading in SECTIONS:
        assert f"\n## {heading}\n" in markdown
        assert f"<h2>{heading}</h2>" in page
    assert COMMAND in markdown and COMMAND in page
    # the runs recorded the CPU they ran on, and the report shows it
    cpu = machine_name(torch.device("cpu"))
    assert json.loads((study / "runs" / "lenet-seed0" / "config.json").read_text())[
        "machine"] == cpu
    assert f"| machine | {cpu} | {cpu} |" in section(markdown, SECTIONS[6])


def test_figures_are_pngs_and_html_is_self_contained(study: Path) -> None:
    markdown = (study / "REPORT.md").read_text()
    page = (study / "report.html").read_text()
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", markdown)
    assert {"figures/loss-lenet.png", "figures/loss-custom_nobn.png", "figures/accuracy-all.png",
            "figures/confusion-lenet.png", "figures/misclassified-lenet.png",
            "figures/confusion-custom_nobn.png"} <= set(figures)
    for name in figures:
        assert (study / name).read_bytes().startswith(PNG)
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == \
        [(study / name).read_bytes() for name in figures]
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "figures/" not in page and "http" not in page


def test_results_table_matches_metrics(study: Path) -> None:
    table = parse_table(section((study / "REPORT.md").read_text(), SECTIONS[0]))
    rows = {row["recipe"]: row for row in table}
    assert list(rows) == ["lenet", "custom_nobn"]
    for preset, seeds, study_pct in (("lenet", [0, 1], 89.9), ("custom_nobn", [0], 86.9)):
        row = rows[preset]
        metrics = [read_csv(study / "runs" / f"{preset}-seed{s}" / "metrics.csv") for s in seeds]
        final = [100 * m[-1]["test_acc"] for m in metrics]
        best = [100 * max(r["test_acc"] for r in m) for m in metrics]
        assert numbers(row["final test acc (%)"]) == pytest.approx(summary(final), abs=0.006)
        best_key = next(k for k in row if k.startswith("best-epoch"))
        assert "optimistic" in best_key
        assert numbers(row[best_key]) == pytest.approx(summary(best), abs=0.006)
        assert numbers(row["study (%)"]) == [study_pct]
        # trained on subsets for 2 epochs: not comparable with the study's figure
        assert row["Δ (points)"] == "— (not its recipe)"
        assert row["seeds"] == ", ".join(map(str, seeds))
        model = get_model(preset)
        assert numbers(row["parameters"]) == [count_parameters(model)]
        assert numbers(row["MACs/image"]) == [count_macs(model)]
        all_rows = [r for m in metrics for r in m]
        assert numbers(row["training time (s, all seeds)"]) == pytest.approx(
            [sum(r["seconds"] for r in all_rows)], abs=0.06)
        assert numbers(row["median train img/s"]) == pytest.approx(
            [statistics.median(r["train_img_per_s"] for r in all_rows)], abs=0.6)
        assert row["device"] == "cpu"
    assert rows["lenet"]["epochs"] == "2"
    assert rows["custom_nobn"]["epochs"] == "1 of 2 (incomplete)"
    assert "custom_nobn-seed0 is incomplete: 1 of 2 epochs" in (study / "REPORT.md").read_text()


def test_ablation_skipped_with_one_variant(study: Path) -> None:
    text = section((study / "REPORT.md").read_text(), SECTIONS[2])
    assert "Comparison skipped: needs at least two of" in text
    assert not (study / "figures" / "bn-ablation.png").exists()


def test_final_model_agrees_with_its_metrics(study: Path) -> None:
    """The saved model, re-evaluated by the report, scores what training recorded."""
    text = section((study / "REPORT.md").read_text(), SECTIONS[3])
    lenet = text.split("### lenet (lenet-seed0)", 1)[1].split("### ", 1)[0]
    right, total = map(int, re.search(r"(\d+) of (\d+) test images right", lenet).groups())
    recorded = read_csv(study / "runs" / "lenet-seed0" / "metrics.csv")[-1]["test_acc"]
    assert total == 500 and right / total == pytest.approx(recorded, abs=1e-6)
    classes = parse_table(lenet)
    assert len(classes) == 10
    assert sum(int(row["test images"]) for row in classes) == 500
    assert sum(int(row["right"]) for row in classes) == right


def test_final_model_needs_no_checkpoint(study: Path, tmp_path: Path, data_dir: Path) -> None:
    """predictions.csv holds the final model's answers, so a run folder committed without its
    last.pt still gets the same confusion matrix and misclassified images."""
    run = study / "runs" / "lenet-seed0"
    labels, predicted = RunFolder(run).read_predictions()
    recorded = read_csv(run / "metrics.csv")[-1]["test_acc"]
    assert len(labels) == 500
    assert (labels == predicted).float().mean().item() == pytest.approx(recorded, abs=1e-6)
    shutil.copytree(run, tmp_path / "runs" / "lenet-seed0",
                    ignore=shutil.ignore_patterns("last.pt"))
    build_report(tmp_path, data_dir, COMMAND)
    with_checkpoint, without = (section((root / "REPORT.md").read_text(), SECTIONS[3])
                                for root in (study, tmp_path))
    lenet = with_checkpoint.split("### lenet (lenet-seed0)", 1)[1].split("### ", 1)[0]
    assert lenet.strip() and lenet.strip() in without
    assert (tmp_path / "figures" / "misclassified-lenet.png").read_bytes() == \
        (study / "figures" / "misclassified-lenet.png").read_bytes()


def test_final_model_comes_from_the_first_seed_that_kept_one(study: Path, tmp_path: Path,
                                                             data_dir: Path) -> None:
    for seed, dropped in ((0, ("last.pt", "model.pt", "predictions.csv")), (1, ("last.pt",))):
        shutil.copytree(study / "runs" / f"lenet-seed{seed}",
                        tmp_path / "runs" / f"lenet-seed{seed}",
                        ignore=shutil.ignore_patterns(*dropped))
    build_report(tmp_path, data_dir, COMMAND)
    text = section((tmp_path / "REPORT.md").read_text(), SECTIONS[3])
    assert "### lenet (lenet-seed1)" in text and "lenet-seed0" not in text
    recorded = read_csv(study / "runs" / "lenet-seed1" / "metrics.csv")[-1]["test_acc"]
    assert f"test images right ({100 * recorded:.2f}%)" in text

    # predictions of another epoch than metrics.csv's last (an interrupted run): not used
    predictions = tmp_path / "runs" / "lenet-seed1" / "predictions.csv"
    lines = predictions.read_text().splitlines()
    label = lines[1].split(",")[0]
    lines[1] = f"{label},{(int(label) + 1) % 10}" if lines[1] == f"{label},{label}" \
        else f"{label},{label}"
    predictions.write_text("\n".join(lines) + "\n")
    build_report(tmp_path, data_dir, COMMAND)
    text = section((tmp_path / "REPORT.md").read_text(), SECTIONS[3])
    assert "predictions.csv is not from the last epoch in metrics.csv" in text


def test_a_final_model_comes_from_model_pt_when_last_pt_is_gone(study: Path, tmp_path: Path,
                                                                 data_dir: Path) -> None:
    """A finished run that kept only its reported weights (model.pt) still has section 4."""
    shutil.copytree(study / "runs" / "lenet-seed0", tmp_path / "runs" / "lenet-seed0",
                    ignore=shutil.ignore_patterns("last.pt", "predictions.csv"))
    build_report(tmp_path, data_dir, COMMAND)
    text = section((tmp_path / "REPORT.md").read_text(), SECTIONS[3])
    recorded = read_csv(study / "runs" / "lenet-seed0" / "metrics.csv")[-1]["test_acc"]
    assert "### lenet (lenet-seed0)" in text
    assert f"test images right ({100 * recorded:.2f}%)" in text


def test_every_recipe_gets_its_final_model_or_the_command_that_adds_it(
        tmp_path: Path, data_dir: Path) -> None:
    """Section 4 uses each recipe's lowest seed that kept predictions.csv and names it; a
    recipe none of whose folders kept one gets a sentence with the command for a new seed."""
    from cnnlab.data import load_split

    labels = load_split(data_dir, "test").labels[:100]
    predicted = labels.clone()
    predicted[:10] = (labels[:10] + 1) % 10
    for seed in (0, 1, 2):
        fake_run(tmp_path, "custom_nobn", seed, [0.5, 0.9], [0.5, 0.4])
    for seed in (1, 2):
        RunFolder(tmp_path / "runs" / f"custom_nobn-seed{seed}").write_predictions(labels,
                                                                                   predicted)
    fake_run(tmp_path, "custom", 0, [0.5, 0.9], [0.5, 0.4])
    build_report(tmp_path, data_dir, COMMAND)
    text = section((tmp_path / "REPORT.md").read_text(), SECTIONS[3])
    nobn = text.split("### custom_nobn (custom_nobn-seed1)\n", 1)[1].split("\n### ", 1)[0]
    assert "Model of seed 1 after epoch 2: 90 of 100 test images right (90.00%)" in nobn
    assert "figures/confusion-custom_nobn.png" in nobn
    assert "figures/misclassified-custom_nobn.png" in nobn
    assert sum(int(row["right"]) for row in parse_table(nobn)) == 90
    custom = text.split("### custom\n", 1)[1].split("\n### ", 1)[0]
    assert says(custom, "No custom run folder has predictions.csv",
                f"`cnnlab reproduce --runs custom --seeds 1 --out {tmp_path}`")
    assert "seed0" not in text and "seed2" not in text


# --------------------------------------------------------------------------- synthetic runs

def fake_run(root: Path, preset: str, seed: int, acc: list[float | None],
             loss: list[float | None], epochs: int | None = None) -> None:
    """A run folder written by hand (no last.pt), for numbers chosen by the test; None is
    an epoch that was not evaluated, `epochs` the planned epochs when more than written."""
    folder = root / "runs" / f"{preset}-seed{seed}"
    folder.mkdir(parents=True)
    recipe = builtin(preset).with_overrides({"epochs": epochs or len(acc),
                                             "seed": seed}).to_dict()
    folder.joinpath("config.json").write_text(json.dumps(
        {"recipe": recipe, "device": "cuda", "threads": 8, "torch": "2.5.0", "cnnlab": "0.1.0",
         "git_commit": "abc", "started": "2025-01-01T00:00:00+00:00", "command": "x"}))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                         "seconds", "train_img_per_s"])
        for epoch, (a, loss_value) in enumerate(zip(acc, loss, strict=True), 1):
            writer.writerow([epoch, 1.0, 0.5, "" if loss_value is None else loss_value,
                             "" if a is None else a, 0.003, 10.0, 5000.0])


def test_ablation_text_is_computed(tmp_path: Path, capsys, monkeypatch) -> None:
    losses = {"custom": [[0.5, 0.4, 0.35, 0.3], [0.5, 0.42, 0.36, 0.31]],
              "custom_nobn": [[0.9, 0.5, 1.2, 0.6], [1.0, 0.4, 0.9, 0.7]],
              "custom_nobn_lr1e-3": [[0.6, 0.45, 0.4, 0.38]]}
    final = {"custom": [0.930, 0.934], "custom_nobn": [0.866, 0.874],
             "custom_nobn_lr1e-3": [0.925]}
    for preset, runs in losses.items():
        for seed, loss in enumerate(runs):
            fake_run(tmp_path, preset, seed, [0.8, 0.85, 0.9, final[preset][seed]], loss)
    monkeypatch.setattr(sys, "argv", ["cnnlab", "report", str(tmp_path)])
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"wrote {tmp_path / 'REPORT.md'}", f"wrote {tmp_path / 'report.html'}"]
    assert out[2].split()[:3] == ["recipe", "seeds", "final"]  # the results table follows
    markdown = (tmp_path / "REPORT.md").read_text()
    text = " ".join(section(markdown, SECTIONS[2]).split())
    # custom minus custom_nobn: 93.20 − 87.00, Welch 95 % interval over two seeds each
    diff, low, high, df = welch_interval([93.0, 93.4], [86.6, 87.4])
    assert diff == pytest.approx(6.20) and low > 0
    assert says(text, "custom 93.20% (2 runs) minus custom_nobn 87.00% (2 runs)",
                "+6.20 points", f"95% interval {low:+.2f} to {high:+.2f}", f"df {df:.1f}",
                f"custom is better by {low:.2f} to {high:.2f} points")
    assert says(text, "custom 93.20% (2 runs) minus custom_nobn_lr1e-3 92.50% (1 run)",
                "+0.70 points", "no interval", "custom_nobn_lr1e-3 has only one run")
    for preset, runs in losses.items():
        volatility = statistics.mean(np.diff(loss).std(ddof=1) for loss in runs)
        assert f"{preset} {volatility:.4f}" in text
    assert says(text, "custom_nobn", "more erratic", "custom")
    assert (tmp_path / "figures" / "bn-ablation.png").read_bytes().startswith(PNG)
    assert says(markdown, "custom", "predictions.csv", "last.pt", "skipped",
                f"`cnnlab reproduce --runs custom --seeds 2 --out {tmp_path}`")
    assert f"cnnlab report {tmp_path}" in markdown


def test_missing_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    err = one_line_error(capsys, ["report", str(tmp_path / "nowhere")])
    assert "does not exist" in err


def test_no_runs_and_damaged_metrics_are_one_line_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "runs").mkdir()
    assert "holds no run folders" in one_line_error(capsys, ["report", str(tmp_path)])
    fake_run(tmp_path, "lenet", 0, [0.5], [1.0])
    run = tmp_path / "runs" / "lenet-seed0"
    metrics = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text("epoch,oops\n1,2\n")
    assert "metrics.csv: unreadable" in one_line_error(capsys, ["report", str(tmp_path)])
    (run / "metrics.csv").write_text(metrics.replace(",0.5,0.003,", ",nan,0.003,"))
    assert "metrics.csv: unreadable (test_acc nan)" in one_line_error(
        capsys, ["report", str(tmp_path)])
    (run / "metrics.csv").write_text(metrics)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "matmul_peak_gflops": "fast"}))
    assert "matmul_peak_gflops 'fast' is not a positive number" in one_line_error(
        capsys, ["report", str(tmp_path)])
    (run / "config.json").write_text(json.dumps(config))
    (run / "predictions.csv").write_text("label,predicted\n9,12\n")  # its final model is
    assert main(["report", str(tmp_path)]) == 0                      # skipped, saying why
    assert "predictions.csv: unreadable (a class outside 0..9)" in (
        tmp_path / "REPORT.md").read_text()


def as_long_as_the_study(preset: str, final: float) -> tuple[list[float], list[float]]:
    """Test accuracies and losses of a run as many epochs long as the study's recipe."""
    epochs = builtin(preset).epochs
    return [0.5] * (epochs - 1) + [final], [0.4] * epochs


def test_report_says_whether_each_result_is_within_the_study_band(tmp_path: Path) -> None:
    from cnnlab.report.tables import results_table
    from cnnlab.report.verdicts import results_notes

    fake_run(tmp_path, "lenet", 0, *as_long_as_the_study("lenet", 0.905))  # vs 89.9: within ±1
    fake_run(tmp_path, "custom", 0, *as_long_as_the_study("custom", 0.922))  # vs 93.3: outside
    fake_run(tmp_path, "custom_nobn", 0, *as_long_as_the_study("custom_nobn", 0.5))  # no band
    fake_run(tmp_path, "alexnet", 0, [0.85, 0.95], [0.4, 0.3])  # 2 epochs: not comparable
    groups = load_runs(tmp_path)[0]
    notes = results_notes(groups)
    assert "lenet: 90.50% is within ±1.0 points of the study's 89.9%." in notes
    assert "custom: 92.20% is OUTSIDE ±0.7 points of the study's 93.3%." in notes
    assert not any(n.startswith(("custom_nobn:", "alexnet:")) for n in notes)
    headers, rows = results_table(groups)
    delta = {row[0]: row[headers.index("Δ (points)")] for row in rows}
    assert delta == {"lenet": "+0.60", "alexnet": "— (not its recipe)", "custom": "-1.10",
                     "custom_nobn": "-36.90"}


def test_runs_of_one_name_trained_otherwise_are_named(tmp_path: Path) -> None:
    from cnnlab.report.verdicts import results_notes

    fake_run(tmp_path, "fast", 0, [0.90, 0.93], [0.4, 0.3])
    fake_run(tmp_path, "fast", 1, [0.91, 0.93], [0.4, 0.3])
    fake_run(tmp_path, "fast", 2, [0.90, 0.92, 0.94], [0.4, 0.35, 0.3])  # a longer fast
    notes = results_notes(load_runs(tmp_path)[0])
    assert [n for n in notes if n.startswith("fast:")] == [
        "fast: fast-seed2 trained with other settings than fast-seed0 (epochs), so its "
        "figures mix two recipes; keep the runs of one version of a recipe per folder."]


def test_a_collapsed_run_is_named(tmp_path: Path) -> None:
    from cnnlab.report.verdicts import ablation_text, results_notes

    fake_run(tmp_path, "custom", 0, [0.90, 0.91, 0.93], [0.4, 0.35, 0.3])
    fake_run(tmp_path, "custom_nobn", 0, [0.80, 0.85, 0.88], [0.5, 0.9, 0.4])
    fake_run(tmp_path, "custom_nobn", 1, [0.10, 0.10, 0.10], [2.303, 2.3031, 2.303])
    groups = load_runs(tmp_path)[0]
    notes = results_notes(groups)
    assert any(says(n, "custom_nobn-seed1 did not learn", "10.00%", "10%", "1.000", "2.303",
                    "counts in the means") for n in notes)
    assert not any("custom_nobn-seed0 did not learn" in n or "custom-seed0 did not" in n
                   for n in notes)
    text = " ".join(ablation_text(groups))
    # the accuracy comparison is over the runs that learned: the collapsed run is left out
    assert says(text, "over the runs that learned", "custom 93.00% (1 run) minus custom_nobn "
                "88.00% (1 run) is +5.00 points", "no interval")
    # volatility from the run that learned only: the collapsed run's flat loss is left out
    assert f"custom_nobn {np.diff([0.5, 0.9, 0.4]).std(ddof=1):.4f}" in text
    assert says(text, "1 of 2 custom_nobn runs did not learn", "custom_nobn-seed1",
                "epoch 1", "50%", "9–91%", "88.00%")
    assert says(text, "0 of 1 custom runs did not learn", "0%", "0–79%", "93.00%")
    # no t interval of a mean over a learned and a collapsed run: it would be meaningless
    table = results_table(groups)
    rows = {row[0]: dict(zip(table.headers, row, strict=True)) for row in table.rows}
    assert rows["custom_nobn"]["mean's 95 % interval (%)"] == "— (1 of 2 collapsed)"
    assert rows["custom"]["mean's 95 % interval (%)"] == ""  # one seed


def test_accuracy_verdicts_are_worded_from_the_welch_interval() -> None:
    """An interval clear of 0 reads as a lead of so many to so many points; one that holds 0
    reads as no difference these seeds resolve, however large the gap of the means."""
    from cnnlab.report.verdicts import difference_verdict

    learned = {"custom": [92.5, 92.7, 92.9], "custom_nobn": [88.0, 88.5, 89.0],
               "custom_nobn_lr1e-3": [92.4, 92.8, 92.6], "wild": [80.0, 99.0]}
    _, low, high, _ = welch_interval(learned["custom"], learned["custom_nobn"])
    assert says(difference_verdict("custom", "custom_nobn", learned), "+4.20 points",
                f"{low:+.2f} to {high:+.2f}", f"custom is better by {low:.2f} to {high:.2f}")
    assert says(difference_verdict("custom_nobn", "custom", learned), "-4.20 points",
                f"custom_nobn is worse by {low:.2f} to {high:.2f} points")
    for other in ("custom_nobn_lr1e-3", "wild"):
        verdict = difference_verdict("custom", other, learned)
        assert says(verdict, "95% interval -", "to +", "no difference this many seeds can "
                    "resolve") and "better" not in verdict and "worse" not in verdict
    assert says(difference_verdict("custom", "none", {**learned, "none": []}),
                "cannot be compared", "no none run learned")


def test_ablation_figure_draws_every_seed_and_sets_collapsed_runs_apart(tmp_path: Path) -> None:
    """No mean curve through a recipe whose seeds split: one line per seed and panel,
    dashed for the runs that collapsed, and a legend that says which is which."""
    from cnnlab.report.figures import ablation_figure

    fake_run(tmp_path, "custom", 0, [0.90, 0.91, 0.93], [0.4, 0.35, 0.3])
    fake_run(tmp_path, "custom", 1, [0.90, 0.92, 0.93], [0.4, 0.33, 0.3])
    fake_run(tmp_path, "custom_nobn", 0, [0.80, 0.85, 0.88], [0.5, 0.9, 0.4])
    fake_run(tmp_path, "custom_nobn", 1, [0.10, 0.10, 0.10], [2.303, 2.3031, 2.303])
    fake_run(tmp_path, "custom_nobn", 2, [0.82, 0.10, 0.10], [0.6, 2.303, 2.303])
    fig = ablation_figure(load_runs(tmp_path)[0])
    loss_ax, acc_ax = fig.axes
    acc = [[0.90, 0.91, 0.93], [0.90, 0.92, 0.93], [0.80, 0.85, 0.88], [0.10, 0.10, 0.10],
           [0.82, 0.10, 0.10]]
    loss = [[0.4, 0.35, 0.3], [0.4, 0.33, 0.3], [0.5, 0.9, 0.4], [2.303, 2.3031, 2.303],
            [0.6, 2.303, 2.303]]
    for ax, curves in ((loss_ax, loss), (acc_ax, [[100 * a for a in c] for c in acc])):
        def drawn(lines) -> list[list[float]]:
            return sorted([round(float(y), 6) for y in line.get_ydata()] for line in lines)

        expected = [[round(y, 6) for y in c] for c in curves]
        assert len(ax.get_lines()) == 5  # one per seed, no mean
        assert drawn(ax.get_lines()) == sorted(expected)
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert drawn(dashed) == sorted(expected[3:])  # the collapsed seeds 1 and 2
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "custom: 2 seeds", "custom_nobn: 1 seed that learned",
            "custom_nobn: 2 seeds collapsed to chance"]


def test_more_seeds_join_the_ablation_section(tmp_path: Path, capsys, monkeypatch) -> None:
    """--collapse-runs: the collapse rate over a sweep's seeds, beside the study's runs."""
    study, sweep = tmp_path / "study", tmp_path / "sweep"
    fake_run(study, "custom", 0, [0.90, 0.93], [0.4, 0.3])
    fake_run(study, "custom_nobn", 0, [0.80, 0.88], [0.5, 0.4])
    for seed, acc in enumerate([[0.8, 0.84, 0.85], [0.1, 0.1, 0.1], [0.83, 0.1, 0.1],
                                [0.82, 0.85, 0.86]]):
        fake_run(sweep, "custom_nobn", seed, acc, [0.5] * 3)
    fake_run(sweep, "custom_nobn", 4, [0.1], [2.3])
    unfinished = sweep / "runs" / "custom_nobn-seed4" / "config.json"
    info = json.loads(unfinished.read_text())
    info["recipe"]["epochs"] = 3
    unfinished.write_text(json.dumps(info))
    monkeypatch.setattr(sys, "argv", ["cnnlab", "report"])
    assert main(["report", str(study), "--collapse-runs", str(sweep)]) == 0
    capsys.readouterr()
    text = " ".join(section((study / "REPORT.md").read_text(), SECTIONS[2]).split())
    assert says(text, str(sweep / "runs"), "4 finished", "3 epochs", "1 unfinished",
                "2 of 4 custom_nobn runs did not learn", "custom_nobn-seed1", "epoch 1",
                "custom_nobn-seed2", "epoch 2", "50%", "15–85%", "85.50%")
    # the study's own numbers are not mixed with the sweep's
    assert "0 of 1 custom_nobn runs did not learn" in text
    err = one_line_error(capsys, ["report", str(study), "--collapse-runs", str(study / "runs")])
    assert "holds no run folders" in err
    fake_run(tmp_path / "lenets", "lenet", 0, [0.9], [0.3])
    err = one_line_error(capsys, ["report", str(study), "--collapse-runs",
                                  str(tmp_path / "lenets")])
    assert "holds no run of custom, custom_nobn, custom_nobn_lr1e-3" in err


def test_more_seeds_name_the_settings_their_runs_changed(tmp_path: Path) -> None:
    """Runs computed another way (here the study's per-image pipeline and plain Adam) say
    so beside their collapse rate; runs of the built-in recipe as shipped say nothing."""
    from cnnlab.report.verdicts import more_seeds_text

    fake_run(tmp_path / "fast", "custom_nobn", 0, [0.1], [2.3])
    shipped = more_seeds_text(tmp_path / "fast")[0]
    assert says(shipped, "1 finished", "1 epochs") and "=" not in shipped
    fake_run(tmp_path / "study_way", "custom_nobn", 0, [0.1], [2.3])
    config = tmp_path / "study_way" / "runs" / "custom_nobn-seed0" / "config.json"
    info = json.loads(config.read_text())
    info["recipe"]["pipeline"] = "per_image"
    info["recipe"]["optimizer"]["fused"] = False
    config.write_text(json.dumps(info))
    assert says(more_seeds_text(tmp_path / "study_way")[0], "1 finished", "1 epochs",
                'optimizer.fused=false, pipeline="per_image"')


def test_runs_of_any_recipe_are_grouped_by_recipe_name(tmp_path: Path, data_dir: Path) -> None:
    """A recipe that is not one of the study's: its own group, an empty study column, and
    no notes about missing study recipes."""
    recipe = study_recipe("lenet", epochs=1, limit_train=500, limit_test=100,
                          name="lenet-sgd", **{"optimizer.name": "sgd", "optimizer.lr": 0.1,
                                               "study.accuracy": None,
                                               "study.tolerance": None})
    for seed in (0, 1):
        train_recipe(recipe.with_overrides({"seed": seed}), tmp_path / f"runs/mine-{seed}",
                     data_dir)
    build_report(tmp_path, data_dir, COMMAND)
    markdown = (tmp_path / "REPORT.md").read_text()
    [row] = parse_table(section(markdown, SECTIONS[0]))
    assert row["recipe"] == "lenet-sgd" and row["seeds"] == "0, 1"
    assert row["study (%)"] == "" and row["Δ (points)"] == ""
    assert "no run of this study recipe" not in markdown


def test_time_to_accuracy_is_read_from_the_test_curve(tmp_path: Path, data_dir: Path) -> None:
    """Every epoch of a hand-written run takes 10 s: custom seed 0 reaches the study's best,
    93.3 %, at epoch 2 (20 s), seed 1 at epoch 3 (30 s); lenet never does."""
    fake_run(tmp_path, "custom", 0, [0.90, 0.933, 0.94], [0.4, 0.3, 0.3])
    fake_run(tmp_path, "custom", 1, [0.90, 0.92, 0.935], [0.4, 0.3, 0.3])
    fake_run(tmp_path, "lenet", 0, [0.88, 0.932], [0.4, 0.3])
    build_report(tmp_path, data_dir, "cnnlab report x")
    text = section((tmp_path / "REPORT.md").read_text(), SECTIONS[5])
    rows = {row["recipe"]: row for row in parse_table(text)}
    assert rows["custom"]["seeds reaching 93.3%"] == "2 of 2"
    assert rows["custom"]["time to reach it (min)"] == "0.42 ± 0.12 (0.33–0.50)"
    assert rows["custom"]["first epoch"] == "2, 3"
    assert rows["custom"]["training time per run (min)"] == "0.50 ± 0.00 (0.50–0.50)"
    # 5,000 images/s × 6 × 87,201,024 multiply-adds; these folders recorded no peak
    assert rows["custom"]["train GFLOP/s (% of matmul peak)"] == "2616"
    assert rows["lenet"]["seeds reaching 93.3%"] == "0 of 1"
    assert rows["lenet"]["time to reach it (min)"] == "never"
    assert rows["lenet"]["training time per run (min)"] == "0.33"
    assert rows["lenet"]["machine"] == "not recorded"
    assert says(text, "Machine not recorded: 3 run(s)", "cuda × 8 threads")
    assert says(text, "did not record their machine", "lenet 1 of 1, custom 2 of 2")
    assert (tmp_path / "figures" / "time-to-accuracy.png").stat().st_size > 10_000


def test_runs_evaluated_after_their_last_epoch_only(tmp_path: Path, data_dir: Path) -> None:
    """A recipe that evaluates after its last epoch only (evaluate.every_epoch false) has
    one point on the test curve; a run of it stopped before that point is left out."""
    fake_run(tmp_path, "fast", 0, [None, None, 0.94], [None, None, 0.2])
    fake_run(tmp_path, "fast", 1, [0.9, 0.935], [0.3, 0.25])
    fake_run(tmp_path, "fast", 2, [None], [None], epochs=3)
    build_report(tmp_path, data_dir, "cnnlab report x")
    markdown = (tmp_path / "REPORT.md").read_text()
    assert "fast-seed2 stopped before its evaluation" in markdown
    rows = {row["recipe"]: row for row in parse_table(section(markdown, SECTIONS[5]))}
    assert rows["fast"]["seeds reaching 93.3%"] == "2 of 2"
    assert rows["fast"]["first epoch"] == "3, 2"
    assert rows["fast"]["time to reach it (min)"] == "0.42 ± 0.12 (0.33–0.50)"
    results = {row["recipe"]: row for row in parse_table(section(markdown, SECTIONS[0]))}
    assert results["fast"]["final test acc (%)"] == "93.75 ± 0.35 (93.50–94.00)"


def test_times_of_different_machines_share_no_table(tmp_path: Path) -> None:
    """One table per recorded machine, the runs that recorded none apart, and each mean
    taken within one machine only."""
    for seed, minutes, machine, threads in ((0, 1, "AMD EPYC", 8), (1, 2, "Intel Xeon", 8),
                                            (2, 4, None, 8), (3, 8, "AMD EPYC", 8),
                                            (4, 16, "AMD EPYC", 1)):
        fake_run(tmp_path, "custom", seed, [0.90, 0.935], [0.4, 0.3])
        folder = tmp_path / "runs" / f"custom-seed{seed}"
        info = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**info, "machine": machine,
                                                        "threads": threads,
                                                        "matmul_peak_gflops": 5000.0}))
        metrics = (folder / "metrics.csv").read_text().replace(",10.0,", f",{30 * minutes},")
        (folder / "metrics.csv").write_text(metrics)
    fake_run(tmp_path, "lenet", 0, [0.88, 0.90], [0.4, 0.3])
    build_report(tmp_path, tmp_path / "no-data-needed", "cnnlab report x")
    text = section((tmp_path / "REPORT.md").read_text(), SECTIONS[5])
    tables = machine_tables(text)
    assert [lead.split(":")[0] for lead in tables] == [
        "On AMD EPYC, cuda × 8 threads", "On Intel Xeon, cuda × 8 threads",
        "On AMD EPYC, cuda × 1 threads", "Machine not recorded"]
    epyc, xeon, epyc_one_thread, unknown = ({row["recipe"]: row for row in rows}
                                            for rows in tables.values())
    assert epyc_one_thread["custom"]["training time per run (min)"] == "16.00"
    assert epyc_one_thread["custom"]["train GFLOP/s (% of matmul peak)"] == "2616 (52 %)"
    # 2 epochs of 30·m seconds each: m minutes a run
    assert epyc["custom"]["seeds"] == "2"
    assert epyc["custom"]["training time per run (min)"] == "4.50 ± 4.95 (1.00–8.00)"
    assert epyc["custom"]["time to reach it (min)"] == "4.50 ± 4.95 (1.00–8.00)"
    assert xeon["custom"]["training time per run (min)"] == "2.00"
    assert list(unknown) == ["lenet", "custom"]  # the study's order
    assert unknown["custom"]["training time per run (min)"] == "4.00"
    assert unknown["custom"]["machine"] == "not recorded"
    assert says(text, "did not record their machine", "lenet 1 of 1", "custom 1 of 5",
                "listed apart")


def test_other_folders_join_time_to_accuracy_only(tmp_path: Path, capsys, monkeypatch) -> None:
    """--time-runs: the study's runs beside a new recipe's in section 5, nowhere else; a
    recipe name present in both is told apart by its folder."""
    recipes, study = tmp_path / "recipes", tmp_path / "study"
    fake_run(recipes, "custom", 0, [0.92, 0.935], [0.3, 0.2])
    fake_run(study, "custom", 0, [0.90, 0.92, 0.934], [0.4, 0.3, 0.3])
    fake_run(study, "lenet", 0, [0.88, 0.90], [0.4, 0.3])
    info_path = study / "runs" / "lenet-seed0" / "config.json"
    info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "machine": "AMD EPYC"}))
    monkeypatch.setattr(sys, "argv", ["cnnlab", "report"])
    assert main(["report", str(recipes), "--time-runs", str(study)]) == 0
    capsys.readouterr()
    markdown = (recipes / "REPORT.md").read_text()
    epyc, unknown = machine_tables(section(markdown, SECTIONS[5])).values()
    assert [row["recipe"] for row in epyc] == ["lenet"]
    assert epyc[0]["machine"] == "AMD EPYC"
    assert [row["recipe"] for row in unknown] == ["custom", f"custom ({study})"]
    assert unknown[1]["first epoch"] == "3"
    assert [row["recipe"] for row in parse_table(section(markdown, SECTIONS[0]))] == ["custom"]


def test_figures_load_neither_pyplot_nor_the_inference_code() -> None:
    """`cnnlab train` draws a run's plots through cnnlab.report.figures: importing it switches
    no matplotlib backend and loads none of the study report's inference code."""
    code = ("import sys, cnnlab.report.figures; "
            "assert not {'matplotlib.pyplot', 'cnnlab.inference'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
