"""Mending a journal file that a crash cut off in the middle of a record.

Optuna appends one JSON record per line. A writer killed mid-write leaves a last line
without its newline; Optuna skips such a line as "still being written", and the next
record appended joins it into one broken line that is then skipped too: a finished trial
silently lost. So before Optuna opens the file (holding the lock its writers take), a torn
last record is cut off, after the whole file is saved beside it, and any other broken
record stops the command with what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from cnnlab.errors import CnnlabError


def mend(path: Path, say: Callable[[str], None]) -> None:
    """Cut a torn last record off the journal `path` (saying so in one line, naming the
    saved copy); refuse a journal with a broken record elsewhere."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as e:
        raise CnnlabError(f"--storage {path}: cannot read the journal file ({e.strerror})"
                          ) from None
    keep = data.rfind(b"\n") + 1
    if data and not keep:  # no whole record: another kind of file, never to be truncated
        raise CnnlabError(f"--storage {path} is not a journal file (no whole record in it); "
                          "give a new file name, or delete it if a crash cut off its "
                          "first record")
    check_records(path, data[:keep])
    if keep == len(data):
        return
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(path, backup)
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    say(f"journal {path}: its last record was cut off by a crash ({len(data) - keep} bytes); "
        f"removed it (the file as it was is saved as {backup.name}); a trial whose end it "
        "recorded runs again and takes its finished run folder")


def check_records(path: Path, data: bytes) -> None:
    """Every line of `data` is one JSON record; otherwise say which line, and what to do."""
    for number, line in enumerate(data.splitlines(), 1):
        try:
            json.loads(line)
        except ValueError:
            raise CnnlabError(
                f"journal {path}: record {number} is damaged (not a crash's torn end); move "
                "the file away, create the sweep again under the same name in a new journal "
                "and run `cnnlab sweep work`: a grid's finished run folders are taken as they "
                "are") from None
