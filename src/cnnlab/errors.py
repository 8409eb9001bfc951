"""The one exception type for failures the user can fix; the CLI turns it into a message."""


class CnnlabError(Exception):
    """A user-facing failure: its message says what is wrong and what to do about it."""

    exit_code = 2


class Interrupted(CnnlabError):
    """Training stopped on SIGINT/SIGTERM; exits 128 + the signal number, like a shell."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Diverged(CnnlabError):
    """Training stopped on a non-finite loss or metric: an outcome of the recipe, which a
    rerun repeats (a sweep records the trial as failed for good)."""
