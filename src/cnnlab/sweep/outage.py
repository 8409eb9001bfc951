"""Riding out a lost storage connection: a database restart, a network blip.

Every call a worker makes to a database storage (taking a trial, its heartbeat, telling its
result) goes through one `Outage` per storage, shared by the worker's threads: a call that
loses the connection is retried with growing pauses, the first failure says one line, the
first success after it another, and after PATIENCE_S the calls give up with one line that
says what to do. Whether an error is a lost connection is the caller's to say, so this
module needs no database library.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from cnnlab.errors import CnnlabError

PATIENCE_S = 60.0  # how long calls retry through one outage before giving up
FIRST_DELAY_S = 0.5

T = TypeVar("T")


class StorageUnreachable(CnnlabError):
    """The storage stayed unreachable for PATIENCE_S; the trial's last checkpoint stands and
    the trial is requeued once the storage is back."""


class Outage:
    """The state of one storage's connection, shared by the threads that call it."""

    def __init__(self, say: Callable[[str], None], is_lost: Callable[[BaseException], bool],
                 max_delay: float) -> None:
        self.say, self.is_lost = say, is_lost
        self.max_delay, self.patience = max_delay, PATIENCE_S
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current outage began (monotonic)
        self._ended = -float("inf")  # when the last outage ended (monotonic)

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()`, retried through a lost connection for up to `patience` seconds."""
        delay = FIRST_DELAY_S
        while True:
            try:
                result = fn()
            except Exception as e:
                if not self.is_lost(e):
                    raise
                waited = self._failed(e)
                if waited >= self.patience:
                    raise StorageUnreachable(
                        f"the sweep's storage has been unreachable for {waited:.0f} s "
                        f"({reason(e)}); this worker stops; its trial keeps its last "
                        "checkpoint and is requeued once the storage is back: run `cnnlab "
                        "sweep work` again then") from None
                time.sleep(min(delay, self.patience - waited))
                delay = min(2 * delay, self.max_delay)
                continue
            self._succeeded()
            return result

    def steady_for(self) -> float:
        """Seconds since the connection last came back (infinite when it never failed);
        0 during an outage."""
        with self._lock:
            return 0.0 if self._since is not None else time.monotonic() - self._ended

    def _failed(self, error: BaseException) -> float:
        """Note a failed call; returns how long the outage has lasted."""
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since = now
                self.say(f"storage unreachable ({reason(error)}); retrying for up to "
                         f"{self.patience:.0f} s")
            return now - self._since

    def _succeeded(self) -> None:
        if self._since is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self._since is not None:
                now = time.monotonic()
                self.say(f"storage reachable again after {now - self._since:.1f} s")
                self._since, self._ended = None, now


def reason(error: BaseException) -> str:
    """The root cause's first line: `connection refused`, not SQLAlchemy's wrapping."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
