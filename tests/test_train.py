import json

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.train import (
    METRICS_HEADER,
    TrainConfig,
    load_checkpoint,
    read_metrics,
    resume_config,
    train,
)
from conftest import computed

CPU = torch.device("cpu")


def test_lenet_smoke_run_learns(tmp_path, data_dir):
    """LeNet, first 5,000 training images, 1 epoch: measured 47.8–53.5 % on the first 1,000
    test images over seeds 0–4 (chance is 10 %)."""
    config = TrainConfig.from_preset("lenet", epochs=1, limit_train=5000, limit_test=1000)
    rows = train(config, tmp_path / "run", data_dir, CPU, quiet=True)
    assert rows[-1]["test_acc"] > 0.40
    run = tmp_path / "run"
    assert (run / "metrics.csv").read_text().splitlines()[0] == ",".join(METRICS_HEADER)
    assert computed(read_metrics(run / "metrics.csv")) == computed(rows)
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["limit_train"] == 5000 and saved["device"] == "cpu"
    assert {"torch", "started", "git_commit", "cnnlab", "threads"} <= set(saved)


def test_checkpoint_loads_with_weights_only(tmp_path, data_dir):
    config = TrainConfig.from_preset("lenet", epochs=1, limit_train=256, limit_test=64)
    train(config, tmp_path, data_dir, CPU, quiet=True)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["config"]["model"] == "lenet"
    assert {"model", "optimizer", "scheduler", "metrics"} <= set(state)


@pytest.mark.parametrize("preset, limit", [("lenet", 1000), ("custom", 192)])
def test_resume_gives_the_same_metrics(tmp_path, data_dir, preset, limit):
    """2 epochs straight == 1 epoch, then resumed for 1 more (model, optimizer, StepLR,
    data order, augmentation and dropout all restored)."""
    config = TrainConfig.from_preset(preset, epochs=2, step_size=1, limit_train=limit,
                                     limit_test=100)
    straight = train(config, tmp_path / "a", data_dir, CPU, quiet=True)
    first = TrainConfig.from_preset(preset, epochs=1, step_size=1, limit_train=limit,
                                    limit_test=100)
    train(first, tmp_path / "b", data_dir, CPU, quiet=True)
    # Extending a finished run is refused unless the config agrees: write the 2-epoch
    # config as if the run had been started with it and stopped after epoch 1.
    saved = json.loads((tmp_path / "b/config.json").read_text())
    saved["config"]["epochs"] = 2
    (tmp_path / "b/config.json").write_text(json.dumps(saved))
    resumed = train(resume_config(tmp_path / "b", None, {}), tmp_path / "b", data_dir, CPU,
                    resume=True, quiet=True)
    assert computed(resumed) == computed(straight)
    assert straight[1]["lr"] == pytest.approx(straight[0]["lr"] * 0.5)


def test_resume_refuses_disagreeing_options(tmp_path, data_dir):
    config = TrainConfig.from_preset("lenet", epochs=1, limit_train=128, limit_test=64)
    train(config, tmp_path, data_dir, CPU, quiet=True)
    with pytest.raises(CnnlabError, match=r"lr \(saved 0.005, given 0.1\)"):
        resume_config(tmp_path, None, {"lr": 0.1})
    with pytest.raises(CnnlabError, match="preset"):
        resume_config(tmp_path, "alexnet", {})
    assert resume_config(tmp_path, "lenet", {"lr": 0.005}).limit_train == 128


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(CnnlabError, match="not a cnnlab run folder"):
        resume_config(tmp_path, None, {})


@pytest.mark.parametrize("override, message", [
    ({"lr": 0.0}, "lr must be > 0"), ({"epochs": 0}, "epochs must be >= 1"),
    ({"batch_size": 0}, "batch size"), ({"gamma": -1.0}, "gamma"),
    ({"step_size": 0}, "step size"), ({"limit_train": 0}, "limit-train"),
    ({"limit_test": -5}, "limit-test"), ({"model": "nope"}, "unknown model"),
])
def test_bad_values_are_refused(override, message):
    with pytest.raises(CnnlabError, match=message):
        TrainConfig.from_preset("lenet", **override)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(CnnlabError, match="not a loadable cnnlab checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
