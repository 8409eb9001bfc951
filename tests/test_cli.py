"""The command line: real commands, one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from cnnlab.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_shows_exact_parameter_counts(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for count in ("61,706", "2,780,298", "4,458,826", "4,458,442"):
        assert count in out


def test_presets_lists_the_study_runs(capsys):
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0
    for name in ("lenet", "alexnet", "custom", "custom_nobn", "custom_nobn_lr1e-3"):
        assert name in out


@pytest.mark.parametrize("argv, message", [
    (["train", "resnet"], "unknown preset"),
    (["train", "lenet", "--lr", "0"], "lr must be > 0"),
    (["train", "lenet", "--lr", "abc"], "invalid float value"),
    (["train", "lenet", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "lenet", "--batch-size", "0"], "batch size"),
    (["train", "lenet", "--gamma", "0"], "gamma"),
    (["train", "lenet", "--step-size", "0"], "step size"),
    (["train", "lenet", "--limit-train", "0"], "limit-train"),
    (["train", "lenet", "--device", "cuda"], "CUDA is not available"),
    (["train", "lenet", "--bogus"], "unrecognized arguments"),
    (["train"], "name a preset"),
    (["train", "--resume", "/nonexistent"], "not a cnnlab run folder"),
    (["evaluate", "/nonexistent/last.pt"], "no such checkpoint"),
    (["frobnicate"], "invalid choice"),
    (["train", "lenet", "--threads", "0"], "--threads"),
    (["train", "lenet", "--bf16", "--device", "cpu", "--limit-train", "64"], "needs a CUDA"),
    (["bench", "--models", "vgg"], "unknown model vgg"),
    (["bench", "--steps", "0"], "--steps and --repeats"),
])
def test_user_errors_are_one_line_with_status_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("cnnlab: error: ")
    assert "Traceback" not in err


def test_train_evaluate_and_refuse_to_overwrite(tmp_path, capsys, data_dir):
    run = tmp_path / "run"
    args = ["train", "lenet", "--epochs", "1", "--limit-train", "2000", "--limit-test", "500",
            "--data-dir", str(data_dir), "--out", str(run), "--quiet"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "final test accuracy" in out
    for name in ("metrics.csv", "config.json", "last.pt", "loss.png", "accuracy.png"):
        assert (run / name).is_file(), name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, out, _ = run_cli(capsys, "evaluate", str(run), "--data-dir", str(data_dir),
                           "--limit-test", "500")
    saved_acc = float((run / "metrics.csv").read_text().splitlines()[1].split(",")[4])
    assert code == 0 and f"{100 * saved_acc:.2f}%" in out

    before = (run / "last.pt").read_bytes()
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert (run / "last.pt").read_bytes() == before

    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--lr", "0.1")
    assert code == 2 and "lr (saved 0.005, given 0.1)" in err


def test_console_script_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("cnnlab: error: unknown preset")
