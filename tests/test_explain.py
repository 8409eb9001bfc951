"""What a model learned (cnnlab.explain), `cnnlab explain`, a run's model.pt, and the
report's "What the networks learned", on toy models and the synthetic data."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnnlab.checkpoint import load_checkpoint, save_model
from cnnlab.cli import main
from cnnlab.data import load_split
from cnnlab.errors import CnnlabError
from cnnlab.explain import (
    dead_units,
    explain_pictures,
    feature_maps,
    first_filters,
    grad_cam,
    recorded_calls,
    relu_firing,
)
from cnnlab.inference import OnnxPredictor, Predictor, format_text
from cnnlab.models import get_model
from cnnlab.recipe import builtin
from cnnlab.report.study import SECTIONS, build_report
from conftest import one_line_error

PNG = b"\x89PNG\r\n\x1a\n"
PATCH = (slice(16, 24), slice(4, 12))  # rows, columns of the planted bright patch


class BrightOrDark(nn.Module):
    """Class 1 counts bright pixels, class 0 dark ones, through a 7×7 two-channel map: its
    answer for class 1 depends only on where the image is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.pool = nn.AvgPool2d(4)
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 10)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.conv.bias.zero_()  # normalized, white is 1 and black −1
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[1, 0] = self.head.weight[0, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.pool(self.conv(x))).sum((2, 3)))


def patch_image() -> torch.Tensor:
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[PATCH] = 255
    return image


def test_grad_cam_shape_range_determinism_and_no_parameter_grads() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    for name in ("lenet", "alexnet", "custom_nobn", "speednet"):
        model = get_model(name)
        cams = grad_cam(model, images)
        assert cams.shape == (5, 28, 28) and cams.min() >= 0 and cams.max() <= 1
        assert torch.equal(cams, grad_cam(model, images))  # deterministic
        torch.testing.assert_close(cams, grad_cam(model, images, batch_size=2))
        assert all(p.grad is None for p in model.parameters())
        assert not model.training


def test_grad_cam_works_inside_inference_mode_and_ignores_other_threads() -> None:
    """A server calls it from worker threads that may run the same model at the same time."""
    model, image = BrightOrDark(), patch_image()
    expected = grad_cam(model, image[None])
    with torch.inference_mode():
        assert torch.equal(grad_cam(model, image[None]), expected)
    with recorded_calls(model, (nn.ReLU,)) as calls:
        other = threading.Thread(target=model, args=(torch.zeros(1, 1, 28, 28),))
        other.start()
        other.join()
        assert calls == []
        model(torch.zeros(1, 1, 28, 28))
        assert [c.name for c in calls] == ["act"]


def test_grad_cam_highlights_where_the_answer_came_from() -> None:
    model, image = BrightOrDark(), patch_image()
    [bright] = grad_cam(model, image[None], torch.tensor([1]))  # class 1: bright pixels
    inside = torch.zeros(28, 28, dtype=torch.bool)
    inside[PATCH] = True
    assert bright.max() == 1 and inside.flatten()[bright.flatten().argmax()]
    assert bright[inside].mean() > 5 * bright[~inside].mean()
    [dark] = grad_cam(model, image[None], torch.tensor([0]))
    assert dark[~inside].mean() > 3 * dark[inside].mean()  # (the 2×2 cells blur at 28×28)
    # mostly dark, so class 0 is predicted, and is the default target
    assert torch.equal(grad_cam(model, image[None]), dark[None])


def test_dead_units_count_channels_after_convolutions_and_neurons_after_linear() -> None:
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 1)
            self.relu1 = nn.ReLU()
            self.fc = nn.Linear(3, 4)
            self.relu2 = nn.ReLU()
            with torch.no_grad():
                # channel 0 fires on white pixels only, 1 never, 2 everywhere
                self.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1, 1))
                self.conv.bias.copy_(torch.tensor([-0.9, -1.0, 1.0]))  # white is 1, black −1
                self.fc.weight.zero_()
                self.fc.bias.copy_(torch.tensor([1.0, -1.0, -1.0, 1.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu2(self.fc(self.relu1(self.conv(x)).amax((2, 3))))

    images = torch.zeros(6, 28, 28, dtype=torch.uint8)
    images[4, 3, 5] = 255  # one white pixel in one image keeps channel 0 alive
    model = Toy()
    assert dead_units(model, images) == [("relu1", 1, 3), ("relu2", 2, 4)]
    assert dead_units(model, images, batch_size=4) == dead_units(model, images, batch_size=1)
    assert dead_units(model, images[:4]) == [("relu1", 2, 3), ("relu2", 2, 4)]
    fired = relu_firing(model, images)["relu1"]
    assert fired.shape == (3, 28, 28) and fired[0].sum() == 1 and fired[0, 3, 5]


def test_dead_units_of_the_custom_network_find_a_planted_dead_channel() -> None:
    torch.manual_seed(0)
    model = get_model("custom_nobn")
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    before = dead_units(model, images)
    assert [(name, total) for name, _, total in before] == [("relu1", 64), ("relu2", 128),
                                                            ("relu4", 512)]
    with torch.no_grad():
        model.fc1.weight[7] = 0
        model.fc1.bias[7] = -1.0    # relu4's neuron 7 never fires
    after = dead_units(model, images)
    assert after == [*before[:2], ("relu4", before[2][1] + 1, 512)]
    assert not relu_firing(model, images)["relu4"][7]
    with torch.no_grad():
        model.conv2.weight[3] = 0
        model.conv2.bias[3] = -1.0  # relu1's channel 3 is −1 everywhere
    assert dead_units(model, images)[0] == ("relu1", before[0][1] + 1, 64)
    assert not relu_firing(model, images)["relu1"][3].any()


def test_first_filters_of_custom_are_conv2_after_conv1() -> None:
    torch.manual_seed(0)
    model = get_model("custom")
    with torch.no_grad():
        model.conv1.bias.zero_()
        model.conv2.bias.zero_()
    x = torch.randn(3, 1, 28, 28)
    filters = first_filters(model)
    assert filters.shape == (64, 3, 3)
    with torch.no_grad():
        layer_by_layer = model.conv2(model.conv1(x))
    torch.testing.assert_close(F.conv2d(x, filters[:, None], padding=2), layer_by_layer,
                               rtol=1e-4, atol=1e-5)
    lenet = get_model("lenet")
    assert torch.equal(first_filters(lenet), lenet.net[0].weight[:, 0].detach())


def test_feature_maps_are_the_blocks_in_forward_order() -> None:
    maps = feature_maps(get_model("alexnet"), patch_image())
    assert [(name, tuple(m.shape)) for name, m in maps] == [
        ("features.1", (64, 13, 13)), ("features.4", (192, 6, 6)),
        ("features.7", (384, 3, 3)), ("features.9", (256, 3, 3)),
        ("features.11", (256, 3, 3))]
    assert [name for name, _ in feature_maps(get_model("custom"), patch_image())] == [
        "relu1", "relu2"]


# --------------------------------------------------------------------------- your pictures

@pytest.fixture(scope="module")
def picture(tmp_path_factory, synthetic_dir: Path) -> Path:
    """A synthetic test image as a 112×112 PNG, light on dark."""
    image = load_split(synthetic_dir, "test").images[3].numpy()
    path = tmp_path_factory.mktemp("pictures") / "shirt.png"
    Image.fromarray(image).resize((112, 112), Image.Resampling.NEAREST).save(path)
    return path


def test_explain_pictures_predicts_as_predict_does(synthetic_run: Path, picture: Path) -> None:
    predictor = Predictor.load(synthetic_run)
    [explained] = explain_pictures(predictor, [picture.read_bytes()], top=2, names=["shirt"])
    [predicted] = predictor.predict([picture], ["shirt"], top=2)
    assert explained.prediction.top == predicted.top
    assert torch.equal(explained.prediction.input, predicted.input)
    assert explained.cam.shape == (28, 28) and explained.cam.max() == 1


def test_explain_cli_on_a_run_folder(synthetic_run: Path, synthetic_dir: Path, picture: Path,
                                     tmp_path: Path, capsys) -> None:
    out = tmp_path / "explained"
    assert main(["explain", str(synthetic_run), str(picture), "--test-images", "0,2",
                 "--out", str(out), "--data-dir", str(synthetic_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    predictions = Predictor.load(synthetic_run).predict([picture])
    assert printed[0] == format_text(predictions)
    assert printed[1].startswith("test image 0 (") and printed[2].startswith("test image 2 (")
    written = sorted(p.name for p in out.iterdir())
    assert written == ["shirt-features.png", "shirt-gradcam.png", "test-0-features.png",
                       "test-0-gradcam.png", "test-2-features.png", "test-2-gradcam.png"]
    assert all((out / name).read_bytes().startswith(PNG) for name in written)


def test_explain_errors_are_one_line(synthetic_run: Path, picture: Path, tmp_path: Path,
                                     capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert "bad.png is not an image" in one_line_error(
        capsys, ["explain", str(synthetic_run), str(bad), "--out", str(tmp_path)])
    assert "Grad-CAM needs the PyTorch model" in one_line_error(
        capsys, ["explain", str(tmp_path / "model.onnx"), str(picture)])
    assert "give IMAGE files" in one_line_error(capsys, ["explain", str(synthetic_run)])
    assert "would both write shirt-gradcam.png" in one_line_error(
        capsys, ["explain", str(synthetic_run), str(picture), str(picture)])
    assert not list(tmp_path.glob("*-gradcam.png"))


def test_an_onnx_predictor_is_refused_in_one_line(synthetic_run: Path, picture: Path) -> None:
    """The HTTP API serves ONNX models too; explaining with one says what to give instead."""
    recipe = json.dumps(builtin("lenet").to_dict())
    meta = {"recipe": recipe, "test_accuracy": "", "epoch": "1"}
    session = SimpleNamespace(get_modelmeta=lambda: SimpleNamespace(custom_metadata_map=meta))
    with pytest.raises(CnnlabError, match="Grad-CAM needs the PyTorch model.*run folder"):
        explain_pictures(OnnxPredictor(session, Path("model.onnx")), [picture])


# --------------------------------------------------------------------------- model.pt

def test_a_finished_run_keeps_its_reported_weights_in_model_pt(synthetic_run: Path,
                                                                tmp_path: Path,
                                                                capsys) -> None:
    model_pt, last_pt = synthetic_run / "model.pt", synthetic_run / "last.pt"
    state = load_checkpoint(model_pt)
    assert set(state) == {"format", "model", "epoch", "recipe", "metrics", "averaged"}
    assert model_pt.stat().st_size < last_pt.stat().st_size / 2
    kept = tmp_path / "run"
    shutil.copytree(synthetic_run, kept, ignore=shutil.ignore_patterns("last.pt"))
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    assert torch.equal(Predictor.load(kept).logits(images),
                       Predictor.load(synthetic_run).logits(images))
    assert "needs config.json and last.pt" in one_line_error(
        capsys, ["train", "--resume", str(kept)])


def test_export_writes_model_pt_from_last_pt(synthetic_run: Path, tmp_path: Path,
                                             capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run, ignore=shutil.ignore_patterns("model.pt"))
    assert main(["export", str(run), "--out", str(run / "model.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert torch.equal(torch.load(run / "model.pt", weights_only=True)["model"]["head.weight"],
                       load_checkpoint(synthetic_run / "model.pt")["model"]["head.weight"])
    assert "the checkpoint being read" in one_line_error(
        capsys, ["export", str(run), "--out", str(run / "last.pt")])
    for out in ("m.pt", "m.onnx"):
        assert "cannot create the folder of --out" in one_line_error(
            capsys, ["export", str(run), "--out", str(run / "config.json" / out)])
    (run / "folder.pt").mkdir()
    assert "Is a directory; choose another path" in one_line_error(
        capsys, ["export", str(run), "--out", str(run / "folder.pt")])


def test_model_pt_holds_the_weight_average_when_the_recipe_keeps_one(tmp_path: Path) -> None:
    trained, averaged = torch.zeros(3), torch.ones(3)
    save_model(tmp_path / "model.pt", {
        "format": "cnnlab-checkpoint-v2", "epoch": 2, "recipe": {}, "metrics": [],
        "model": {"w": trained}, "optimizer": {"state": {}},
        "averaged": {"module.w": averaged, "n_averaged": torch.tensor(5)}})
    state = load_checkpoint(tmp_path / "model.pt")
    assert set(state["model"]) == {"w"} and torch.equal(state["model"]["w"], averaged)
    assert "optimizer" not in state and state["averaged"] is None


# --------------------------------------------------------------------------- the report

def learned(markdown: str) -> str:
    return markdown.split(f"## {SECTIONS[4]}\n", 1)[1].split("\n## ", 1)[0]


def test_report_learns_from_model_pt_and_says_when_no_folder_keeps_one(
        synthetic_run: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(synthetic_run, study / "runs" / "tiny-seed0",
                    ignore=shutil.ignore_patterns("last.pt"))
    build_report(study, synthetic_dir, "cnnlab report STUDY")
    text = learned((study / "REPORT.md").read_text())
    assert "### tiny (tiny-seed0)" in text
    for name in ("filters-tiny.png", "features-tiny.png"):
        assert f"(figures/{name})" in text
        assert (study / "figures" / name).read_bytes().startswith(PNG)
    assert "No test image is misclassified" in text  # the tiny network gets them all
    assert "Dead ReLUs" not in text  # the study has none of the BatchNorm ablation's recipes
    assert "cnnlab explain" in text and "--test-images" in text
    first = {p.name: p.read_bytes() for p in (study / "figures").iterdir()}
    build_report(study, synthetic_dir, "cnnlab report STUDY")
    assert {p.name: p.read_bytes() for p in (study / "figures").iterdir()} == first

    (study / "runs" / "tiny-seed0" / "model.pt").unlink()
    build_report(study, synthetic_dir, "cnnlab report STUDY")
    text = learned((study / "REPORT.md").read_text())
    assert "No finished tiny run folder keeps a model" in text
    assert "cnnlab export RUN --out RUN/model.pt" in text


def hand_made_run(root: Path, preset: str, seed: int, acc: float, model: nn.Module) -> None:
    """A finished one-epoch run folder of `preset` with `model` as its model.pt."""
    folder = root / "runs" / f"{preset}-seed{seed}"
    folder.mkdir(parents=True)
    recipe = builtin(preset).with_overrides({"epochs": 1, "seed": seed}).to_dict()
    folder.joinpath("config.json").write_text(json.dumps({"recipe": recipe}))
    folder.joinpath("metrics.csv").write_text(
        "epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds,train_img_per_s\n"
        f"1,1.0,0.5,1.0,{acc},0.003,10.0,5000.0\n")
    save_model(folder / "model.pt", {"epoch": 1, "recipe": recipe, "metrics": [],
                                     "model": model.state_dict()})


def test_report_counts_dead_relus_of_every_ablation_run_that_keeps_a_model(
        synthetic_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    learning, collapsed = get_model("custom_nobn"), get_model("custom_nobn")
    with torch.no_grad():
        collapsed.fc1.weight.zero_()
        collapsed.fc1.bias.fill_(-1.0)  # every relu4 neuron dead
    hand_made_run(tmp_path, "custom_nobn", 0, 0.1, collapsed)
    hand_made_run(tmp_path, "custom_nobn", 1, 0.85, learning)
    build_report(tmp_path, synthetic_dir, "cnnlab report STUDY")
    text = learned((tmp_path / "REPORT.md").read_text())
    assert "### custom_nobn (custom_nobn-seed0)" in text
    assert "(figures/gradcam-custom_nobn.png)" in text
    assert (tmp_path / "figures" / "gradcam-custom_nobn.png").read_bytes().startswith(PNG)
    table = text.split("### Dead ReLUs", 1)[1]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| custom_nobn")]
    assert [row[1] for row in rows] == ["custom_nobn-seed0", "custom_nobn-seed1"]
    assert [row[3] for row in rows] == ["yes", "no"]
    assert rows[0][-1] == "512/512 (100%) |"
    images = load_split(synthetic_dir, "test").images
    dead = dead_units(learning, images)
    assert [cell.removesuffix(" |") for cell in rows[1][5:]] == [
        f"{d}/{t} ({100 * d / t:.0f}%)" for _, d, t in dead]
