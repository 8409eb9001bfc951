"""Many runs as Optuna studies: grids (recipes × seeds × settings) and searches.

A sweep is an Optuna study in a shared storage: a journal file on one machine, or a
PostgreSQL database that workers on many machines share. `create` stores the sweep's
definition in the study and enqueues every trial it will ever run (each grid point once;
N empty slots for a search, whose parameters the sampler fills in when a worker takes one),
so workers only ever take queued trials and no point runs twice.

Each trial trains an ordinary run folder, `SWEEP_DIR/runs/<name from its parameters>/`.
A trial whose worker died is requeued: on PostgreSQL when its heartbeat stops (Optuna's
`fail_stale_trials` with `RetryHeartbeatStaleTrialCallback`), on a journal file when its process
is gone (checked by every worker of this machine, and at each start). The requeued trial
keeps its parameters and run folder, so it continues from the folder's `last.pt`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.data import ensure_data, load_datasets
from cnnlab.errors import CnnlabError, Interrupted
from cnnlab.recipe import Recipe, parse_recipe, parse_value
from cnnlab.runs import RunFolder
from cnnlab.train import Logger, resume_recipe, train

if TYPE_CHECKING:
    import optuna

SPEC_ATTR = "cnnlab_sweep"
OBJECTIVES = {"val_acc": "maximize", "val_loss": "minimize"}
PRUNERS = ("none", "median", "hyperband")
MAX_RETRIES = 3  # requeues of one trial whose workers keep dying
UNSIGNED_GRACE_S = 60  # a taken trial's worker signs it at once; one unsigned this long died
INSTALL_HINT = "pip install 'cnnlab[sweep]'"
DEFAULT_RUNS_ROOT = "runs/sweeps"
SPAWNED_ENV = "CNNLAB_SWEEP_SPAWNED"  # set in the workers that `sweep work --workers K` starts
DEFAULT_STORAGE = "runs/sweeps/optuna.journal"


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CnnlabError(f"cnnlab sweep needs Optuna; install it with {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and their retry callback are marked experimental; they are what we need.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# --------------------------------------------------------------------------- storage

def requeue() -> Any:
    """The one policy for a dead worker's trial, on either storage: a fresh copy with the
    same parameters and its reported epochs, at most MAX_RETRIES times."""
    return import_optuna().storages.RetryHeartbeatStaleTrialCallback(
        max_retry=MAX_RETRIES, inherit_intermediate_values=True)


def open_storage(url: str, heartbeat: int = 20) -> Any:
    """A journal file (any path) or a database URL (postgresql://user:pw@host/db).

    On a database each running trial records a heartbeat every `heartbeat` seconds; one
    silent for three intervals is failed and requeued by the next worker that looks."""
    optuna = import_optuna()
    if "://" not in url:
        path = Path(url).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as e:
            raise CnnlabError(f"--storage {url}: cannot open the journal file ({e.strerror})"
                              ) from None
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite"):
        raise CnnlabError("--storage: SQLite fails under concurrent writers; give a journal "
                          "file path (one machine) or a postgresql:// URL (many machines)")
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(
            url.replace("postgresql://", "postgresql+psycopg://", 1),
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=requeue())
    except ModuleNotFoundError as e:
        raise CnnlabError(f"--storage {safe_url(url)}: the database driver {e.name} is "
                          f"missing; install it with {INSTALL_HINT}") from None
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


# --------------------------------------------------------------------------- definition

@dataclass
class Param:
    """One searched key: `float:LOW:HIGH`, `log:LOW:HIGH`, `int:LOW:HIGH` or `cat:A,B,…`."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: list[Any] = field(default_factory=list)

    @classmethod
    def parse(cls, key: str, text: str) -> Param:
        kind, _, rest = text.partition(":")
        usage = (f"--param {key}={text}: expected float:LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH "
                 "or cat:A,B,…")
        if kind == "cat":
            choices = [parse_value(v) for v in rest.split(",") if v]
            if not choices:
                raise CnnlabError(usage)
            return cls(kind, choices=choices)
        bounds = rest.split(":")
        if kind not in ("float", "log", "int") or len(bounds) != 2:
            raise CnnlabError(usage)
        try:
            low, high = (int(b) if kind == "int" else float(b) for b in bounds)
        except ValueError:
            raise CnnlabError(usage) from None
        if not low < high or (kind == "log" and low <= 0):
            raise CnnlabError(f"--param {key}={text}: needs LOW < HIGH"
                              + (" and LOW > 0 on a log scale" if kind == "log" else ""))
        return cls(kind, low, high)

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        if self.kind == "cat":
            return trial.suggest_categorical(key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(key, int(self.low), int(self.high))
        return trial.suggest_float(key, self.low, self.high, log=self.kind == "log")

    def ends(self) -> list[Any]:
        return self.choices if self.kind == "cat" else [self.low, self.high]


def parse_params(items: list[str]) -> dict[str, Param]:
    """`--param KEY=KIND:…` items → key: Param."""
    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CnnlabError(f"--param {item!r}: expected KEY=KIND:…, e.g. "
                              "optimizer.lr=log:1e-4:1e-2")
        params[key] = Param.parse(key, text)
    return params


def parse_grid(text: str) -> dict[str, list[Any]]:
    """`recipe=custom,custom_nobn seed=0..9 optimizer.lr=0.001,0.003` → key: values."""
    grid: dict[str, list[Any]] = {}
    for item in text.split():
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise CnnlabError(f"--grid {item!r}: expected KEY=V1,V2,… or KEY=A..B, e.g. "
                              "--grid 'recipe=custom,custom_nobn seed=0..9'")
        out: list[Any] = []
        for value in values.split(","):
            low, dots, high = value.partition("..")
            if dots:
                try:
                    out.extend(range(int(low), int(high) + 1))
                except ValueError:
                    raise CnnlabError(f"--grid {item!r}: a range is two integers, "
                                      "like seed=0..9") from None
            elif value:
                out.append(parse_value(value))
        if not out or key in grid:
            raise CnnlabError(f"--grid {item!r}: " + ("no values" if not out
                                                      else f"{key} is given twice"))
        grid[key] = out
    if not grid:
        raise CnnlabError("--grid is empty; e.g. --grid 'recipe=custom,custom_nobn seed=0..9'")
    return grid


@dataclass
class SweepSpec:
    """What a sweep runs; saved in the study so every worker, anywhere, runs the same."""

    kind: str  # "grid" or "search"
    recipes: dict[str, dict[str, Any]]  # base recipes by name, as data
    fixed: dict[str, Any]  # --set, for every trial
    grid: dict[str, list[Any]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: int = 0
    objective: str = "val_acc"
    pruner: str = "none"
    seed: int | None = None

    @property
    def metric(self) -> str:
        """A trial's value: the search's objective (validation), or a grid run's final
        test accuracy (a grid chooses nothing; it is the record of its runs)."""
        return self.objective if self.kind == "search" else "test_acc"

    @property
    def direction(self) -> str:
        return OBJECTIVES.get(self.metric, "maximize")

    def points(self) -> list[dict[str, Any]]:
        """Every grid point, in order."""
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*self.grid.values())]

    def recipe(self, values: dict[str, Any]) -> Recipe:
        """The recipe of one trial: the base recipe, --set, then the trial's own values; a
        grid point's recipe is named by its values other than the seed (`custom-lr=0.003`),
        so that a report groups its seeds."""
        values = dict(values)
        base = values.pop("recipe", None) or next(iter(self.recipes))
        recipe = parse_recipe(self.recipes[base], f"recipe {base}")
        recipe = recipe.with_overrides(self.fixed, "--set")
        if self.kind == "search":
            return recipe.with_overrides(values, "sweep --param")
        label = trial_label(base, {k: v for k, v in values.items() if k != "seed"})
        return recipe.with_overrides({**values, "name": label}, "sweep --grid")

    def trial_values(self, trial: optuna.Trial) -> dict[str, Any]:
        if self.kind == "grid":
            return {k: trial.suggest_categorical(k, v) for k, v in self.grid.items()}
        return {k: Param(**p).suggest(trial, k) for k, p in self.params.items()}

    def run_name(self, trial: optuna.Trial, values: dict[str, Any], recipe: Recipe) -> str:
        """The run folder of a trial: its grid point (`custom-lr=0.003-seed3`), or the search
        trial's number and values (`trial007-lr=0.00123`)."""
        if self.kind == "grid":
            return recipe.name + (f"-seed{values['seed']}" if "seed" in values else "")
        return trial_label(f"trial{trial.number:03d}", values)

    def make_pruner(self) -> Any:
        optuna = import_optuna()
        if self.pruner == "median":
            return optuna.pruners.MedianPruner()
        if self.pruner == "hyperband":
            epochs = parse_recipe(next(iter(self.recipes.values())), "recipe").with_overrides(
                self.fixed).epochs
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
        return optuna.pruners.NopPruner()


def trial_label(base: str, values: dict[str, Any]) -> str:
    def short(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return "-".join([base] + [f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in values.items()])


def grid_spec(grid: dict[str, list[Any]], recipes: dict[str, Recipe],
              fixed: dict[str, Any]) -> SweepSpec:
    """A grid over `recipes` (named by the grid's `recipe` key, else the one given)."""
    spec = SweepSpec("grid", {n: r.to_dict() for n, r in recipes.items()}, fixed, grid=grid)
    for point in spec.points():  # every point must be a valid recipe before anything runs
        spec.recipe(point)
    return spec


def search_spec(recipe: Recipe, params: dict[str, Param], fixed: dict[str, Any], trials: int,
                objective: str, pruner: str, seed: int | None) -> SweepSpec:
    if not params:
        raise CnnlabError("a search needs at least one --param KEY=KIND:…, e.g. "
                          "--param optimizer.lr=log:1e-4:1e-2 (or give --grid)")
    if trials < 1:
        raise CnnlabError(f"--trials must be >= 1 (got {trials})")
    if objective not in OBJECTIVES:
        raise CnnlabError(f"--objective {objective}: choose {' or '.join(OBJECTIVES)} "
                          "(always on the validation split)")
    if pruner not in PRUNERS:
        raise CnnlabError(f"--pruner {pruner}: choose one of {', '.join(PRUNERS)}")
    spec = SweepSpec("search", {recipe.name: recipe.to_dict()}, fixed,
                     params={k: asdict(p) for k, p in params.items()}, trials=trials,
                     objective=objective, pruner=pruner, seed=seed)
    if spec.recipe({}).split.val == 0:
        raise CnnlabError("a search chooses on the validation split, and this recipe has "
                          "none; add e.g. --set split.val=5000")
    for k, p in params.items():
        for end in p.ends():
            spec.recipe({k: end})
    return spec


# --------------------------------------------------------------------------- studies

def create(name: str, storage: Any, spec: SweepSpec) -> int:
    """Create the study and enqueue its trials; returns how many."""
    optuna = import_optuna()
    try:
        study = optuna.create_study(study_name=name, storage=storage,
                                    direction=spec.direction)
    except optuna.exceptions.DuplicatedStudyError:
        raise CnnlabError(f"a sweep named {name!r} already exists in this storage; choose "
                          "another name") from None
    study.set_user_attr(SPEC_ATTR, asdict(spec))
    points = spec.points() if spec.kind == "grid" else [{}] * spec.trials
    for point in points:
        study.enqueue_trial(point)
    return len(points)


def load(name: str, storage: Any) -> tuple[optuna.Study, SweepSpec]:
    optuna = import_optuna()
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise CnnlabError(f"no sweep named {name!r} in this storage (it holds: "
                          f"{', '.join(names) or 'none'}); create it with `cnnlab sweep "
                          "create`") from None
    if SPEC_ATTR not in study.user_attrs:
        raise CnnlabError(f"study {name!r} was not created by `cnnlab sweep create`")
    return study, SweepSpec(**study.user_attrs[SPEC_ATTR])


def ensure(name: str, storage: Any, spec: SweepSpec) -> None:
    """Create the sweep, or accept an existing one with the same definition (a rerun)."""
    optuna = import_optuna()
    if name not in optuna.get_all_study_names(storage):
        create(name, storage, spec)
    elif asdict(load(name, storage)[1]) != json.loads(json.dumps(asdict(spec))):
        raise CnnlabError(f"the sweep {name!r} in this storage was created with other "
                          "settings; use another --out or sweep name")


# --------------------------------------------------------------------------- workers

def process_token(pid: int) -> str | None:
    """The process's start time (Linux), so that a reused pid is not taken for a live
    worker; None when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: fall back to asking the OS whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"


@dataclass
class Worker:
    study: Any
    storage: Any  # the study's storage, where trials are taken and requeued
    spec: SweepSpec
    sweep_dir: Path
    data_dir: Path
    device: torch.device
    model_code: str | None = None
    poll: float = 2.0
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    @property
    def tag(self) -> str:
        return f"[{self.host}:{self.pid}]"

    def say(self, text: str) -> None:
        print(f"{self.tag} {text}", file=sys.stderr, flush=True)

    def run(self) -> int:
        """Take queued trials until none is waiting or running; returns how many ran."""
        optuna = import_optuna()
        ensure_data(self.data_dir)
        done = 0
        while True:
            self.recover()
            trial_id = self.pop()
            if trial_id is not None:
                if self.spec.seed is not None:
                    # Seeded per trial: repeatable with one worker, and K workers never
                    # share a random stream (so never propose the same point twice).
                    number = self.storage.get_trial_number_from_id(trial_id)
                    self.study.sampler = optuna.samplers.TPESampler(
                        seed=self.spec.seed * 1_000_003 + number)
                self.run_trial(optuna.Trial(self.study, trial_id))
                done += 1
                continue
            running = self.study.get_trials(deepcopy=False,
                                            states=(optuna.trial.TrialState.RUNNING,))
            if not running:
                return done
            time.sleep(self.poll)  # others' trials may still fail and come back

    def pop(self) -> int | None:
        """Take one waiting trial (never create one: the queue is the whole sweep)."""
        optuna = import_optuna()
        storage, TrialState = self.storage, optuna.trial.TrialState
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                    return trial._trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def recover(self) -> None:
        """Requeue the trials of dead workers: by heartbeat on a database; on a journal
        file (one machine, no heartbeats) by whether the worker's process still lives."""
        optuna = import_optuna()
        if isinstance(self.storage, optuna.storages.RDBStorage):
            optuna.storages.fail_stale_trials(self.study)
            return
        for trial in self.study.get_trials(deepcopy=False,
                                           states=(optuna.trial.TrialState.RUNNING,)):
            worker = trial.user_attrs.get("worker")
            if worker is None:  # taken a moment ago, or its worker died before signing it
                started = trial.datetime_start
                if started is None or time.time() - started.timestamp() < UNSIGNED_GRACE_S:
                    continue
                self.requeue(trial._trial_id, "its worker never started it")
                continue
            host, pid, token = worker
            if host == self.host and process_token(pid) == token:
                continue  # alive
            self.requeue(trial._trial_id, f"worker {host}:{pid} is gone")

    def requeue(self, trial_id: int, why: str) -> None:
        optuna = import_optuna()
        try:
            if not self.storage.set_trial_state_values(
                    trial_id, state=optuna.trial.TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another worker got there first
        frozen = self.storage.get_trial(trial_id)
        self.say(f"trial {frozen.number} requeued: {why}")
        requeue()(self.study, frozen)

    def run_trial(self, trial: optuna.Trial) -> None:
        optuna = import_optuna()
        TrialState = optuna.trial.TrialState
        with self.heartbeat(trial._trial_id):
            try:
                value = self.objective(trial)
            except optuna.TrialPruned as e:
                self.say(f"trial {trial.number} pruned: {e}")
                self.study.tell(trial, state=TrialState.PRUNED)
                return
            except (Interrupted, KeyboardInterrupt):
                self.requeue(trial._trial_id, "its worker was stopped")
                raise
            except CnnlabError as e:
                self.say(f"trial {trial.number} failed: {e}")
                trial.set_user_attr("error", str(e))
                self.study.tell(trial, state=TrialState.FAIL)
                return
            except BaseException as e:
                trial.set_user_attr("error", f"{type(e).__name__}: {e}")
                self.study.tell(trial, state=TrialState.FAIL)
                raise
        self.study.tell(trial, value)
        self.say(f"trial {trial.number} finished: {self.spec.metric} {value:.4f} "
                 f"({self.progress()})")

    def progress(self) -> str:
        optuna = import_optuna()
        trials = self.study.get_trials(deepcopy=False)
        waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
        running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
        return f"sweep: {waiting} waiting, {running} running"

    @contextlib.contextmanager
    def heartbeat(self, trial_id: int) -> Iterator[None]:
        """Record the trial's heartbeat in a thread while it runs (databases only)."""
        optuna = import_optuna()
        storage = self.storage
        if not isinstance(storage, optuna.storages.RDBStorage):
            yield
            return
        interval = storage.get_heartbeat_interval()
        stop = threading.Event()

        def beat() -> None:
            while True:
                storage.record_heartbeat(trial_id)
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", [self.host, self.pid, process_token(self.pid)])
        values = self.spec.trial_values(trial)
        recipe = self.spec.recipe(values)
        name = trial.user_attrs.get("run") or self.spec.run_name(trial, values, recipe)
        trial.set_user_attr("run", name)
        run = RunFolder(self.sweep_dir / "runs" / name)
        done = run.epochs_done()
        if done:
            resume_recipe(run, recipe.to_dict())  # the folder must hold this very recipe
        else:
            run.claim(overwrite=True)  # a start that never finished an epoch
        if done >= recipe.epochs:
            self.say(f"trial {trial.number} {name}: finished earlier")
            rows = run.rows()
        else:
            verb = f"resuming after epoch {done}" if done else "starting"
            self.say(f"trial {trial.number} {name}: {verb}")
            data = load_datasets(self.data_dir, recipe.split.val, recipe.limit_train,
                                 recipe.limit_test)
            rows = train(recipe, data, run, self.device, resume=done > 0,
                         loggers=[TrialLogger(self, trial, name, recipe.epochs)],
                         model_code=self.model_code)
        value = rows[-1][self.spec.metric]
        if value is None or not math.isfinite(value):
            raise CnnlabError(f"{name} gave no {self.spec.metric}")
        return value


class TrialLogger(Logger):
    """Reports each epoch to the study (for pruning) and prints one line."""

    def __init__(self, worker: Worker, trial: optuna.Trial, name: str, epochs: int) -> None:
        self.worker, self.trial, self.name, self.epochs = worker, trial, name, epochs

    def log_epoch(self, row: dict[str, Any]) -> None:
        spec = self.worker.spec
        val = (f"  val acc {100 * row['val_acc']:.2f}%" if row.get("val_acc") is not None
               else "")
        self.worker.say(f"trial {self.trial.number} {self.name} epoch {row['epoch']}/"
                        f"{self.epochs}{val}  test acc {100 * row['test_acc']:.2f}%  "
                        f"{row['seconds']:.1f}s")
        if spec.kind == "search":
            self.trial.report(row[spec.objective], row["epoch"])
            if self.trial.should_prune():
                raise import_optuna().TrialPruned(
                    f"{spec.objective} {row[spec.objective]:.4f} at epoch {row['epoch']}")


def work(name: str, storage_url: str, sweep_dir: Path, data_dir: Path, device: torch.device,
         heartbeat: int, model_code: str | None = None) -> int:
    """One worker in this process; returns how many trials it ran."""
    storage = open_storage(storage_url, heartbeat)
    study, spec = load(name, storage)
    study.pruner = spec.make_pruner()
    worker = Worker(study, storage, spec, sweep_dir, data_dir, device, model_code,
                    poll=min(2.0, heartbeat))
    worker.say(f"sweep {name}: {torch.get_num_threads()} threads, runs in {sweep_dir}")
    return worker.run()


def spawn_workers(count: int, threads: int, worker_args: list[str]) -> None:
    """Start `count` worker processes here (`cnnlab sweep work … --workers 1`, each with
    `threads` torch threads) and wait for them; Ctrl-C and SIGTERM reach every worker, which
    requeues its trial from the last checkpoint."""
    import signal
    import subprocess

    command = [sys.executable, "-m", "cnnlab.cli", "sweep", "work", *worker_args,
               "--workers", "1", "--threads", str(threads)]
    env = {**os.environ, SPAWNED_ENV: "1"}
    procs = [subprocess.Popen(command, env=env) for _ in range(count)]

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [proc.wait() for proc in procs]
    except KeyboardInterrupt:  # the terminal sent SIGINT to the workers too
        codes = [proc.wait() for proc in procs]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [c for c in codes if c != 0]
    if failed:
        raise CnnlabError(f"{len(failed)} of {count} workers stopped with exit status "
                          f"{', '.join(map(str, failed))} (their messages are above); run the "
                          "same command again to continue the sweep")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- status

def trial_rows(study: optuna.Study, sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per trial: state, values, run folder, worker, epochs done."""
    optuna = import_optuna()
    rows = []
    for t in study.get_trials(deepcopy=False):
        run = t.user_attrs.get("run")
        folder = RunFolder(sweep_dir / "runs" / run) if run else None
        epochs = len(folder.rows()) if folder and folder.metrics_path.is_file() else 0
        # A requeued trial inherits its dead worker's attrs; only a taken one has a worker.
        taken = t.state != optuna.trial.TrialState.WAITING
        worker = (taken and t.user_attrs.get("worker")) or [None, None]
        # A queued grid point has no params yet: Optuna keeps them as its fixed_params.
        params = t.params or t.system_attrs.get("fixed_params") or {}
        rows.append({"trial": t.number, "state": t.state.name,
                     "params": {k: params[k] for k in sorted(params)},
                     "value": t.value, "run": str(folder.path) if folder else None,
                     "epochs": epochs,
                     "host": f"{worker[0]}:{worker[1]}" if worker[0] else None,
                     "retry_of": t.system_attrs.get("failed_trial"),
                     "error": t.user_attrs.get("error")})
    return rows


def state_counts(rows: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))


def status_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)


def write_search_report(study: optuna.Study, spec: SweepSpec, sweep_dir: Path,
                        command: str) -> tuple[Path, Path]:
    from cnnlab.report.search import build_search_report

    optuna = import_optuna()
    importances = None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) >= 2:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        with contextlib.suppress(ValueError, RuntimeError):
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    log_params = {k: p["kind"] == "log" for k, p in spec.params.items()}
    return build_search_report(sweep_dir, study.study_name, trial_rows(study, sweep_dir),
                               log_params, importances, spec.metric, spec.direction, command)
