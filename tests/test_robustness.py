"""Interrupted or failing work loses nothing; bad files end in cnnlab's own error."""

import contextlib
import errno
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnlab.parts
from cnnlab.checkpoint import load_checkpoint
from cnnlab.data import parse_idx
from cnnlab.errors import CnnlabError
from cnnlab.inference import Predictor
from cnnlab.runs import read_metrics
from conftest import computed, idx_bytes, study_recipe, train_recipe


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab.cli", *args]


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_resume_matches_an_uninterrupted_run(tmp_path, data_dir,
                                                                       signum):
    args = ["lenet", "--epochs", "3", "--augment", "--limit-train", "12000",
            "--limit-test", "500", "--data-dir", str(data_dir), "--quiet"]
    run = tmp_path / "run"
    proc = subprocess.Popen(cli("train", *args, "--out", str(run)), stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: (run / "metrics.csv").exists()
             and len(read_metrics(run / "metrics.csv")) >= 1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum
    assert "resume" in err and "Traceback" not in err
    assert len(read_metrics(run / "metrics.csv")) == 1  # stopped inside epoch 2
    assert load_checkpoint(run)["epoch"] == 1

    subprocess.run(cli("train", "--resume", str(run), "--data-dir", str(data_dir), "--quiet"),
                   check=True)
    straight = tmp_path / "straight"
    subprocess.run(cli("train", *args, "--out", str(straight)), check=True)
    assert computed(read_metrics(run / "metrics.csv")) == \
        computed(read_metrics(straight / "metrics.csv"))


def test_a_second_ctrl_c_aborts_at_once_and_keeps_the_checkpoint(tmp_path, data_dir):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli("train", "lenet", "--epochs", "50", "--limit-train", "12000",
                                "--limit-test", "500", "--data-dir", str(data_dir), "--quiet",
                                "--out", str(run)), stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run / "metrics.csv").exists()
             and len(read_metrics(run / "metrics.csv")) >= 1)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and err.count("\n") == 1
    assert load_checkpoint(run)["epoch"] >= 1


SAVE_LOOP = """
import sys, torch
from pathlib import Path
from cnnlab.checkpoint import save_checkpoint
from cnnlab.models import get_model
from cnnlab.parts import build_parts
from cnnlab.recipe import builtin
recipe = builtin("custom")
model = get_model("custom")
parts = build_parts(recipe, model, torch.device("cpu"), 10)
model(torch.zeros(2, 1, 28, 28)).sum().backward(); parts.optimizer.step()
for epoch in range(1, 1000):
    save_checkpoint(Path(sys.argv[1]), parts.state_dict(), epoch, recipe, [])
    print(epoch, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.0, 0.05, 0.15):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)],
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one save finished
        time.sleep(delay)       # the next ~70 MB save is under way
        proc.kill()
        proc.wait()
        state = load_checkpoint(path)
        assert state["epoch"] >= 1
        assert Predictor.load(path).recipe.name == "custom"


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir,
                                                                  monkeypatch):
    real = cnnlab.parts.F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, labels, **kwargs):
        calls["n"] += 1
        loss = real(logits, labels, **kwargs)
        # Training steps of epoch 1 (8 batches of 32), then 1 evaluation call: poison
        # the 3rd training step of epoch 2.
        return loss * float("nan") if calls["n"] == 8 + 1 + 3 else loss

    monkeypatch.setattr(cnnlab.parts.F, "cross_entropy", poisoned)
    recipe = study_recipe("lenet", epochs=3, batch_size=32, limit_train=256, limit_test=64)
    with pytest.raises(CnnlabError, match="loss became nan at epoch 2 step 3"):
        train_recipe(recipe, tmp_path, data_dir)
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert len(read_metrics(tmp_path / "metrics.csv")) == 1


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, data_dir,
                                                               monkeypatch):
    train_recipe(study_recipe("lenet", epochs=2, limit_train=256, limit_test=64), tmp_path,
                 data_dir)
    before = (tmp_path / "last.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CnnlabError, match="No space left on device"):
        train_recipe(study_recipe("lenet", epochs=3, limit_train=256, limit_test=64),
                     tmp_path / "other", data_dir)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp files left


def test_read_only_output_folder_fails_before_training(tmp_path, data_dir, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(CnnlabError, match="Read-only file system"):
        train_recipe(study_recipe("lenet", epochs=1, limit_train=64, limit_test=64),
                     tmp_path / "run", data_dir)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_carrying_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "cnnlab-checkpoint-v1", "x": Payload()}, path)
    with pytest.raises(CnnlabError, match="refusing to run its code"):
        load_checkpoint(path)
    plain_pickle = tmp_path / "evil.pkl"
    plain_pickle.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CnnlabError, match="not a loadable cnnlab checkpoint"):
        load_checkpoint(plain_pickle)


def test_checkpoint_of_another_architecture_and_truncated(tmp_path, data_dir):
    train_recipe(study_recipe("lenet", epochs=1, limit_train=64, limit_test=64), tmp_path,
                 data_dir)
    state = load_checkpoint(tmp_path)
    state["recipe"]["model"]["name"] = "alexnet"
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CnnlabError, match="do not fit model 'alexnet'"):
        Predictor.load(tmp_path / "other.pt")
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CnnlabError, match="not a loadable cnnlab checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CnnlabError, match="not a cnnlab checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "picture.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(CnnlabError, match="not a PyTorch checkpoint file"):
        load_checkpoint(tmp_path / "picture.pt")
    state = load_checkpoint(tmp_path)
    for key, damage in [("model", None), ("model", {"w": "text"}), ("epoch", "1"),
                        ("metrics", None)]:
        torch.save({**state, key: damage}, tmp_path / "damaged.pt")
        with pytest.raises(CnnlabError, match=f"damaged cnnlab checkpoint \\(its '{key}'"):
            Predictor.load(tmp_path / "damaged.pt")


VALID_IDX = idx_bytes(torch.randint(0, 256, (2, 28, 28)).numpy())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=2000),
    st.tuples(st.integers(0, len(VALID_IDX) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda t: VALID_IDX[: t[0]] + t[1] + VALID_IDX[t[0] + len(t[1]):]),
    st.integers(0, len(VALID_IDX)).map(lambda n: VALID_IDX[:n]),
))
def test_idx_parser_raises_only_its_own_error(data):
    for ndim in (1, 3):
        with contextlib.suppress(CnnlabError):
            parse_idx(data, "fuzz", ndim)


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (12, 9), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


VALID_PNG = _png_bytes()


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=600),
    st.tuples(st.integers(0, len(VALID_PNG) - 1), st.binary(min_size=1, max_size=6)).map(
        lambda t: VALID_PNG[: t[0]] + t[1] + VALID_PNG[t[0] + len(t[1]):]),
    st.integers(0, len(VALID_PNG)).map(lambda n: VALID_PNG[:n]),
))
def test_image_loader_raises_only_its_own_error(tmp_path, data):
    from cnnlab.inference import load_image, to_input

    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    for source in (path, data):  # a file, and the same bytes as an upload would bring them
        with contextlib.suppress(CnnlabError):
            tensor, _ = to_input(load_image(source))
            assert tensor.shape == (28, 28) and tensor.dtype == torch.uint8
