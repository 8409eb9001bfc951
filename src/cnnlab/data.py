"""Fashion-MNIST from its four IDX files: find, download, verify, parse, hold in memory."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.files import make_folder, temp_file

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_SIZE = 28

# SHA-256 of the decompressed payloads (the dataset's published originals).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEFAULT_DIR = Path("~/.cache/cnnlab/fashion-mnist")
OFFLINE_HINT = ("copy the four IDX files (.gz or raw) into that folder, "
                "or point --data-dir or CNNLAB_DATA at a folder that has them")


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """`--data-dir`, else `$CNNLAB_DATA`, else `~/.cache/cnnlab/fashion-mnist`."""
    chosen = data_dir or os.environ.get("CNNLAB_DATA") or DEFAULT_DIR
    return Path(chosen).expanduser()


def find_file(data_dir: Path, name: str) -> Path | None:
    """The raw file if present (fastest to read), else its .gz, else None."""
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_files(data_dir: Path) -> list[str]:
    if data_dir.exists() and not data_dir.is_dir():
        raise CnnlabError(f"data folder {data_dir} is a file, not a folder; "
                          "point --data-dir or CNNLAB_DATA at a folder")
    return [name for name in SHA256 if find_file(data_dir, name) is None]


def _read_bytes(path: Path, compressed: bool | None = None) -> bytes:
    """The file's payload, gunzipped when it is a .gz (or when `compressed` says so)."""
    if compressed is None:
        compressed = path.suffix == ".gz"
    try:
        if compressed:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except PermissionError as e:
        raise CnnlabError(f"{path}: cannot read it (permission denied); "
                          "fix its permissions") from e
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CnnlabError(f"{path}: truncated or corrupt gzip data ({e}); "
                          "delete it and run `cnnlab download`") from e
    except OSError as e:
        raise CnnlabError(f"{path}: cannot read it ({e.strerror or e})") from e


def parse_idx(data: bytes, source: str, ndim: int) -> torch.Tensor:
    """Parse an unsigned-byte IDX payload with `ndim` dimensions into a uint8 tensor."""
    def bad(what: str) -> CnnlabError:
        return CnnlabError(f"{source}: {what}; delete it and run `cnnlab download`")

    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise bad(f"truncated: {len(data)} bytes, shorter than an IDX header")
    if data[0:2] != b"\0\0" or data[2] != 0x08 or data[3] != ndim:
        raise bad(f"wrong magic number 0x{data[0:4].hex()} "
                  f"(expected 0x000008{ndim:02x}, unsigned bytes in {ndim} dimensions)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(data) - header_len
    if actual < expected:
        raise bad(f"truncated: header says {'x'.join(map(str, dims))} = {expected} bytes "
                  f"of data, file has {actual}")
    if actual > expected:
        raise bad(f"header dimensions {'x'.join(map(str, dims))} disagree with the file "
                  f"size ({actual - expected} bytes left over)")
    array = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)
    return torch.from_numpy(array.copy())


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    return parse_idx(_read_bytes(path), str(path), ndim)


@dataclass
class ImageSet:
    """A split held in memory: uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device))

    def head(self, limit: int | None) -> ImageSet:
        """The first `limit` images (all of them when limit is None)."""
        if limit is None:
            return self
        return ImageSet(self.images[:limit], self.labels[:limit])


def load_split(data_dir: Path, split: str) -> ImageSet:
    """Read and validate one split ("train" or "test") from `data_dir`."""
    missing = missing_files(data_dir)
    if not data_dir.exists() or missing:
        where = "does not exist" if not data_dir.exists() else f"lacks {', '.join(missing)}"
        raise CnnlabError(f"data folder {data_dir} {where}; run `cnnlab download` "
                          f"(needs network) or {OFFLINE_HINT}")
    image_name, label_name = SPLITS[split]
    image_path, label_path = find_file(data_dir, image_name), find_file(data_dir, label_name)
    images = read_idx(image_path, ndim=3)
    labels = read_idx(label_path, ndim=1)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise CnnlabError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, "
                          f"expected {IMAGE_SIZE}x{IMAGE_SIZE}; is this Fashion-MNIST?")
    if len(images) != len(labels):
        raise CnnlabError(f"{image_path} holds {len(images)} images but {label_path} holds "
                          f"{len(labels)} labels; one of them is from another dataset")
    if not len(labels):
        raise CnnlabError(f"{image_path} and {label_path} hold no images; is this "
                          "Fashion-MNIST?")
    if int(labels.max()) > len(CLASSES) - 1:
        raise CnnlabError(f"{label_path}: label {int(labels.max())} is outside 0..9; "
                          "is this Fashion-MNIST?")
    return ImageSet(images, labels.long())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(data_dir: Path, mirror: str | None = None) -> list[str]:
    """Fetch the missing files into `data_dir`, verify, rename atomically; return their names.

    Each file goes to a temp file first; the SHA-256 of its decompressed payload must match
    the published value before it is renamed into place, so a broken download never
    looks like data.
    """
    mirror = mirror or os.environ.get("CNNLAB_MIRROR") or MIRROR
    make_folder(data_dir, "data folder")
    fetched = []
    for name in missing_files(data_dir):
        url = f"{mirror.rstrip('/')}/{name}.gz"
        print(f"downloading {url}", file=sys.stderr)
        fd, tmp = temp_file(data_dir, name, ".part", f"data folder {data_dir}",
                            "choose a writable folder with --data-dir")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, out)
            try:
                digest = _sha256(_read_bytes(tmp, compressed=True))
            except CnnlabError as e:
                raise CnnlabError(f"{url}: not valid gzip data; the download was discarded, "
                                  f"try again later or {OFFLINE_HINT}") from e
            if digest != SHA256[name]:
                raise CnnlabError(f"{url}: checksum mismatch (SHA-256 {digest[:12]}…, expected "
                                  f"{SHA256[name][:12]}…); the download was discarded, try "
                                  f"again later or {OFFLINE_HINT}")
            os.replace(tmp, data_dir / f"{name}.gz")
        except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: a bad URL
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise CnnlabError(f"cannot download {url} ({reason}); without network, "
                              f"{OFFLINE_HINT} (folder: {data_dir})") from e
        finally:
            tmp.unlink(missing_ok=True)
        fetched.append(name)
    return fetched


def verify(data_dir: Path) -> dict[str, bool]:
    """Whether each present file's decompressed payload has the published SHA-256."""
    result = {}
    for name in SHA256:
        path = find_file(data_dir, name)
        if path is not None:
            result[name] = _sha256(_read_bytes(path)) == SHA256[name]
    return result


def ensure_data(data_dir: Path) -> None:
    """Download what is missing, saying so first (training calls this before loading)."""
    missing = missing_files(data_dir)
    if missing:
        print(f"Fashion-MNIST not found in {data_dir} (missing {len(missing)} of 4 files); "
              "downloading it", file=sys.stderr)
        download(data_dir)


VAL_SEED = 20_240_601  # one fixed permutation: every run and recipe validates on the same images


@dataclass
class Datasets:
    """What a run trains on, validates on (None without a split) and tests on."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet

    def to(self, device: torch.device | str) -> Datasets:
        return Datasets(self.train.to(device), self.val.to(device) if self.val else None,
                        self.test.to(device))


def split_off(data: ImageSet, n_val: int) -> tuple[ImageSet, ImageSet]:
    """(rest, held-out): `n_val` images chosen by a fixed seeded permutation; the rest
    keep their original order, so `limit_train` still takes the first images."""
    if not 0 < n_val < len(data):
        raise CnnlabError(f"split.val = {n_val}: must be between 1 and {len(data) - 1} "
                          f"(the training set has {len(data):,} images)")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(VAL_SEED))
    held = order[:n_val].sort().values
    rest = order[n_val:].sort().values
    return (ImageSet(data.images[rest], data.labels[rest]),
            ImageSet(data.images[held], data.labels[held]))


def load_datasets(data_dir: Path, val: int = 0, limit_train: int | None = None,
                  limit_test: int | None = None) -> Datasets:
    """The training set (less `val` held-out images, then its first `limit_train`), the
    validation set and the test set (its first `limit_test`)."""
    train = load_split(data_dir, "train")
    held = None
    if val:
        train, held = split_off(train, val)
    return Datasets(train.head(limit_train), held, load_split(data_dir, "test").head(limit_test))
