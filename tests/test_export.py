"""ONNX export: every registered architecture, run by onnxruntime on the full test set,
predicts what cnnlab's PyTorch model predicts."""

from pathlib import Path

import pytest
import torch

from cnnlab.cli import main
from cnnlab.data import load_split
from cnnlab.errors import CnnlabError
from cnnlab.inference import Predictor
from cnnlab.models import list_models
from cnnlab.recipe import EvaluateSpec, builtin
from conftest import one_line_error, train_recipe


def trained(tmp_path_factory, data_dir: Path, model: str, **overrides) -> Path:
    """A model trained for one epoch on 1,000 images: distinct logits, a few seconds."""
    recipe = builtin("custom").with_overrides({"model.name": model, "epochs": 1,
                                               "limit_train": 1000, "limit_test": 100,
                                               **overrides})
    run = tmp_path_factory.mktemp(model)
    train_recipe(recipe, run, data_dir)
    return run


@pytest.fixture(scope="module")
def test_set(data_dir):
    return load_split(data_dir, "test")


@pytest.mark.parametrize("model", list_models())
def test_onnxruntime_matches_pytorch_on_the_whole_test_set(tmp_path_factory, data_dir,
                                                           test_set, model, capsys):
    run = trained(tmp_path_factory, data_dir, model)
    out = run / "model.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith(f"wrote {out}") and printed.out.count("\n") == 1
    assert printed.err == ""
    torch_logits = Predictor.load(run).logits(test_set.images)
    onnx = Predictor.load(out)
    assert onnx.runtime == "onnxruntime" and onnx.recipe == Predictor.load(run).recipe
    onnx_logits = onnx.logits(test_set.images)
    assert onnx_logits.shape == (10_000, 10)
    assert torch.equal(onnx_logits.argmax(1), torch_logits.argmax(1))
    torch.testing.assert_close(onnx_logits, torch_logits, rtol=0, atol=1e-4)


def test_test_time_views_and_metadata_travel_in_the_graph(tmp_path_factory, data_dir,
                                                          test_set, capsys):
    run = trained(tmp_path_factory, data_dir, "lenet",
                  **{"evaluate.flip": True, "evaluate.shift": 1})
    out = run / "lenet.onnx"
    # opset 26 is past what onnxscript converts itself: the onnx fallback stays quiet too
    assert main(["export", str(run), "--out", str(out), "--opset", "26"]) == 0
    assert capsys.readouterr().err == ""
    import onnx

    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert '"Ankle boot"' in meta["classes"] and meta["cnnlab_version"]
    assert float(meta["test_accuracy"]) == pytest.approx(Predictor.load(run).test_acc)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 26
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    images = test_set.images[:500]
    torch.testing.assert_close(Predictor.load(out).logits(images),
                               Predictor.load(run).logits(images), rtol=0, atol=1e-5)
    # the views matter: without the flip, or without the shifts, the logits of this barely
    # trained network move by ~6e-4, far beyond the ~1e-7 between onnxruntime and torch
    exported = Predictor.load(out).logits(images)
    for views in (EvaluateSpec(flip=False, shift=1), EvaluateSpec(flip=True, shift=0)):
        other = Predictor.load(run)
        other.views = views
        assert (other.logits(images) - exported).abs().max() > 1e-4

    assert main(["evaluate", str(out), "--data-dir", str(data_dir), "--limit-test", "500"]) == 0
    assert "onnxruntime): test accuracy" in capsys.readouterr().out
    for entry in proto.metadata_props:
        if entry.key == "epoch":
            entry.value = "seven"
    onnx.save(proto, str(run / "damaged.onnx"))
    with pytest.raises(CnnlabError, match="its cnnlab metadata is damaged"):
        Predictor.load(run / "damaged.onnx")


def test_export_errors_are_one_line(tmp_path, capsys):
    for opset in ("11", "99"):
        assert "--opset must be between 18, " in one_line_error(
            capsys, ["export", str(tmp_path), "--out", str(tmp_path / "m.onnx"),
                     "--opset", opset])
    (tmp_path / "model.onnx").write_bytes(b"an exported model")
    for out in ("again.onnx", "weights.pt"):
        assert "already an ONNX model" in one_line_error(
            capsys, ["export", str(tmp_path / "model.onnx"), "--out", str(tmp_path / out)])
    assert "name the file *.onnx" in one_line_error(
        capsys, ["export", str(tmp_path), "--out", str(tmp_path / "m.txt")])
    assert "no such checkpoint" in one_line_error(
        capsys, ["export", str(tmp_path), "--out", str(tmp_path / "m.onnx")])
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert "not a loadable ONNX model" in one_line_error(
        capsys, ["evaluate", str(tmp_path / "bad.onnx")])
    with pytest.raises(CnnlabError, match="no such ONNX model"):
        Predictor.load(tmp_path / "missing.onnx")
