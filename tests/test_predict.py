"""`cnnlab predict`: pictures of any format and mode classified by a real trained LeNet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.data import CLASSES, load_split
from cnnlab.errors import CnnlabError
from cnnlab.inference import Predictor, load_image, to_input
from conftest import one_line_error, study_recipe, train_recipe

BOOT = CLASSES.index("Ankle boot")


def predict(run_dir: Path, paths: list[Path], **options):
    return Predictor.load(run_dir).predict(paths, **options)
SIZE = (200, 200)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir: Path) -> Iterator[Path]:
    """A LeNet trained for 2 epochs on 10,000 images (one thread: a few seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("lenet")
    train_recipe(study_recipe("lenet", epochs=2, limit_train=10000, limit_test=1000), folder,
                 data_dir)
    yield folder
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def boot(run_dir: Path, data_dir: Path) -> np.ndarray:
    """The test-set ankle boot the model is surest of: light on dark, 28×28 uint8."""
    test = load_split(data_dir, "test").head(1000)
    probs = Predictor.load(run_dir).logits(test.images).softmax(1)[:, BOOT]
    probs[test.labels != BOOT] = 0
    best = int(probs.argmax())
    assert probs[best] > 0.9, "the model should recognise at least one boot with confidence"
    return test.images[best].numpy()


@pytest.fixture(scope="module")
def drawing(boot: np.ndarray) -> Image.Image:
    """The boot as people draw or photograph it: dark on white, 200×200."""
    return Image.fromarray(255 - boot).resize(SIZE, Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def boot_jpeg(drawing: Image.Image, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pictures") / "boot.jpg"
    drawing.convert("RGB").save(path, quality=95)
    return path


def top_class(run_dir: Path, path: Path, **options) -> str:
    return predict(run_dir, [path], **options)[0].top[0][0]


def test_white_background_jpeg_is_inverted_and_recognised(run_dir, boot_jpeg, boot) -> None:
    [p] = predict(run_dir, [boot_jpeg])
    assert p.inverted and p.top[0][0] == "Ankle boot"
    assert [prob for _, prob in p.top] == sorted((prob for _, prob in p.top), reverse=True)
    tensor, _ = to_input(load_image(boot_jpeg))
    # back to the test image, up to resampling and JPEG losses
    assert tensor.dtype == torch.uint8 and tensor.shape == (28, 28)
    assert (tensor.int() - torch.from_numpy(boot).int()).abs().float().mean() < 6


def test_json_output(run_dir, boot_jpeg, capsys) -> None:
    assert main(["predict", "--checkpoint", str(run_dir / "last.pt"), str(boot_jpeg),
                 "--json", "--top", "2"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["image"] == str(boot_jpeg) and result["inverted"] is True
    assert [t["class"] for t in result["top"]][0] == "Ankle boot" and len(result["top"]) == 2
    assert 0 < result["top"][1]["probability"] <= result["top"][0]["probability"] <= 1


def test_text_output_and_no_invert(run_dir, boot_jpeg, capsys) -> None:
    assert main(["predict", "--checkpoint", str(run_dir), str(boot_jpeg)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{boot_jpeg} (inverted): Ankle boot ") and line.count("%") == 3
    [p] = predict(run_dir, [boot_jpeg], invert=False)
    assert not p.inverted


def test_light_object_on_dark_is_kept(run_dir, boot, tmp_path) -> None:
    path = tmp_path / "boot-dark.png"
    Image.fromarray(boot).resize(SIZE, Image.Resampling.LANCZOS).save(path)
    [p] = predict(run_dir, [path])
    assert not p.inverted and p.top[0][0] == "Ankle boot"


def test_palette_png(run_dir, drawing, boot_jpeg, tmp_path) -> None:
    path = tmp_path / "boot-palette.png"
    drawing.convert("RGB").quantize(64).save(path)
    assert Image.open(path).mode == "P"
    assert top_class(run_dir, path) == "Ankle boot"


def test_rgba_with_transparent_background(run_dir, drawing, tmp_path) -> None:
    """Black ink whose alpha is the boot: transparent pixels are black in RGB, and must
    still count as background, not as a dark background around a dark boot."""
    ink = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    ink.putalpha(Image.eval(drawing, lambda v: 255 - v))
    path = tmp_path / "boot-alpha.png"
    ink.save(path)
    [p] = predict(run_dir, [path])
    assert p.inverted and p.top[0][0] == "Ankle boot"
    from_alpha, _ = to_input(load_image(path))
    from_drawing, _ = to_input(drawing)
    assert (from_alpha.int() - from_drawing.int()).abs().max() <= 1


def test_16_bit_png(run_dir, drawing, tmp_path) -> None:
    path = tmp_path / "boot-16bit.png"
    Image.fromarray(np.asarray(drawing).astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    assert top_class(run_dir, path) == "Ankle boot"
    from_16, _ = to_input(load_image(path))
    from_8, _ = to_input(drawing)
    assert torch.equal(from_16, from_8)


def test_animation_uses_first_frame(run_dir, drawing, tmp_path) -> None:
    path = tmp_path / "boot.png"
    others = [Image.new("L", SIZE, 0), Image.new("L", SIZE, 128)]
    drawing.save(path, save_all=True, append_images=others, duration=100)
    assert Image.open(path).n_frames == 3
    assert top_class(run_dir, path) == "Ankle boot"


def test_wide_picture_keeps_its_aspect_ratio(tmp_path) -> None:
    """A dark bar on white, four times wider than high, stays a flat bar in the middle."""
    picture = np.full((50, 200), 255, np.uint8)
    picture[20:30, 20:180] = 0
    tensor, inverted = to_input(Image.fromarray(picture))
    rows = tensor.float().mean(1)
    assert inverted and rows[:10].max() < 5 and rows[10:18].max() > 100


def test_bad_inputs_are_one_line_errors(run_dir, boot_jpeg, tmp_path, capsys) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(boot_jpeg.read_bytes()[: boot_jpeg.stat().st_size // 2])
    cases = {text: "is not an image", tmp_path: "is a folder",
             tmp_path / "missing.jpg": "no such file", truncated: "truncated"}
    for path, message in cases.items():
        err = one_line_error(capsys, ["predict", "--checkpoint", str(run_dir), str(path)])
        assert message in err and str(path) in err
    assert "--top" in one_line_error(
        capsys, ["predict", "--checkpoint", str(run_dir), str(boot_jpeg), "--top", "11"])
    assert "checkpoint" in one_line_error(
        capsys, ["predict", "--checkpoint", str(tmp_path), str(boot_jpeg)])


@pytest.mark.parametrize("limit", [30_000, 10_000])  # a warning at 1-2x the limit, an error above
def test_decompression_bomb_limit_is_kept(boot_jpeg, monkeypatch, limit: int) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(CnnlabError, match="too large"):
        load_image(boot_jpeg)


def test_the_predictor_takes_bytes_pil_images_and_tensors(run_dir, boot_jpeg, drawing,
                                                          boot) -> None:
    predictor = Predictor.load(run_dir)
    results = predictor.predict([boot_jpeg.read_bytes(), drawing, torch.from_numpy(boot)],
                                names=["upload", "drawing", "tensor"])
    assert [r.image for r in results] == ["upload", "drawing", "tensor"]
    assert [r.top[0][0] for r in results] == ["Ankle boot"] * 3
    assert [r.inverted for r in results] == [True, True, False]
    with pytest.raises(CnnlabError, match="empty"):
        predictor.predict([b""])
    with pytest.raises(CnnlabError, match="is not an image"):
        predictor.predict([b"GIF89a not really"])
    with pytest.raises(CnnlabError, match="uint8 of shape 28×28"):
        predictor.predict([torch.zeros(3, 3)])


def test_a_run_on_synthetic_images_predicts_what_it_scored(synthetic_run, synthetic_dir,
                                                            tmp_path) -> None:
    """Load, evaluate and predict without the real data (the quick tier's inference test)."""
    predictor = Predictor.load(synthetic_run)
    test = load_split(synthetic_dir, "test")
    _, accuracy = predictor.evaluate(test)
    assert accuracy == pytest.approx(predictor.test_acc)
    path = tmp_path / "sample.png"
    Image.fromarray(test.images[0].numpy()).save(path)
    [prediction] = predictor.predict([path])
    assert prediction.top[0][0] == CLASSES[int(predictor.logits(test.images[:1]).argmax())]
