import json
import math
import platform
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cnnlab.device import machine_name
from cnnlab.errors import CnnlabError
from cnnlab.loggers import Logger, format_epoch
from cnnlab.models import create_model
from cnnlab.muon import orthogonalised
from cnnlab.parts import build_parts, make_optimizer
from cnnlab.recipe import builtin, list_builtin
from cnnlab.runs import METRICS_HEADER, RunFolder, read_metrics
from cnnlab.train import resumable_epochs, resume_recipe
from conftest import CPU, computed, study_recipe, train_recipe

GOLDEN = Path(__file__).parent / "golden" / "study-presets.json"
GOLDEN_RECIPES = list(json.loads(GOLDEN.read_text())["presets"])


def test_lenet_smoke_run_learns(tmp_path, data_dir):
    """LeNet, first 5,000 training images, 1 epoch: measured 47.8–53.5 % on the first 1,000
    test images over seeds 0–4 (chance is 10 %)."""
    recipe = study_recipe("lenet", epochs=1, limit_train=5000, limit_test=1000)
    rows = train_recipe(recipe, tmp_path / "run", data_dir)
    assert rows[-1]["test_acc"] > 0.40
    run = tmp_path / "run"
    assert (run / "metrics.csv").read_text().splitlines()[0] == ",".join(METRICS_HEADER)
    assert computed(read_metrics(run / "metrics.csv")) == computed(rows)
    assert rows[-1]["val_loss"] is None and rows[-1]["val_acc"] is None
    saved = json.loads((run / "config.json").read_text())
    assert saved["recipe"]["limit_train"] == 5000 and saved["device"] == "cpu"
    assert saved["recipe"]["optimizer"] == recipe.to_dict()["optimizer"]
    assert {"torch", "started", "git_commit", "cnnlab", "threads"} <= set(saved)
    assert saved["matmul_peak_gflops"] > 0  # the CPU's limit, for the report's % of peak
    for name in ("loss.png", "accuracy.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def golden_tolerance() -> dict | None:
    """None (exact) on the machine that made the golden file; else the tolerance that
    float differences between CPUs need. 100 Adam steps at lr 0.001–0.005 amplify rounding:
    on the golden file's CPU, merely running with 1 thread instead of 2 (other reduction
    orders) moved alexnet's test accuracy by 1.2 points and custom's test loss by 6 %."""
    golden = json.loads(GOLDEN.read_text())
    same = (golden["cpu"] == machine_name(CPU) and golden["threads"] == torch.get_num_threads()
            and golden["torch"] == torch.__version__ and platform.machine() == "x86_64")
    return None if same else {"acc": 0.03, "loss_rel": 0.15}


@pytest.mark.parametrize("name", GOLDEN_RECIPES)
def test_study_recipes_compute_what_the_presets_computed(tmp_path, data_dir, name):
    """`cnnlab train NAME --epochs 2 --limit-train 3200 --limit-test 1000 --seed 0`, recorded
    with the code before recipes existed (tests/golden/study-presets.json)."""
    golden = json.loads(GOLDEN.read_text())["presets"][name]
    recipe = study_recipe(name, epochs=2, limit_train=3200, limit_test=1000, seed=0)
    rows = train_recipe(recipe, tmp_path / name, data_dir)
    got = [{k: row[k] for k in golden[0]} for row in rows]
    tolerance = golden_tolerance()
    if tolerance is None:
        assert got == golden
        return
    for ours, theirs in zip(got, golden, strict=True):
        assert ours["epoch"] == theirs["epoch"] and ours["lr"] == theirs["lr"]
        for k in ("train_acc", "test_acc"):
            assert ours[k] == pytest.approx(theirs[k], abs=tolerance["acc"]), k
        for k in ("train_loss", "test_loss"):
            assert ours[k] == pytest.approx(theirs[k], rel=tolerance["loss_rel"]), k


def test_checkpoint_loads_with_weights_only(tmp_path, data_dir):
    recipe = study_recipe("lenet", epochs=1, limit_train=256, limit_test=64)
    train_recipe(recipe, tmp_path, data_dir)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["recipe"]["model"]["name"] == "lenet"
    assert {"model", "optimizer", "scheduler", "metrics", "averaged"} <= set(state)


class StopAfterEpoch(Logger):
    """Ctrl-C right after the given epoch was saved."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def log_epoch(self, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


def assert_resume_is_exact(recipe, tmp_path, data_dir):
    straight = train_recipe(recipe, tmp_path / "a", data_dir)
    with pytest.raises(KeyboardInterrupt):
        train_recipe(recipe, tmp_path / "b", data_dir, loggers=[StopAfterEpoch(1)])
    assert RunFolder(tmp_path / "b").epochs_done() == 1
    resumed = train_recipe(resume_recipe(RunFolder(tmp_path / "b"), {}), tmp_path / "b",
                           data_dir, resume=True)
    assert computed(resumed) == computed(straight)
    return straight


@pytest.mark.parametrize("name, limit", [("lenet", 1000), ("custom", 192)])
def test_resume_gives_the_same_metrics(tmp_path, data_dir, name, limit):
    """2 epochs straight == 1 epoch, interrupted, then resumed (model, optimizer, StepLR,
    data order, augmentation and dropout all restored)."""
    recipe = study_recipe(name, epochs=2, limit_train=limit, limit_test=100,
                          **{"schedule.step_size": 1})
    straight = assert_resume_is_exact(recipe, tmp_path, data_dir)
    assert straight[1]["lr"] == pytest.approx(straight[0]["lr"] * 0.5)


def test_resume_is_exact_with_every_new_part(tmp_path, data_dir):
    """Per-step one-cycle schedule, EMA, validation split, SGD with Nesterov and parameter
    groups, label smoothing, flip averaging, and the new transforms."""
    recipe = study_recipe("lenet", epochs=3, limit_train=640, limit_test=100, batch_size=50,
                          augment=[{"name": "translate", "pixels": 2},
                                   {"name": "alternating_flip"}, {"name": "erase"}],
                          **{"optimizer.name": "sgd", "optimizer.lr": 0.2,
                             "optimizer.nesterov": True, "optimizer.weight_decay": 5e-4,
                             "optimizer.norm_bias_decay": False,
                             "optimizer.norm_bias_lr_scale": 2.0,
                             "schedule.name": "onecycle", "loss.label_smoothing": 0.1,
                             "average.name": "ema", "average.decay": 0.9,
                             "evaluate.flip": True, "split.val": 300})
    straight = assert_resume_is_exact(recipe, tmp_path, data_dir)
    assert all(row["val_acc"] is not None for row in straight)
    lrs = [row["lr"] for row in straight]
    assert lrs[0] < lrs[1] and lrs[2] < lrs[1]  # one-cycle, stepped per batch
    state = torch.load(tmp_path / "b/last.pt", weights_only=True)
    assert int(state["averaged"]["n_averaged"]) == 3 * 13  # 640 / 50 → 13 steps an epoch


def test_muon_steps_filters_orthogonally_and_resumes_exactly(tmp_path, data_dir):
    """optimizer muon: the convolution filters get their own group at filter_lr, stepped by
    an orthogonalised update (its singular values near 1); the rest is SGD; resume exact."""
    recipe = study_recipe("fast", epochs=2, limit_train=1024, limit_test=100, batch_size=128,
                          **{"optimizer.name": "muon", "optimizer.filter_lr": 0.02})
    rows = assert_resume_is_exact(recipe, tmp_path, data_dir)
    assert all(math.isfinite(row["train_loss"]) for row in rows)
    model = create_model(recipe.model.name, recipe.model.args)
    groups = make_optimizer(model, recipe.optimizer, CPU).param_groups
    assert [g["orthogonalise"] for g in groups] == [False, False, True]
    assert groups[2]["lr"] == 0.02 and all(p.ndim == 4 for p in groups[2]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    singular = torch.linalg.svdvals(orthogonalised(torch.randn(48, 24, 3, 3)).reshape(48, -1))
    assert singular.min() > 0.5 and singular.max() < 1.3


def test_lookahead_restarts_from_its_slow_weights_and_resumes_exactly(tmp_path, data_dir):
    """average lookahead: the slow weights stay put for `every` − 1 steps, then move halfway
    (decay 0.5) to the network's, and the network takes them; resume exact."""
    recipe = study_recipe("lenet", epochs=2, limit_train=1024, limit_test=100,
                          batch_size=64, **{"average.name": "lookahead",
                                            "average.decay": 0.5, "average.every": 5})
    rows = assert_resume_is_exact(recipe, tmp_path, data_dir)
    assert all(math.isfinite(row["train_loss"]) for row in rows)
    model = create_model(recipe.model.name, recipe.model.args)
    parts = build_parts(recipe, model, CPU, steps_per_epoch=16)
    start = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        parts.after_step(epoch=1)
        slow = list(parts.averaged.module.parameters())
        if step < 5:
            assert all(torch.equal(s, p0) for s, p0 in zip(slow, start, strict=True))
    assert all(torch.allclose(s, p0 + 2.5) for s, p0 in zip(slow, start, strict=True))
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), slow, strict=True))


def test_the_whitening_bias_is_frozen_after_its_epochs_and_resume_is_exact(tmp_path, data_dir):
    """whiten_bias_epochs = 1: epoch 1 trains the whitening bias, epoch 2 of a resumed run
    leaves it as it was, and the run resumed equals the run straight through."""
    recipe = study_recipe("sprint", epochs=2, limit_train=1024, limit_test=100,
                          batch_size=128, **{"model.args.whiten_bias_epochs": 1})
    straight = train_recipe(recipe, tmp_path / "a", data_dir)
    with pytest.raises(KeyboardInterrupt):
        train_recipe(recipe, tmp_path / "b", data_dir, loggers=[StopAfterEpoch(1)])

    def bias() -> torch.Tensor:
        return torch.load(tmp_path / "b/last.pt", weights_only=True)["model"]["stem.0.bias"]
    after_one = bias()
    resumed = train_recipe(resume_recipe(RunFolder(tmp_path / "b"), {}), tmp_path / "b",
                           data_dir, resume=True)
    assert computed(resumed) == computed(straight)
    assert after_one.abs().sum() > 0 and torch.equal(bias(), after_one)


def test_evaluating_after_the_last_epoch_only_trains_the_same_and_resumes(tmp_path, data_dir):
    """evaluate.every_epoch = false leaves the earlier rows' evaluation columns empty, in
    memory and in metrics.csv, and changes nothing else: training draws no randomness from
    evaluation, so the last row equals that of a run evaluated every epoch."""
    every = study_recipe("lenet", epochs=3, limit_train=640, limit_test=100,
                         **{"split.val": 200, "evaluate.flip": True, "evaluate.shift": 1})
    last_only = every.with_overrides({"evaluate.every_epoch": False})
    straight = assert_resume_is_exact(last_only, tmp_path, data_dir)
    reference = train_recipe(every, tmp_path / "every", data_dir)
    for row in straight[:2]:
        assert all(row[k] is None for k in ("test_loss", "test_acc", "val_loss", "val_acc"))
    assert computed(straight[2:]) == computed(reference[2:])
    assert RunFolder(tmp_path / "a").read_metrics()[0]["test_acc"] is None
    predicted = (tmp_path / "a/predictions.csv").read_text()
    assert predicted == (tmp_path / "every/predictions.csv").read_text()
    assert "not evaluated" in format_epoch(straight[0], 3)


@pytest.mark.parametrize("name", [n for n in list_builtin() if n not in GOLDEN_RECIPES])
def test_every_other_builtin_recipe_trains_and_resumes_exactly(tmp_path, data_dir, name):
    """Every built-in recipe without golden metrics (the no-BatchNorm ablations and the
    recipes beyond the study) trains its own network, optimizer, schedule, augmentation and
    evaluation on a few images, and resumes exactly after an interruption."""
    recipe = study_recipe(name, epochs=2, limit_train=1024, limit_test=200)
    rows = assert_resume_is_exact(recipe, tmp_path, data_dir)
    assert all(math.isfinite(row["train_loss"]) for row in rows)


def test_a_one_cycle_too_short_to_rise_is_refused(tmp_path, data_dir):
    """2 epochs of 2 batches: a quarter of 4 steps is one step, a rise torch cannot draw."""
    recipe = study_recipe("fast", epochs=2, limit_train=512, limit_test=100)
    with pytest.raises(CnnlabError, match="onecycle: 4 steps in all leave its rise"):
        train_recipe(recipe, tmp_path / "run", data_dir)


def test_a_whitening_stem_is_fitted_once_and_stays_frozen(tmp_path, data_dir):
    """speednet's whitening filters come from the run's training images before the first
    step, are not trained, and a resumed run keeps them (and its metrics) exactly."""
    from cnnlab.augment import eval_batch
    from cnnlab.data import load_datasets
    from cnnlab.models import fit_to_data, get_model

    args = {"widths": [8, 16], "depth": 1, "whiten": 2}
    recipe = study_recipe("custom", epochs=2, limit_train=256, limit_test=100,
                          **{"model.name": "speednet", "model.args": args})
    assert_resume_is_exact(recipe, tmp_path, data_dir)
    expected = get_model("speednet", **args)
    train_images = load_datasets(data_dir, 0, 256, 100).train.images
    fit_to_data(expected, eval_batch(train_images))
    for run in ("a", "b"):
        state = torch.load(tmp_path / run / "last.pt", weights_only=True)["model"]
        assert torch.allclose(state["stem.0.weight"], expected.stem[0].weight)
        assert state["stem.0.weight"].abs().sum() > 0


def test_the_study_s_own_way_resumes_exactly(tmp_path, data_dir):
    """Every part of the fast path switched to the study's way: torchvision's transforms one
    image at a time behind a shuffling DataLoader, NCHW, plain Adam, the plain stem."""
    recipe = study_recipe("custom_nobn", epochs=2, limit_train=192, limit_test=64,
                          pipeline="per_image",
                          **{"model.memory_format": "contiguous", "optimizer.fused": False,
                             "model.args": {"fused_stem": False}})
    straight = assert_resume_is_exact(recipe, tmp_path, data_dir)
    fast = train_recipe(recipe.with_overrides({"pipeline": "batched"}), tmp_path / "c",
                        data_dir)
    assert computed(fast) != computed(straight), "the two pipelines draw differently"


def test_per_image_batches_are_the_reference_pipeline(data_dir):
    """Seeded like a training epoch, the per-image pipeline serves what torchvision-style
    per-sample transforms behind DataLoader(shuffle=True) serve."""
    from torch.utils.data import DataLoader

    from cnnlab.data import load_datasets
    from cnnlab.reference import PerSampleDataset
    from cnnlab.train import per_image_batches

    data = load_datasets(data_dir, limit_train=200, limit_test=1).train
    recipe = study_recipe("custom", pipeline="per_image", batch_size=64)
    torch.manual_seed(7)
    ours = list(per_image_batches(recipe, data, 1, 7))
    torch.manual_seed(7)
    loader = DataLoader(PerSampleDataset(data, augment=True), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(7))
    theirs = list(loader)
    assert [len(y) for _, y in ours] == [64, 64, 64, 8]
    for (x, y), (x2, y2) in zip(ours, theirs, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    labels = torch.cat([y for _, y in ours])
    assert sorted(labels.tolist()) == sorted(data.labels.tolist())  # a permutation


def test_memory_format_can_be_chosen():
    from cnnlab.device import prepare_model
    from cnnlab.models import create_model

    for layout, contiguous in (("contiguous", True), ("channels_last", False),
                               ("auto", False)):
        model = prepare_model(create_model("custom_nobn", {}), CPU, layout)
        weight = model.conv3.weight
        assert weight.is_contiguous() == contiguous, layout
        assert weight.is_contiguous(memory_format=torch.channels_last) != contiguous
    assert prepare_model(create_model("alexnet", {}), CPU).channels_last is False


def test_resume_refuses_disagreeing_options(tmp_path, data_dir):
    recipe = study_recipe("lenet", epochs=1, limit_train=128, limit_test=64)
    train_recipe(recipe, tmp_path, data_dir)
    run = RunFolder(tmp_path)
    with pytest.raises(CnnlabError, match=r"optimizer.lr \(saved 0.005, given 0.1\)"):
        resume_recipe(run, {"optimizer.lr": 0.1})
    with pytest.raises(CnnlabError, match=r"name \(saved 'lenet', given 'alexnet'\)"):
        resume_recipe(run, {"name": "alexnet"})
    assert resume_recipe(run, {"optimizer.lr": 0.005}).limit_train == 128
    assert resumable_epochs(run, recipe) == 1
    with pytest.raises(CnnlabError, match=r"limit_train \(saved 128, given None\)"):
        resumable_epochs(run, replace(recipe, limit_train=None))


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(CnnlabError, match="not a cnnlab run folder"):
        resume_recipe(RunFolder(tmp_path), {})


def make_legacy(run_dir: Path, preset: str, epochs: int) -> None:
    """Rewrite a run folder into the format cnnlab wrote before recipes existed: a flat
    preset config in config.json and the checkpoint (format v1, no weight average), and
    metrics.csv without the validation columns."""
    old_config = {"preset": preset, "model": preset, "batch_size": 64, "epochs": epochs,
                  "lr": builtin(preset).optimizer.lr, "step_size": 5, "gamma": 0.5,
                  "augment": bool(builtin(preset).augment), "seed": 0, "limit_train": 640,
                  "limit_test": 100, "bf16": False}
    info = json.loads((run_dir / "config.json").read_text())
    del info["recipe"], info["model_code"]
    (run_dir / "config.json").write_text(json.dumps({"config": old_config, **info}))
    state = torch.load(run_dir / "last.pt", weights_only=True)
    for row in state["metrics"]:
        del row["val_loss"], row["val_acc"]
    legacy = {"format": "cnnlab-checkpoint-v1", "epoch": state["epoch"],
              "config": old_config, "model": state["model"],
              "optimizer": state["optimizer"], "scheduler": state["scheduler"],
              "metrics": state["metrics"]}
    torch.save(legacy, run_dir / "last.pt")
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    (run_dir / "metrics.csv").write_text("\n".join(
        ",".join(line.split(",")[:8]) for line in lines) + "\n")


def test_a_run_folder_written_before_recipes_loads_resumes_and_reports(tmp_path, data_dir,
                                                                        capsys):
    from cnnlab.cli import main

    recipe = study_recipe("custom", epochs=2, limit_train=640, limit_test=100)
    straight = train_recipe(recipe, tmp_path / "a", data_dir)
    old = tmp_path / "study/runs/custom-seed0"
    with pytest.raises(KeyboardInterrupt):
        train_recipe(recipe, old, data_dir, loggers=[StopAfterEpoch(1)])
    make_legacy(old, "custom", epochs=2)
    assert resume_recipe(RunFolder(old), {}) == recipe
    assert main(["evaluate", str(old), "--data-dir", str(data_dir), "--limit-test", "100"]) == 0
    assert f"{100 * straight[0]['test_acc']:.2f}%" in capsys.readouterr().out
    assert main(["train", "--resume", str(old), "--data-dir", str(data_dir), "--quiet"]) == 0
    assert computed(read_metrics(old / "metrics.csv")) == computed(straight)
    assert main(["report", str(tmp_path / "study"), "--data-dir", str(data_dir)]) == 0
    report = (tmp_path / "study/REPORT.md").read_text()
    # one seed: the column of the mean's interval is empty
    assert f"| custom | 0 | {100 * straight[1]['test_acc']:.2f} |  | 93.3 |" in report


def test_the_validation_split_is_fixed_and_disjoint(data_dir):
    from cnnlab.data import ImageSet, load_datasets, split_off

    numbered = ImageSet(torch.zeros(1000, 28, 28, dtype=torch.uint8), torch.arange(1000))
    rest, held = split_off(numbered, 100)
    assert sorted(rest.labels.tolist() + held.labels.tolist()) == list(range(1000))
    assert rest.labels.tolist() == sorted(rest.labels.tolist())  # original order kept
    assert torch.equal(split_off(numbered, 100)[1].labels, held.labels)
    with pytest.raises(CnnlabError, match="split.val = 1000: must be between 1 and 999"):
        split_off(numbered, 1000)

    a = load_datasets(data_dir, val=1000)
    b = load_datasets(data_dir, val=1000, limit_train=500)
    assert len(a.train) == 59_000 and len(a.val) == 1000 and len(b.train) == 500
    assert torch.equal(a.val.images, b.val.images)  # the same images for every run
    assert torch.equal(a.train.images[:500], b.train.images)


@pytest.mark.parametrize("override, message", [
    ({"optimizer.lr": 0.0}, "optimizer.lr = 0.0: must be > 0"),
    ({"epochs": 0}, "epochs = 0: must be ≥ 1"),
    ({"batch_size": 0}, "batch_size"), ({"schedule.gamma": -1.0}, "schedule.gamma"),
    ({"schedule.step_size": 0}, "schedule.step_size"), ({"limit_train": 0}, "limit_train"),
    ({"limit_test": -5}, "limit_test"), ({"model.name": "nope"}, "unknown model 'nope'"),
    ({"optimizer.nme": "sgd"}, "optimizer.nme: unknown key; valid keys in optimizer: name"),
    ({"optimizer.name": "lamb"}, "must be one of adam, adamw, sgd"),
    ({"model.args": {"width": 2}}, "model.args.width: not an argument of model 'lenet'"),
    ({"augment": [{"name": "mixup"}]}, "augment[0]: unknown transform 'mixup'"),
    ({"augment": [{"name": "rotate", "degrees": 200}]}, "augment[0].degrees = 200.0"),
    ({"loss.label_smoothing": 1.0}, "loss.label_smoothing = 1.0: must be [0, 1)"),
    ({"epochs": 2.5}, "epochs = 2.5: expected integer"),
    ({"optimizer.betas": [0.9]}, "optimizer.betas = [0.9]: must be 2 numbers"),
])
def test_bad_values_are_refused_naming_the_key(override, message):
    with pytest.raises(CnnlabError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("]", r"\]").replace(".", r"\.")):
        builtin("lenet").with_overrides(override)


def test_not_a_checkpoint(tmp_path):
    from cnnlab.checkpoint import load_checkpoint

    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(CnnlabError, match="not a loadable cnnlab checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_train_leaves_the_global_rng_and_flags_as_it_found_them(tmp_path, data_dir):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train_recipe(study_recipe("lenet", epochs=1, limit_train=128, limit_test=64),
                 tmp_path, data_dir)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.backends.cudnn.benchmark is False


class StepCounter(Logger):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)


def test_an_epoch_stops_after_max_steps(tmp_path):
    """50 synthetic images in batches of 8 make 7 steps; max_steps=3 does the first 3."""
    from cnnlab.data import load_datasets
    from cnnlab.models import create_model
    from cnnlab.parts import build_parts
    from cnnlab.train import train_one_epoch
    from conftest import write_dataset

    train_set = load_datasets(write_dataset(tmp_path / "data"), 0, None, None).train
    recipe = study_recipe("lenet", batch_size=8)

    def counted_epoch(max_steps):
        torch.manual_seed(0)
        parts = build_parts(recipe, create_model("lenet", {}), CPU, 7)
        counter = StepCounter()
        stats = train_one_epoch(parts, train_set, 1, loggers=[counter], max_steps=max_steps)
        return counter.steps, stats

    steps, stats = counted_epoch(3)
    assert steps == [1, 2, 3]
    assert (stats.acc * 24).is_integer()  # the 24 images of the 3 steps done
    assert counted_epoch(None)[0] == list(range(1, 8))


def git(folder: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder,
                   check=True, capture_output=True)


def test_a_run_records_whether_its_code_differs_from_the_commit(tmp_path, monkeypatch):
    """config.json: git_dirty, and the diff of the package's source and pyproject.toml
    (nothing else of the checkout) when they differ; null outside a checkout."""
    import cnnlab.runs

    repo = tmp_path / "repo"
    package = repo / "src" / "cnnlab"
    package.mkdir(parents=True)
    for path in (package / "x.py", repo / "pyproject.toml", repo / "notes.txt"):
        path.write_text("before\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    monkeypatch.setattr(cnnlab.runs, "PACKAGE_DIR", package)

    def started(name: str) -> dict:
        run = RunFolder(tmp_path / name)
        run.start(builtin("lenet"), CPU, None)
        return json.loads(run.config_path.read_text())

    clean = started("clean")
    assert clean["git_dirty"] is False and "git_diff" not in clean
    for path in (package / "x.py", repo / "pyproject.toml", repo / "notes.txt"):
        path.write_text("after\n")
    dirty = started("dirty")
    keys = list(dirty)
    assert keys[keys.index("git_commit"):][:3] == ["git_commit", "git_dirty", "git_diff"]
    assert dirty["git_commit"] == clean["git_commit"] and dirty["git_dirty"] is True
    diff = dirty["git_diff"]
    assert "src/cnnlab/x.py" in diff and "pyproject.toml" in diff and "+after" in diff
    assert "notes.txt" not in diff

    monkeypatch.setattr(cnnlab.runs, "PACKAGE_DIR", tmp_path / "clean")  # not a checkout
    outside = started("outside")
    assert outside["git_commit"] is None and outside["git_dirty"] is None
    assert "git_diff" not in outside


def test_an_ema_with_warmup_follows_the_network_early_and_keeps_its_decay_later():
    """After n updates the warmed-up average keeps min(decay, (1 + n) / (10 + n)) of itself;
    without warm-up it keeps `decay` from the first update on (torch's EMA)."""
    from torch.optim.swa_utils import AveragedModel

    from cnnlab.parts import ema_update
    from cnnlab.recipe import AverageSpec

    def averaged_after(updates: int, warmup: bool) -> float:
        model = torch.nn.Linear(1, 1, bias=False)
        averaged = AveragedModel(model, multi_avg_fn=ema_update(
            AverageSpec(name="ema", decay=0.99, warmup=warmup)))
        for step in range(updates):
            model.weight.data.fill_(float(step))  # the network's weight at step k is k
            averaged.update_parameters(model)
        return averaged.module.weight.item()

    expected = 0.0
    for n in range(1, 300):
        expected = (keep := min(0.99, (1 + n) / (10 + n))) * expected + (1 - keep) * n
    assert averaged_after(300, warmup=True) == pytest.approx(expected, rel=1e-5)
    assert averaged_after(2, warmup=True) == pytest.approx(1 - 2 / 11)
    assert averaged_after(2, warmup=False) == pytest.approx(0.01)


def test_a_run_without_checkpoint_is_not_offered_resume(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # what a run stopped in epoch 1 leaves
    (tmp_path / "tensorboard").mkdir()
    with pytest.raises(CnnlabError, match="no checkpoint to continue from; replace it with "
                                          "--overwrite") as refused:
        RunFolder(tmp_path).claim(overwrite=False)
    assert "--resume" not in str(refused.value)
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(CnnlabError, match="continue it with --resume, or replace it"):
        RunFolder(tmp_path).claim(overwrite=False)
    RunFolder(tmp_path).claim(overwrite=True)
    assert list(tmp_path.iterdir()) == []
