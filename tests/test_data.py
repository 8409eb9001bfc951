import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import (
    CLASSES,
    download,
    load_split,
    missing_files,
    parse_idx,
    resolve_data_dir,
    verify,
)
from cnnlab.errors import CnnlabError
from conftest import idx_bytes, write_dataset


def test_real_data_matches_published_facts(data_dir):
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 28, 28)
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(0.2860, abs=1e-4)
    assert pixels.std().item() == pytest.approx(0.3530, abs=1e-4)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert CLASSES[int(train.labels[0])] == "Ankle boot"


def test_real_data_checksums(data_dir):
    assert verify(data_dir) == dict.fromkeys(verify(data_dir), True)
    assert len(verify(data_dir)) == 4


def test_gz_and_raw_files_parse_the_same(tmp_path):
    gz = load_split(write_dataset(tmp_path / "gz", gz=True), "train")
    raw = load_split(write_dataset(tmp_path / "raw", gz=False), "train")
    assert torch.equal(gz.images, raw.images) and torch.equal(gz.labels, raw.labels)


def test_head_takes_the_first_images(tmp_path):
    full = load_split(write_dataset(tmp_path), "test")
    head = full.head(5)
    assert len(head) == 5 and torch.equal(head.images, full.images[:5])


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("CNNLAB_DATA")
    assert resolve_data_dir(None) == Path("~/.cache/cnnlab/fashion-mnist").expanduser()


GOOD = idx_bytes(np.zeros((3, 28, 28)))


@pytest.mark.parametrize("data, message", [
    (b"", "truncated"),
    (GOOD[:10], "truncated"),
    (b"\0\0\x09\x03" + GOOD[4:], "magic"),
    (b"\0\0\x08\x01" + GOOD[4:], "magic"),
    (GOOD[:-1], "truncated"),
    (GOOD + b"\0", "disagree"),
])
def test_corrupt_idx_is_refused_with_a_named_error(data, message):
    with pytest.raises(CnnlabError, match=message) as info:
        parse_idx(data, "some-file", ndim=3)
    assert "some-file" in str(info.value)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CnnlabError, match="does not exist"):
        load_split(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match="lacks train-images-idx3-ubyte, "):
        load_split(tmp_path / "empty", "train")
    folder = write_dataset(tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    assert missing_files(folder) == ["t10k-labels-idx1-ubyte"]
    with pytest.raises(CnnlabError, match="t10k-labels-idx1-ubyte"):
        load_split(folder, "test")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CnnlabError, match="is a file"):
        load_split(tmp_path / "file", "train")


def test_truncated_gzip(tmp_path):
    folder = write_dataset(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CnnlabError, match="truncated or corrupt gzip"):
        load_split(folder, "train")


def test_count_mismatch_and_bad_labels(tmp_path):
    folder = write_dataset(tmp_path)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(49))))
    with pytest.raises(CnnlabError, match="50 images but .* 49 labels"):
        load_split(folder, "train")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(50, 10))))
    with pytest.raises(CnnlabError, match="outside 0..9"):
        load_split(folder, "train")
    (folder / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros((0, 28, 28)))))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(0))))
    with pytest.raises(CnnlabError, match="hold no images"):  # an evaluation would be nan
        load_split(folder, "train")


def test_unreadable_file(tmp_path, monkeypatch):
    folder = write_dataset(tmp_path)
    (folder / "train-images-idx3-ubyte.gz").chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the open fail as it would for a user
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(gzip, "open", denied)
    with pytest.raises(CnnlabError, match="permission denied"):
        load_split(folder, "train")


def test_download_verifies_and_renames(tmp_path, data_dir):
    """Download from a local mirror (file:// URLs): real files verify and land."""
    target = tmp_path / "data"
    fetched = download(target, mirror=data_dir.resolve().as_uri())
    assert len(fetched) == 4 and missing_files(target) == []
    assert all(verify(target).values())
    assert not list(target.glob(".*"))  # no temp files left


def test_download_refuses_a_checksum_mismatch(tmp_path, data_dir):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for path in data_dir.glob("*.gz"):
        shutil.copy(path, mirror / path.name)
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(10000))))
    target = tmp_path / "data"
    with pytest.raises(CnnlabError, match="checksum mismatch"):
        download(target, mirror=mirror.as_uri())
    assert "t10k-labels-idx1-ubyte" in missing_files(target)
    assert not list(target.glob(".*"))  # the bad download was deleted


def test_download_without_network_says_how_to_work_offline(tmp_path):
    with pytest.raises(CnnlabError, match="CNNLAB_DATA"):
        download(tmp_path / "data", mirror="http://127.0.0.1:9/")
    with pytest.raises(CnnlabError, match="cannot download nonsense/"):  # not a URL
        download(tmp_path / "data", mirror="nonsense")


def test_download_into_a_folder_it_cannot_write_is_one_line(tmp_path, monkeypatch):
    def denied(*args, **kwargs):  # as for a user in a read-only folder (root writes anywhere)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(CnnlabError, match="cannot write in data folder .*Permission denied"):
        download(tmp_path / "data", mirror="http://127.0.0.1:9/")
