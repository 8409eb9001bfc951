"""One writer per run folder: a trial's worker holds an OS lock on its folder while it runs.

A trial can be requeued while its worker still lives (a worker cut off from the database
for longer than the grace period looks dead to the others). Its retry must not write the
same run folder at the same time, so every worker takes `SWEEP_DIR/locks/<run>.lock`
(flock, exclusive) before it touches a run folder, and a retry whose folder is still held
waits until the first worker lets go: then it continues from the folder's last checkpoint,
or takes the run as finished. The OS releases the lock when its process ends, however it
ends (SIGKILL too), so a dead worker never blocks a folder; the file records who holds it,
for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cnnlab.errors import CnnlabError

POLL_S = 1.0


@contextlib.contextmanager
def claim_folder(lock_path: Path, owner: str, say: Callable[[str], None],
                 poll: float = POLL_S) -> Iterator[None]:
    """Hold the exclusive lock `lock_path` (recording `owner` in it) for the block; wait,
    saying so once, while another process holds it."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CnnlabError(f"cannot create the lock {lock_path}: {e.strerror}") from None
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    holder = lock_path.read_text().strip() or "another worker"
                    say(f"waiting for {holder}, which still writes this run folder")
                    waited = True
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
