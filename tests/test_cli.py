"""The command line: real commands, one-line errors with exit status 2."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from cnnlab.cli import main
from cnnlab.recipe import list_builtin
from cnnlab.runs import command_line, read_metrics


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_shows_exact_parameter_counts(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for count in ("61,706", "2,780,298", "4,458,826", "4,458,442"):
        assert count in out


def test_presets_lists_the_study_recipes(capsys):
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0
    for name in ("lenet", "alexnet", "custom", "custom_nobn", "custom_nobn_lr1e-3"):
        assert name in out


@pytest.mark.parametrize("argv, message", [
    (["train", "resnet"], "unknown recipe 'resnet'"),
    (["train", "lenet", "--lr", "0"], "--set: optimizer.lr = 0.0: must be > 0"),
    (["train", "lenet", "--lr", "abc"], "invalid float value"),
    (["train", "lenet", "--epochs", "0"], "epochs = 0: must be ≥ 1"),
    (["train", "lenet", "--batch-size", "0"], "batch_size = 0"),
    (["train", "lenet", "--gamma", "0"], "schedule.gamma = 0.0: must be > 0"),
    (["train", "lenet", "--step-size", "0"], "schedule.step_size = 0"),
    (["train", "lenet", "--limit-train", "0"], "limit_train = 0"),
    (["train", "lenet", "--val-split", "-1"], "split.val = -1"),
    (["train", "lenet", "--seed", "4294967296"], "seed = 4294967296: must be [0, 4294967295]"),
    (["train", "lenet", "--set", "augment=[{ name = [1] }]"], "augment[0]: unknown transform [1]"),
    (["train", "lenet", "--epochs", "2", "--set", "average.name=ema", "--set",
      "average.start_epoch=3"], "average.start_epoch = 3 is after the last epoch (2)"),
    (["train", "lenet", "--set", "optimizer.lrr=1"],
     "optimizer.lrr: unknown key; valid keys in optimizer: name, lr,"),
    (["train", "lenet", "--set", "schedule.name=cosin"], "schedule.name = 'cosin': must be "
     "one of constant, step, multistep, cosine, linear, onecycle"),
    (["train", "lenet", "--set", "epochs"], "--set 'epochs': expected KEY=VALUE"),
    (["train", "lenet", "--set", "epochs.x=1"], "epochs is not a table"),
    (["train", "lenet", "--set", "model.args.width=2"],
     "model.args.width: not an argument of model 'lenet'; valid: none"),
    pytest.param(["train", "lenet", "--model", "my_nets.py:Net"],  # found after the data
                 "model code my_nets.py: no such file", marks=pytest.mark.real_data),
    (["train", "lenet", "--recipe", "x.toml"], "name a built-in recipe or give --recipe"),
    (["train", "--recipe", "/nonexistent.toml"], "/nonexistent.toml: no such recipe file"),
    (["train", "lenet", "--device", "cuda"], "CUDA is not available"),
    (["train", "lenet", "--bogus"], "unrecognized arguments"),
    (["train", "lenet", "--log", "wandb"], "invalid choice: 'wandb'"),
    (["train"], "name a recipe"),
    (["recipe", "show", "nope"], "unknown recipe 'nope'"),
    (["train", "--resume", "/nonexistent"], "not a cnnlab run folder"),
    (["evaluate", "/nonexistent/last.pt"], "no such checkpoint"),
    (["evaluate", "/nonexistent/last.pt", "--limit-test", "0"], "--limit-test must be >= 1"),
    (["frobnicate"], "invalid choice"),
    (["train", "lenet", "--threads", "0"], "--threads"),
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
    code, _, err = run_cli(capsys, *args, "--overwrite", "--device", "nope")  # refused first
    assert code == 2 and "unknown device 'nope'" in err
    assert (run / "last.pt").read_bytes() == before

    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--lr", "0.1")
    assert code == 2 and "optimizer.lr (saved 0.005, given 0.1)" in err


def test_console_script_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("cnnlab: error: unknown recipe")


@pytest.mark.parametrize("main_module, recorded", [
    (None, "cnnlab train sprint --out 'a b'"),  # the `cnnlab` console script
    ("cnnlab.cli", "cnnlab train sprint --out 'a b'"),
    ("experiments.recipes.gpu", "python -m experiments.recipes.gpu train sprint --out 'a b'"),
])
def test_a_run_records_the_command_that_started_it(monkeypatch, main_module, recorded):
    spec = None if main_module is None else SimpleNamespace(name=main_module)
    monkeypatch.setitem(sys.modules, "__main__", SimpleNamespace(__spec__=spec))
    monkeypatch.setattr(sys, "argv", ["prog", "train", "sprint", "--out", "a b"])
    assert command_line() == recorded


def test_recipe_errors_name_the_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[optimizer]\nname = "sgd"\nlearning_rate = 0.1\n')
    code, _, err = run_cli(capsys, "train", "--recipe", str(bad))
    assert code == 2 and err.count("\n") == 1
    assert f"{bad}: optimizer.learning_rate: unknown key; valid keys in optimizer:" in err
    bad.write_text("epochs = \n")
    code, _, err = run_cli(capsys, "train", "--recipe", str(bad))
    assert code == 2 and f"{bad}: not valid TOML" in err
    bad.write_text('augment = [{ name = "flip", p = 2 }]\n')
    code, _, err = run_cli(capsys, "train", "--recipe", str(bad))
    assert code == 2 and f"{bad}: augment[0].p = 2.0: must be [0, 1]" in err


@pytest.mark.parametrize("name", list_builtin())
def test_recipe_show_prints_toml_that_loads_back_to_the_same_recipe(tmp_path, capsys, name):
    from cnnlab.recipe import builtin, load_file

    code, out, _ = run_cli(capsys, "recipe", "show", name)
    assert code == 0
    path = tmp_path / f"{name}.toml"
    path.write_text(out)
    assert load_file(path) == builtin(name)


def test_the_example_recipe_trains_end_to_end(tmp_path, capsys, data_dir):
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples/recipes/custom-sgd-onecycle.toml"
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--recipe", str(example), "--epochs", "2",
                           "--set", "limit_train=512", "--limit-test", "200",
                           "--set", "split.val=300", "--data-dir", str(data_dir),
                           "--out", str(run), "--quiet")
    assert code == 0 and "custom-sgd-onecycle: final test accuracy" in out
    info = json.loads((run / "config.json").read_text())
    recipe = info["recipe"]
    assert recipe["optimizer"]["name"] == "sgd" and recipe["optimizer"]["nesterov"] is True
    assert recipe["schedule"]["name"] == "onecycle" and recipe["average"]["name"] == "ema"
    assert recipe["loss"]["label_smoothing"] == 0.1 and recipe["split"]["val"] == 300
    assert [t["name"] for t in recipe["augment"]] == ["translate", "flip"]
    rows = read_metrics(run / "metrics.csv")
    assert len(rows) == 2 and all(r["val_acc"] is not None for r in rows)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["averaged"] is not None and int(state["averaged"]["n_averaged"]) == 2 * 4


USER_NET = """
import torch
from torch import nn


def tiny(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * width, 10))


def wrong_shape() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))
"""


def test_a_users_own_network_trains_and_needs_its_code_named_to_load(tmp_path, capsys,
                                                                     data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_nets.py").write_text(USER_NET)
    args = ["--epochs", "1", "--limit-train", "256", "--limit-test", "100",
            "--data-dir", str(data_dir), "--quiet"]
    code, out, err = run_cli(capsys, "train", "lenet", "--model", "my_nets.py:tiny",
                             "--set", "model.args={ width = 4 }", "--out", "run", *args)
    assert code == 0, err
    info = json.loads((tmp_path / "run/config.json").read_text())
    assert info["recipe"]["model"] == {"name": "my_nets.py:tiny", "args": {"width": 4},
                                       "memory_format": "auto"}
    assert info["model_code"] == "my_nets.py"

    code, _, err = run_cli(capsys, "evaluate", "run", "--data-dir", str(data_dir))
    assert code == 2 and "pass --model-code my_nets.py" in err and err.count("\n") == 1
    code, out, _ = run_cli(capsys, "evaluate", "run", "--model-code", "my_nets.py",
                           "--data-dir", str(data_dir), "--limit-test", "100")
    assert code == 0 and "my_nets.py:tiny" in out

    code, _, err = run_cli(capsys, "train", "lenet", "--model", "my_nets.py:wrong_shape",
                           "--out", "run2", *args)
    assert code == 2 and "it must return (2, 10) logits" in err
    code, _, err = run_cli(capsys, "train", "lenet", "--model", "my_nets.py:missing",
                           "--out", "run3", *args)
    assert code == 2 and "my_nets.py has no callable 'missing'" in err


def test_bf16_on_cpu_needs_amx(tmp_path, capsys, data_dir):
    from cnnlab.device import cpu_has_amx_bf16

    code, _, err = run_cli(capsys, "train", "lenet", "--precision", "bf16", "--device", "cpu",
                           "--epochs", "1", "--limit-train", "64", "--limit-test", "64",
                           "--data-dir", str(data_dir), "--out", str(tmp_path / "r"),
                           "--quiet")
    if cpu_has_amx_bf16():
        assert code == 0, err
    else:
        assert code == 2 and "this CPU has no AMX-bf16 units" in err


def test_tensorboard_logs_scalars_per_epoch_and_every_n_steps(tmp_path, capsys, data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "lenet", "--epochs", "2", "--limit-train", "640",
                           "--limit-test", "100", "--log", "tensorboard", "--log-every", "4",
                           "--data-dir", str(data_dir), "--out", str(run), "--quiet")
    assert code == 0, err
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "epoch/test_acc", "epoch/train_loss"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss")] == [4, 8, 12, 16, 20]  # 10 a epoch
    rows = read_metrics(run / "metrics.csv")
    assert [e.value for e in events.Scalars("epoch/test_acc")] == pytest.approx(
        [r["test_acc"] for r in rows])


def test_recipe_show_takes_a_file_too(tmp_path, capsys):
    from pathlib import Path

    from cnnlab.recipe import load_file

    example = Path(__file__).parents[1] / "examples/recipes/custom-sgd-onecycle.toml"
    code, out, _ = run_cli(capsys, "recipe", "show", str(example))
    assert code == 0 and 'name = "custom-sgd-onecycle"' in out
    (tmp_path / "copy.toml").write_text(out)
    assert load_file(tmp_path / "copy.toml") == load_file(example)
