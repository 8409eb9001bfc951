"""The one module that talks to Optuna, so that the rest of the sweep reads as cnnlab.

Optuna is imported here only, and lazily: `cnnlab sweep` is an extra, and everything else in
cnnlab must work without it. The few places where a sweep needs more than Optuna's public
API (taking one queued trial without creating new ones, requeueing a trial whose worker
died, reading what Optuna keeps about queued and retried trials) are small functions here,
each saying why.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError
from cnnlab.sweep import journal
from cnnlab.sweep.outage import Outage

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.trial import FrozenTrial

INSTALL_HINT = "pip install 'cnnlab[sweep]'"
MAX_RETRIES = 3  # requeues of one trial whose workers keep dying
DEATHS = "cnnlab_worker_deaths"  # a trial's system attr: its workers' deaths in a row
FINAL = "final"  # a failed trial's user attr: its failure is its outcome (a diverged loss)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CnnlabError(f"cnnlab sweep needs Optuna; install it with {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats are marked experimental; they are what we need.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def require() -> None:
    """Fail with the one-line install hint before anything else when Optuna is missing."""
    _optuna()


# --------------------------------------------------------------------------- storages

def journal_storage(path: str, say: Callable[[str], None]) -> Any:
    """A journal file: one machine, any number of worker processes. A record torn by a
    crash is mended first (see `journal.mend`), under the lock Optuna's writers take."""
    optuna = _optuna()
    backend = optuna.storages.journal.JournalFileBackend(path)
    # Optuna's lock is private API: the one every writer of this file takes.
    with optuna.storages.journal._file.get_lock_file(backend._lock):
        journal.mend(Path(path), say)
    return optuna.storages.JournalStorage(backend)


def database_storage(url: str, heartbeat: int, say: Callable[[str], None]) -> Any:
    """A database (SQLAlchemy URL) whose running trials record a heartbeat every `heartbeat`
    seconds; one silent for three intervals is requeued by the next worker that looks.
    Every call rides out a lost connection (see `Outage`), retrying at most every
    `heartbeat` seconds, so that a trial's owner beats again within one interval of the
    server's return."""
    storage = _patient_rdb_storage()(
        url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat,
        grace_period=3 * heartbeat, heartbeat_stale_trial_callback=retry)
    storage.outage = Outage(say, connection_lost, max_delay=heartbeat)
    return storage


def connection_lost(error: BaseException) -> bool:
    """Whether `error` (or what caused it: Optuna wraps SQLAlchemy's errors) is a lost or
    refused database connection, which a retry may outlast."""
    import sqlalchemy.exc

    lost = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
            sqlalchemy.exc.DisconnectionError)
    while error is not None:
        if isinstance(error, lost):
            return True
        error = error.__cause__
    return False


@functools.cache
def _patient_rdb_storage() -> type:
    """RDBStorage whose every storage call (the BaseStorage and BaseHeartbeat interface,
    which is all that Optuna and cnnlab call) goes through its `outage`. A subclass, not a
    wrapper, because Optuna treats an RDBStorage specially (caching, heartbeats)."""
    optuna = _optuna()
    base = optuna.storages.RDBStorage
    interface = {name for cls in (optuna.storages.BaseStorage,
                                  optuna.storages._heartbeat.BaseHeartbeat)
                 for name, member in vars(cls).items()
                 if callable(member) and not name.startswith("__")}

    def patient(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self.outage.call(lambda: method(self, *args, **kwargs))
        return call

    methods = {name: patient(getattr(base, name)) for name in sorted(interface)}
    return type("PatientRDBStorage", (base,), methods)


def is_database(storage: Any) -> bool:
    return isinstance(storage, _optuna().storages.RDBStorage)


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
    # PED-ANOVA warns (with its file and line) on tied objective values; the report's
    # importances are an estimate either way.
    with contextlib.suppress(ValueError, RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


def retry(optuna_study: Study, failed: FrozenTrial, rerun: bool = False) -> bool:
    """Queue a fresh copy of a failed trial: its parameters, run folder and reported epochs,
    not its error; False when not queued. A trial whose worker died is queued again at most
    MAX_RETRIES times in a row (on a database this is the heartbeat's callback); a `rerun`
    (a user's, the cause fixed) always, and starts that count afresh. Like Optuna's
    RetryHeartbeatStaleTrialCallback, it records the trials a copy stands for
    (`failed_trial`, `retry_history`); unlike it, a user's reruns are not counted as deaths."""
    optuna = _optuna()
    deaths = 0 if rerun else failed.system_attrs.get(DEATHS, 0) + 1
    if deaths > MAX_RETRIES:
        return False
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    system_attrs = {"failed_trial": failed.number, **failed.system_attrs,
                    "retry_history": history, DEATHS: deaths}
    optuna_study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.WAITING, params=failed.params,
        distributions=failed.distributions, system_attrs=system_attrs,
        user_attrs={k: v for k, v in failed.user_attrs.items() if k != "error"},
        intermediate_values=failed.intermediate_values))
    return True


def unretried_failures(optuna_study: Study) -> list[FrozenTrial]:
    """The failed trials that no later trial runs again and whose failure is not their
    outcome: the points the sweep still lacks. Each copy records the numbers of the trials
    it stands for (`retry_history`)."""
    every = trials(optuna_study)
    retried = {number for t in every for number in t.system_attrs.get("retry_history", [])}
    return [t for t in every if t.state.name == "FAIL" and t.number not in retried
            and not t.user_attrs.get(FINAL)]


def requeue_stale(optuna_study: Study, storage: Any) -> None:
    """On a database: fail and requeue the running trials whose heartbeat stopped.

    A heartbeat can only be missing for a time the database could record it, so no trial is
    judged before the server has been up, and this worker's own connection has been
    working, for a whole grace period (three intervals). A restart or an outage thus never
    makes a live trial look stale: its owner retries at most every interval, and beats
    again within one interval of the server's return, long before anyone judges it."""
    grace = storage.grace_period
    if storage.outage.steady_for() < grace or _server_uptime(storage) < grace:
        return
    _optuna().storages.fail_stale_trials(optuna_study)


def _server_uptime(storage: Any) -> float:
    """Seconds since the PostgreSQL server started (infinite on other databases, which
    cnnlab does not document)."""
    if storage.engine.dialect.name != "postgresql":
        return math.inf
    import sqlalchemy

    query = sqlalchemy.text("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")

    def uptime() -> float:
        with storage.engine.connect() as connection:
            return float(connection.execute(query).scalar())

    return storage.outage.call(uptime)


def open_trial(optuna_study: Study, storage: Any, trial_id: int, seed: int | None) -> Trial:
    """The trial with storage id `trial_id`, to run. With a seed the sampler is seeded per
    trial: repeatable with one worker, and K workers never share a random stream (so never
    propose the same point twice)."""
    optuna = _optuna()
    if seed is not None:
        number = storage.get_trial_number_from_id(trial_id)
        optuna_study.sampler = optuna.samplers.TPESampler(seed=seed * 1_000_003 + number)
    return optuna.Trial(optuna_study, trial_id)


def finish(optuna_study: Study, trial: Trial, state: str, value: float | None = None) -> bool:
    """Record how a trial ended: COMPLETE with its value, PRUNED or FAIL. False when it had
    ended already: failed and requeued by another worker while this one could not reach
    the storage (its retry then takes the run folder as this worker leaves it)."""
    # The study's storage is private in Optuna; a trial's state must come from it, fresh.
    if optuna_study._storage.get_trial(storage_id(trial)).state.is_finished():
        return False
    optuna_study.tell(trial, value, state=_optuna().trial.TrialState[state],
                      skip_if_finished=True)  # failed by another worker a moment ago: as above
    return True


def ended_elsewhere(error: BaseException) -> bool:
    """Whether `error` says the trial being run was ended by another worker (reporting to,
    or setting an attribute of, a finished trial)."""
    return isinstance(error, _optuna().exceptions.UpdateFinishedTrialError)


def queued_params(trial: FrozenTrial) -> dict[str, Any]:
    """A queued grid point's values: Optuna keeps them in a system attribute until a worker
    takes the trial."""
    return trial.params or trial.system_attrs.get("fixed_params") or {}


def queued_point(trial: Trial) -> dict[str, Any]:
    """The grid point a running trial was queued with (`queued_params` of a live trial)."""
    return dict(trial.storage.get_trial_system_attrs(storage_id(trial))["fixed_params"])


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries (see `retry`)."""
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
