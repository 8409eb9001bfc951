"""Workers: processes that take a sweep's queued trials, one at a time, until none is left.

Each trial trains an ordinary run folder, `SWEEP_DIR/runs/<name from its parameters>/`.
A trial whose worker died is requeued: on PostgreSQL when its heartbeat stops, on a journal
file when its process is gone (checked by every worker of this machine, and at each start).
The requeued trial keeps its parameters and run folder, so it continues from the folder's
`last.pt`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.data import ensure_data
from cnnlab.errors import CnnlabError, Diverged, Interrupted
from cnnlab.loggers import Logger, format_epoch
from cnnlab.recipe import Recipe
from cnnlab.runs import RunFolder
from cnnlab.sweep import engine
from cnnlab.sweep.claim import claim_folder
from cnnlab.sweep.definition import SweepSpec
from cnnlab.sweep.outage import StorageUnreachable
from cnnlab.sweep.storage import open_storage, say_to_stderr
from cnnlab.sweep.sweeps import load_sweep, stored_spec
from cnnlab.train import resumable_epochs, start_or_resume

if TYPE_CHECKING:
    from cnnlab.sweep.engine import FrozenTrial, Study, Trial

UNSIGNED_GRACE_S = 60  # a taken trial's worker signs it at once; one unsigned this long died
SPAWNED_ENV = "CNNLAB_SWEEP_SPAWNED"  # set in the workers that `sweep work --workers K` starts


class TrialPruned(Exception):
    """Raised by a search trial's logger when the pruner stops it after an epoch."""


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


def say_tagged(text: str) -> None:
    """Say a line as this process's worker does (for the storage's notes)."""
    print(f"[{socket.gethostname()}:{os.getpid()}] {text}", file=sys.stderr, flush=True)


def disk_full(error: BaseException) -> bool:
    """Whether `error` comes from a full disk or quota (a write that an atomic write
    undid, so the run folder holds its last checkpoint as it was)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__
    return False


@dataclass
class Worker:
    optuna_study: Study
    storage: Any  # the sweep's storage, where trials are taken and requeued
    spec: SweepSpec
    sweep_dir: Path
    data_dir: Path
    device: torch.device
    model_code: str | None = None
    poll: float = 2.0
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    lost: StorageUnreachable | None = field(default=None, init=False)  # set by the heartbeat

    @property
    def tag(self) -> str:
        return f"[{self.host}:{self.pid}]"

    def say(self, text: str) -> None:
        print(f"{self.tag} {text}", file=sys.stderr, flush=True)

    def run(self) -> int:
        """Take queued trials until none is waiting or running; returns how many ran."""
        ensure_data(self.data_dir)
        done = 0
        while True:
            self.recover()
            trial_id = engine.take_waiting(self.optuna_study, self.storage)
            if trial_id is not None:
                self.spec = stored_spec(self.optuna_study)  # a grid may have grown
                self.run_trial(engine.open_trial(self.optuna_study, self.storage, trial_id,
                                                 self.spec.seed))
                done += 1
                continue
            if not engine.trials(self.optuna_study, "RUNNING"):
                return done
            time.sleep(self.poll)  # others' trials may still fail and come back

    def recover(self) -> None:
        """Requeue the trials of dead workers: by heartbeat on a database; on a journal
        file (one machine, no heartbeats) by whether the worker's process still lives."""
        if engine.is_database(self.storage):
            engine.requeue_stale(self.optuna_study, self.storage)
            return
        for trial in engine.trials(self.optuna_study, "RUNNING"):
            worker = trial.user_attrs.get("worker")
            if worker is None:  # taken a moment ago, or its worker died before signing it
                started = trial.datetime_start
                if started is None or time.time() - started.timestamp() < UNSIGNED_GRACE_S:
                    continue
                self.requeue(engine.storage_id(trial), "its worker never started it")
                continue
            host, pid, token = worker
            if host == self.host and process_token(pid) == token:
                continue  # alive
            self.requeue(engine.storage_id(trial), f"worker {host}:{pid} is gone")

    def requeue(self, trial_id: int, why: str) -> None:
        failed = engine.fail_running(self.storage, trial_id)
        if failed is None:
            return  # another worker got there first
        if engine.retry(self.optuna_study, failed):
            self.say(f"trial {failed.number} requeued: {why}")
        else:
            self.say(f"trial {failed.number} failed: {why}, and its workers died "
                     f"{engine.MAX_RETRIES + 1} times in a row; not queued again")

    def run_trial(self, trial: Trial) -> None:
        with self.heartbeat(engine.storage_id(trial)):
            try:
                value = self.objective(trial)
            except TrialPruned as e:
                self.say(f"trial {trial.number} pruned: {e}")
                self.record(trial, "PRUNED")
                return
            except (Interrupted, KeyboardInterrupt):
                self.requeue(engine.storage_id(trial), "its worker was stopped")
                raise
            except StorageUnreachable:
                raise  # nothing can be recorded now; the trial is requeued once it is back
            except CnnlabError as e:
                if disk_full(e):  # every trial would fail alike: requeue this one and stop
                    self.requeue(engine.storage_id(trial), str(e))
                    raise CnnlabError(f"the disk of {self.sweep_dir} is full; trial "
                                      f"{trial.number} is requeued and continues from its "
                                      "last checkpoint: free some space and run `cnnlab "
                                      "sweep work` again") from None
                self.say(f"trial {trial.number} failed: {e}")
                self.record(trial, "FAIL", error=str(e), final=isinstance(e, Diverged))
                return
            except BaseException as e:
                if engine.ended_elsewhere(e):  # reported to a trial another worker failed
                    self.record(trial, "FAIL")  # says so
                    return
                self.record(trial, "FAIL", error=f"{type(e).__name__}: {e}")
                raise
        if self.record(trial, "COMPLETE", value):
            self.say(f"trial {trial.number} finished: {self.spec.metric} {value:.4f} "
                     f"({self.progress()})")

    def record(self, trial: Trial, state: str, value: float | None = None,
               error: str | None = None, final: bool = False) -> bool:
        """Tell the sweep how the trial ended (and why, for a failure; `final` for one that
        is the trial's outcome, never to be run again); False (saying why) when another
        worker had failed and requeued it while this one could not reach the storage."""
        try:
            if error is not None:
                trial.set_user_attr("error", error)
            if final:
                trial.set_user_attr(engine.FINAL, True)
            if engine.finish(self.optuna_study, trial, state, value):
                return True
        except Exception as e:
            if not engine.ended_elsewhere(e):
                raise
        self.say(f"trial {trial.number} was requeued by another worker while this one could "
                 "not reach the storage; the retry takes its run folder as it is now")
        return False

    def progress(self) -> str:
        waiting = len(engine.trials(self.optuna_study, "WAITING"))
        running = len(engine.trials(self.optuna_study, "RUNNING"))
        return f"sweep: {waiting} waiting, {running} running"

    @contextlib.contextmanager
    def heartbeat(self, trial_id: int) -> Iterator[None]:
        """Record the trial's heartbeat in a thread while it runs (databases only). A beat
        rides out a short outage (the storage retries it); when the storage stays away
        longer, the thread notes it in `lost`, and the trial stops at its next step."""
        interval = engine.heartbeat_interval(self.storage)
        self.lost = None
        if interval is None:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while True:
                try:
                    engine.record_heartbeat(self.storage, trial_id)
                except StorageUnreachable as e:
                    self.lost = e
                    return
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def objective(self, trial: Trial) -> float:
        trial.set_user_attr("worker", [self.host, self.pid, process_token(self.pid)])
        values = (engine.queued_point(trial) if self.spec.kind == "grid"
                  else self.spec.search_values(trial))
        recipe = self.spec.recipe(values)
        name = trial.user_attrs.get("run") or self.spec.run_name(trial, values, recipe)
        trial.set_user_attr("run", name)
        metrics = self.start_or_resume_run(trial, name, recipe)
        value = metrics[-1][self.spec.metric]
        if value is None or not math.isfinite(value):
            raise Diverged(f"{name} gave no {self.spec.metric}")
        return value

    def start_or_resume_run(self, trial: Trial, name: str, recipe: Recipe
                            ) -> list[dict[str, Any]]:
        """Train the trial's run folder to its last epoch: start it, resume it from its
        checkpoint (the folder must hold this very recipe), or take a finished one as it is;
        returns its metrics."""
        run = RunFolder(self.sweep_dir / "runs" / name)
        label = f"trial {trial.number} {name}"
        say = lambda text: self.say(f"{label}: {text}")  # noqa: E731
        with claim_folder(self.sweep_dir / "locks" / f"{name}.lock",
                          f"{self.host}:{self.pid} (trial {trial.number})", say):
            done = resumable_epochs(run, recipe)
            if not done:
                run.claim(overwrite=True)  # a start that never finished an epoch
            if done >= recipe.epochs:
                say("finished earlier")
                return run.read_metrics()
            return start_or_resume(recipe, run, self.data_dir, self.device, resume=done > 0,
                                   loggers=[TrialLogger(self, trial, label, recipe.epochs)],
                                   model_code=self.model_code, say=say)


class TrialLogger(Logger):
    """Reports each epoch to the sweep (for pruning) and prints one line."""

    def __init__(self, worker: Worker, trial: Trial, label: str, epochs: int) -> None:
        self.worker, self.trial, self.label, self.epochs = worker, trial, label, epochs

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if self.worker.lost is not None:  # the last checkpoint stands; see Worker.heartbeat
            raise self.worker.lost

    def log_epoch(self, row: dict[str, Any]) -> None:
        spec = self.worker.spec
        self.worker.say(f"{self.label} {format_epoch(row, self.epochs, brief=True)}  "
                        f"{row['seconds']:.1f}s")
        if spec.kind == "search" and row[spec.objective] is not None:
            self.trial.report(row[spec.objective], row["epoch"])
            if self.trial.should_prune():
                raise TrialPruned(
                    f"{spec.objective} {row[spec.objective]:.4f} at epoch {row['epoch']}")


def work(name: str, storage_url: str, sweep_dir: Path, data_dir: Path, device: torch.device,
         heartbeat: int, model_code: str | None = None) -> int:
    """One worker in this process; returns how many trials it ran."""
    storage = open_storage(storage_url, heartbeat, say_tagged)
    optuna_study, spec = load_sweep(name, storage)
    optuna_study.pruner = engine.pruner(spec.pruner, spec.base_epochs())
    worker = Worker(optuna_study, storage, spec, sweep_dir, data_dir, device, model_code,
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


def requeue_failures(optuna_study: Study) -> None:
    """Queue again each failed trial that no trial runs again yet, unless its failure is
    its outcome (a user reruns `sweep work` once the cause is fixed); its copy continues
    from the trial's run folder."""
    for failed in engine.unretried_failures(optuna_study):
        engine.retry(optuna_study, failed, rerun=True)
        say_to_stderr(f"trial {failed.number} ({failed.user_attrs.get('run', 'no run')}) "
                      f"failed earlier ({failure(failed)}); queued again")


def refuse_failures(name: str, optuna_study: Study) -> None:
    """End with a one-line error while trials of the sweep stay failed."""
    failed = engine.unretried_failures(optuna_study)
    if failed:
        first, them = failed[0], "it" if len(failed) == 1 else "them"
        count = "1 trial" if len(failed) == 1 else f"{len(failed)} trials"
        raise CnnlabError(f"sweep {name}: {count} failed (trial {first.number}, "
                          f"{first.user_attrs.get('run', 'no run')}: {failure(first)}); fix "
                          f"the cause and run the same command again to retry {them}")


def failure(trial: FrozenTrial) -> str:
    """Why a failed trial failed, in one line."""
    error = trial.user_attrs.get("error")
    return (error.splitlines()[0] if error
            else f"its workers died {engine.MAX_RETRIES + 1} times in a row")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
