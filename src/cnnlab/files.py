"""Atomic file writes: a crash or a full disk never leaves a half-written file behind."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from cnnlab.errors import CnnlabError


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through a temp file in the same folder: flush, fsync, then rename.

    The old file stays intact until the rename, so a process killed mid-save leaves
    either the old or the new version, never a mixture.
    """
    path = Path(path)
    fd, tmp = temp_file(path.parent, path.name, ".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        advice = ("free some disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                  else "choose another path")
        raise CnnlabError(f"cannot write {path}: {e.strerror}; {advice}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_file(folder: Path, name: str, suffix: str, where: str | None = None,
              advice: str = "choose a writable folder") -> tuple[int, Path]:
    """A new hidden file `.NAME.*SUFFIX` in `folder`, open for writing (its descriptor and
    path), on the file system of NAME so that renaming it to NAME is atomic; or a one-line
    error naming `where` (default: the folder) and the `advice`."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
    except OSError as e:
        raise CnnlabError(f"cannot write in {where or folder}: {e.strerror}; {advice}") from e
    return fd, Path(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def make_folder(path: Path, what: str) -> None:
    """Create the folder `path` (the `what` a message names) and its parents, or say in one
    line why not: a parent that is a file, no permission."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnlabError(f"cannot create {what} {path} ({e.filename}: {e.strerror}); "
                          "choose another folder") from e


def is_plain_name(name: str) -> bool:
    """Whether `name` can be one file or folder name (it names run folders and figures)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\")
