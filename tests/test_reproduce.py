"""`cnnlab reproduce`: every run trained once, finished runs skipped, interrupted ones resumed."""

import pytest
import torch

import cnnlab.reproduce
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.loggers import Logger
from cnnlab.reproduce import plan, reproduce
from cnnlab.runs import read_metrics
from conftest import train_recipe

TINY = {"epochs": 2, "limit_train": 400, "limit_test": 200}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(cnnlab.reproduce, "QUICK", TINY)


def test_reproduce_trains_skips_and_resumes(tmp_path, data_dir, tiny, capsys):
    runs = plan(["lenet", "custom_nobn"], [0, 1], tmp_path, quick=True)
    assert [r.name for r in runs] == ["lenet-seed0", "lenet-seed1", "custom_nobn-seed0",
                                      "custom_nobn-seed1"]
    # An interrupted run: Ctrl-C right after its first epoch was saved.
    interrupted = runs[2]

    class Interrupt(Logger):
        def log_epoch(self, row):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_recipe(interrupted.recipe, interrupted.run.path, data_dir, loggers=[Interrupt()])
    assert interrupted.run.epochs_done() == 1

    reproduce(["lenet", "custom_nobn"], [0, 1], tmp_path, data_dir, torch.device("cpu"),
              quick=True, quiet=True)
    err = capsys.readouterr().err
    assert "[run 3/4 custom_nobn-seed0] resuming after epoch 1" in err
    assert "reproduction ETA" in err
    for run in runs:
        assert len(read_metrics(run.run.metrics_path)) == 2, run.name
        assert (run.run.path / "loss.png").is_file() and (run.run.path / "accuracy.png").is_file()

    stamps = {r.name: r.run.checkpoint.stat().st_mtime_ns for r in runs}
    reproduce(["lenet", "custom_nobn"], [0, 1], tmp_path, data_dir, torch.device("cpu"),
              quick=True, quiet=True)
    assert "finished earlier, skipped" in capsys.readouterr().err
    assert stamps == {r.name: r.run.checkpoint.stat().st_mtime_ns for r in runs}


def test_reproduce_refuses_a_folder_with_other_settings(tmp_path, data_dir, tiny):
    reproduce(["lenet"], [0], tmp_path, data_dir, torch.device("cpu"), quick=True, quiet=True)
    with pytest.raises(CnnlabError, match="options disagree with the saved run"):
        reproduce(["lenet"], [0], tmp_path, data_dir, torch.device("cpu"), quick=False,
                  quiet=True)


def test_reproduce_quick_command_writes_the_report(tmp_path, data_dir, tiny, capsys):
    out = tmp_path / "study"
    code = main(["reproduce", "--quick", "--runs", "lenet,custom", "--out", str(out),
                 "--data-dir", str(data_dir), "--quiet"])
    assert code == 0
    assert (out / "REPORT.md").is_file() and (out / "report.html").is_file()
    report = (out / "REPORT.md").read_text()
    final = read_metrics(out / "runs/lenet-seed0/metrics.csv")[-1]["test_acc"]
    assert f"| lenet | 0 | {100 * final:.2f} |" in report
    printed = capsys.readouterr().out.splitlines()  # what the short runs are, then what next
    note = " ".join(printed[:printed.index(f"wrote {out / 'REPORT.md'}")])
    assert all(figure in note for figure in ("2 epochs", "first 400 ", "first 200 "))
    assert str(out / "REPORT.md") in printed[-2] and str(out / "report.html") in printed[-2]
    assert printed[-1].endswith(": cnnlab reproduce")


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "--runs", "lenet,vgg"], "unknown recipe vgg"),
    (["reproduce", "--seeds", "a,b"], "--seeds wants integers"),
])
def test_reproduce_bad_options(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
