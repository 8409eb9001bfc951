"""The one module that talks to Optuna, so that the rest of the sweep reads as cnnlab.

Optuna is imported here only, and lazily: `cnnlab sweep` is an extra, and everything else in
cnnlab must work without it. The few places where a sweep needs more than Optuna's public
API (taking one queued trial without creating new ones, requeueing a trial whose worker
died, reading what Optuna keeps about queued and retried trials) are small functions here,
each saying why.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.trial import FrozenTrial

INSTALL_HINT = "pip install 'cnnlab[sweep]'"
MAX_RETRIES = 3  # requeues of one trial whose workers keep dying


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CnnlabError(f"cnnlab sweep needs Optuna; install it with {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and their retry callback are marked experimental; they are what we need.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def require() -> None:
    """Fail with the one-line install hint before anything else when Optuna is missing."""
    _optuna()


# --------------------------------------------------------------------------- storages

def journal_storage(path: str) -> Any:
    """A journal file: one machine, any number of worker processes."""
    optuna = _optuna()
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def database_storage(url: str, heartbeat: int) -> Any:
    """A database (SQLAlchemy URL) whose running trials record a heartbeat every `heartbeat`
    seconds; one silent for three intervals is requeued by the next worker that looks."""
    optuna = _optuna()
    return optuna.storages.RDBStorage(
        url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat,
        grace_period=3 * heartbeat, heartbeat_stale_trial_callback=_retry_policy())


def is_database(storage: Any) -> bool:
    return isinstance(storage, _optuna().storages.RDBStorage)


def _retry_policy() -> Any:
    """The one policy for a dead worker's trial, on either storage: a fresh copy with the
    same parameters and its reported epochs, at most MAX_RETRIES times."""
    return _optuna().storages.RetryHeartbeatStaleTrialCallback(
        max_retry=MAX_RETRIES, inherit_intermediate_values=True)


# --------------------------------------------------------------------------- studies

def new_study(name: str, storage: Any, direction: str) -> Study | None:
    """A new, empty Optuna study; None when the storage already holds one of that name."""
    optuna = _optuna()
    try:
        return optuna.create_study(study_name=name, storage=storage, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        return None


def load_study(name: str, storage: Any) -> Study | None:
    """The Optuna study of that name; None when the storage holds none."""
    try:
        return _optuna().load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def study_names(storage: Any) -> list[str]:
    return _optuna().get_all_study_names(storage)


def param_importances(optuna_study: Study) -> dict[str, float] | None:
    """Each searched key's share of the objective's variation (PED-ANOVA), once at least
    two trials are complete; None before, or when Optuna cannot estimate them."""
    if len(trials(optuna_study, "COMPLETE")) < 2:
        return None
    optuna = _optuna()
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with contextlib.suppress(ValueError, RuntimeError):
        return optuna.importance.get_param_importances(optuna_study, evaluator=evaluator)
    return None


# --------------------------------------------------------------------------- trials

def trials(optuna_study: Study, *states: str) -> list[FrozenTrial]:
    """The study's trials (all, or those in the named states: WAITING, RUNNING, COMPLETE,
    PRUNED, FAIL), without copying them."""
    TrialState = _optuna().trial.TrialState
    chosen = tuple(TrialState[s] for s in states) or None
    return optuna_study.get_trials(deepcopy=False, states=chosen)


def storage_id(trial: Trial | FrozenTrial) -> int:
    """The storage's id of a trial. Optuna keeps it private (`_trial_id`), but the storage
    calls below, and requeueing, need it: the public trial number is per study."""
    return trial._trial_id


def take_waiting(optuna_study: Study, storage: Any) -> int | None:
    """Mark one waiting trial running and return its id, or None when none waits.

    Optuna's public `ask()` creates a new trial when the queue is empty; a sweep's queue is
    the whole sweep, so a worker takes a queued trial through the storage instead (a trial
    another worker took first is skipped)."""
    optuna = _optuna()
    RUNNING = optuna.trial.TrialState.RUNNING
    for trial in trials(optuna_study, "WAITING"):
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if storage.set_trial_state_values(storage_id(trial), state=RUNNING):
                return storage_id(trial)
    return None


def fail_running(storage: Any, trial_id: int) -> FrozenTrial | None:
    """Fail a running trial whose worker died; None when it had already finished (another
    worker got there first). On a journal file no heartbeat notices a dead worker, so cnnlab
    fails the trial itself, through the storage."""
    optuna = _optuna()
    try:
        if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return storage.get_trial(trial_id)


def retry(optuna_study: Study, failed: FrozenTrial) -> None:
    """Queue a fresh copy of a failed trial (same parameters, same reported epochs), by the
    policy a database applies to trials whose heartbeat stopped."""
    _retry_policy()(optuna_study, failed)


def requeue_stale(optuna_study: Study) -> None:
    """On a database: fail and requeue the running trials whose heartbeat stopped."""
    _optuna().storages.fail_stale_trials(optuna_study)


def open_trial(optuna_study: Study, storage: Any, trial_id: int, seed: int | None) -> Trial:
    """The trial with storage id `trial_id`, to run. With a seed the sampler is seeded per
    trial: repeatable with one worker, and K workers never share a random stream (so never
    propose the same point twice)."""
    optuna = _optuna()
    if seed is not None:
        number = storage.get_trial_number_from_id(trial_id)
        optuna_study.sampler = optuna.samplers.TPESampler(seed=seed * 1_000_003 + number)
    return optuna.Trial(optuna_study, trial_id)


def finish(optuna_study: Study, trial: Trial, state: str, value: float | None = None) -> None:
    """Record how a trial ended: COMPLETE with its value, PRUNED or FAIL."""
    optuna_study.tell(trial, value, state=_optuna().trial.TrialState[state])


def queued_params(trial: FrozenTrial) -> dict[str, Any]:
    """A queued grid point's values: Optuna keeps them in a system attribute until a worker
    takes the trial."""
    return trial.params or trial.system_attrs.get("fixed_params") or {}


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries (Optuna's retry callback records it)."""
    return trial.system_attrs.get("failed_trial")


# --------------------------------------------------------------------------- running

def pruner(kind: str, epochs: int) -> Any:
    """none, median, or hyperband over the recipe's `epochs`."""
    optuna = _optuna()
    if kind == "median":
        return optuna.pruners.MedianPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def heartbeat_interval(storage: Any) -> int | None:
    """Seconds between a running trial's heartbeats; None on a journal file (no heartbeats)."""
    return storage.get_heartbeat_interval() if is_database(storage) else None


def record_heartbeat(storage: Any, trial_id: int) -> None:
    storage.record_heartbeat(trial_id)
