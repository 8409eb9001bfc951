"""The trust rule for a user's network code: a recipe file, a sweep's stored recipes, a run
folder or a checkpoint may name code (`my_nets.py:Net`), but cnnlab imports it only when this
command line names it: typed as the network (`--model my_nets.py:Net`), or again with
`--model-code`. The code under test records each import in a file, so a test sees whether
it ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.models import trusted_code
from cnnlab.runs import read_metrics
from conftest import one_line_error

USER_NET = """
from pathlib import Path
from torch import nn

with open("imported.log", "a") as log:  # the proof that this file ran
    log.write("imported\\n")


def tiny(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * width, 10))
"""
RECIPE = """
epochs = 1
limit_train = 256
limit_test = 100

[model]
name = "my_nets.py:tiny"
"""
ASK = ("names code my_nets.py:tiny; running it imports that file: pass --model-code "
       "my_nets.py if you trust it")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_nets.py").write_text(USER_NET)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    return tmp_path


def imports(folder: Path) -> int:
    log = folder / "imported.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_the_rule_itself(folder: Path):
    assert trusted_code("lenet", "recipe.toml", None) is None
    assert trusted_code("my_nets.py:tiny", "recipe.toml", "./my_nets.py") == "./my_nets.py"
    assert trusted_code("pkg.nets:tiny", "recipe.toml", "pkg.nets") == "pkg.nets"
    with pytest.raises(Exception, match="not --model-code other.py"):
        trusted_code("my_nets.py:tiny", "recipe.toml", "other.py")
    with pytest.raises(Exception, match="pass --model-code pkg.nets if you trust it"):
        trusted_code("pkg.nets:tiny", "recipe.toml", None)


def test_a_recipe_file_s_code_runs_only_when_named_and_so_does_its_resume(
        folder: Path, data_dir: Path, capsys):
    data = ["--data-dir", str(data_dir), "--quiet"]
    err = one_line_error(capsys, ["train", "--recipe", "recipe.toml", "--out", "run", *data])
    assert err == f"cnnlab: error: recipe.toml {ASK}\n"
    err = one_line_error(capsys, ["train", "--recipe", "recipe.toml", "--out", "run",
                                  "--model-code", "other.py", *data])
    assert "not --model-code other.py" in err
    assert imports(folder) == 0 and not (folder / "run").exists()

    assert main(["train", "--recipe", "recipe.toml", "--out", "run", "--model-code",
                 "my_nets.py", *data]) == 0
    assert imports(folder) == 1
    assert json.loads((folder / "run/config.json").read_text())["model_code"] == "my_nets.py"

    resume = ["train", "--resume", "run", *data]  # a finished run: loads, trains nothing
    capsys.readouterr()
    assert "pass --model-code my_nets.py to load it" in one_line_error(capsys, resume)
    assert imports(folder) == 1
    assert main([*resume, "--model-code", "my_nets.py"]) == 0
    assert imports(folder) == 2 and len(read_metrics(folder / "run/metrics.csv")) == 1

    # A network typed on the command line names its own code, as before.
    assert main(["train", "lenet", "--model", "my_nets.py:tiny", "--epochs", "1",
                 "--limit-train", "256", "--limit-test", "100", "--out", "typed", *data]) == 0
    assert imports(folder) == 3


def test_a_sweep_s_stored_code_runs_only_when_its_workers_name_it(folder: Path,
                                                                  data_dir: Path, capsys):
    storage = str(folder / "s.journal")
    assert main(["sweep", "create", "mine", "--storage", storage, "--recipe", "recipe.toml",
                 "--grid", "seed=0"]) == 0
    assert imports(folder) == 0, "creating a sweep imports nothing"
    work = ["sweep", "work", "mine", "--storage", storage, "--runs-root", "runs",
            "--data-dir", str(data_dir)]
    capsys.readouterr()
    assert one_line_error(capsys, work) == f"cnnlab: error: sweep mine {ASK}\n"
    assert imports(folder) == 0
    assert main([*work, "--model-code", "my_nets.py"]) == 0
    assert imports(folder) == 1
    assert "1 complete" in capsys.readouterr().out
