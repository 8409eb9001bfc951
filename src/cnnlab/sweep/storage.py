"""Where sweeps live: a journal file on one machine, or a PostgreSQL database that workers on
many machines share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.sweep import engine

DEFAULT_STORAGE = "runs/sweeps/optuna.journal"
DEFAULT_RUNS_ROOT = "runs/sweeps"


def say_to_stderr(text: str) -> None:
    print(f"cnnlab: {text}", file=sys.stderr, flush=True)


def open_storage(url: str, heartbeat: int = 20,
                 say: Callable[[str], None] = say_to_stderr) -> Any:
    """A journal file (any path) or a database URL (postgresql://user:pw@host/db).

    On a database each running trial records a heartbeat every `heartbeat` seconds; one
    silent for three intervals is failed and requeued by the next worker that looks. `say`
    hears the one-line notes: a lost and regained database connection, a mended journal."""
    engine.require()
    if "://" not in url:
        path = Path(url).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return engine.journal_storage(str(path), say)
        except OSError as e:
            raise CnnlabError(f"--storage {url}: cannot open the journal file ({e.strerror})"
                              ) from None
    if url.startswith("sqlite"):
        raise CnnlabError("--storage: SQLite fails under concurrent writers; give a journal "
                          "file path (one machine) or a postgresql:// URL (many machines)")
    if not url.startswith("postgresql"):
        raise CnnlabError(f"--storage {safe_url(url)}: give a journal file path (one machine) "
                          "or a postgresql:// URL (many machines)")
    import sqlalchemy.exc

    try:
        return engine.database_storage(
            url.replace("postgresql://", "postgresql+psycopg://", 1), heartbeat, say)
    except ModuleNotFoundError as e:
        raise CnnlabError(f"--storage {safe_url(url)}: the database driver {e.name} is "
                          f"missing; install it with {engine.INSTALL_HINT}") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise CnnlabError(f"--storage {safe_url(url)}: cannot connect ({reason}); check the "
                          "server, user, password and database name") from None


def safe_url(url: str) -> str:
    """The storage with a database password hidden, for messages."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]
