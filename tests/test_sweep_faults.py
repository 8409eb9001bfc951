"""Sweeps under faults, on real storages: a PostgreSQL server stopped and started in the middle
of a sweep, a disk that fills up during a checkpoint, two `sweep create` racing for one
name, a journal file torn by a crash. Each test sizes its trials as small as its fault
allows; the ones that stop the server are self-contained (they restart it themselves)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import cnnlab.checkpoint
from cnnlab.checkpoint import load_checkpoint
from cnnlab.cli import main
from cnnlab.errors import CnnlabError, Diverged
from cnnlab.runs import read_metrics
from cnnlab.sweep import outage, worker
from conftest import REPO
from test_sweep import cli, finish, postgres_url, storage, study_name  # noqa: F401  (fixtures)

TINY = ["--set", "limit_train=3000", "--set", "limit_test=200"]


def server(action: str) -> None:
    """Stop or start the test server (Debian's cluster 15/main, as .ci/postgres runs it)."""
    subprocess.run([str(REPO / ".ci/postgres"), action], check=True, capture_output=True)


@pytest.fixture
def restartable(postgres_url: str) -> str:  # noqa: F811
    """The test server, which this test may stop; started again whatever happens."""
    if shutil.which("pg_ctlcluster") is None:
        pytest.skip("stopping the server needs the local cluster that .ci/postgres runs")
    yield postgres_url
    server("start")


def trials(capsys, name: str, storage: str, root: Path) -> list[dict]:  # noqa: F811
    capsys.readouterr()
    assert main(["sweep", "status", name, "--storage", storage, "--runs-root", str(root),
                 "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def wait_for_epochs(folders: list[Path], proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until each run folder has finished one epoch."""
    deadline = time.monotonic() + timeout
    while not all((f / "last.pt").exists() and read_metrics(f / "metrics.csv")
                  for f in folders):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the trials never started"
        time.sleep(0.05)


@pytest.mark.postgres
def test_two_workers_ride_out_a_database_restart(restartable: str, tmp_path: Path,
                                                 data_dir: Path, capsys):
    # A short trial and a long one: the short one's worker looks for stale trials as soon
    # as the server is back, while the long one still trains.
    name, root = study_name(), tmp_path / "runs"
    assert main(["sweep", "create", name, "--storage", restartable, "--recipe", "lenet",
                 "--grid", "epochs=8,40 seed=0", *TINY]) == 0
    work = cli("sweep", "work", name, "--storage", restartable, "--runs-root", str(root),
               "--data-dir", str(data_dir), "--workers", "2", "--heartbeat", "1")
    runs = root / name / "runs"
    wait_for_epochs([runs / "lenet-epochs=8-seed0", runs / "lenet-epochs=40-seed0"], work)
    server("stop")
    time.sleep(5)
    server("start")
    out = finish(work)
    assert "Traceback" not in out and "requeued" not in out, out
    assert out.count("storage unreachable (") >= 2 and "storage reachable again" in out, out
    done = trials(capsys, name, restartable, root)
    assert [t["state"] for t in done] == ["COMPLETE", "COMPLETE"], out  # no retries
    for t, epochs in zip(done, (8, 40), strict=True):
        assert [r["epoch"] for r in read_metrics(Path(t["run"]) / "metrics.csv")] == list(
            range(1, epochs + 1))
        assert out.count(f"{Path(t['run']).name}: starting") == 1, "trained exactly once"
    assert "resuming" not in out


@pytest.mark.postgres
def test_an_outage_longer_than_the_retries_stops_the_trial_cleanly(
        restartable: str, tmp_path: Path, data_dir: Path, capsys, monkeypatch):
    monkeypatch.setattr(outage, "PATIENCE_S", 2.0)
    name, root = study_name(), tmp_path / "runs"
    assert main(["sweep", "create", name, "--storage", restartable, "--recipe", "lenet",
                 "--grid", "seed=0", "--set", "epochs=3", *TINY]) == 0
    work = ["sweep", "work", name, "--storage", restartable, "--runs-root", str(root),
            "--data-dir", str(data_dir), "--heartbeat", "1"]
    folder = root / name / "runs" / "lenet-seed0"
    log_epoch = worker.TrialLogger.log_epoch

    def server_gone_after_epoch_1(self, row: dict) -> None:
        """The server stops after the first epoch, and stays away until the heartbeat
        gives up (held here, so that the outage falls inside the trial on any machine)."""
        log_epoch(self, row)
        if row["epoch"] == 1:
            server("stop")
            deadline = time.monotonic() + 60
            while self.worker.lost is None:
                assert time.monotonic() < deadline, "the heartbeat never gave up"
                time.sleep(0.1)

    monkeypatch.setattr(worker.TrialLogger, "log_epoch", server_gone_after_epoch_1)
    capsys.readouterr()
    assert main(work) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("cnnlab: error: the sweep's storage has been unreachable for 2 s")
    assert "run `cnnlab sweep work` again" in err[-1] and not any("Traceback" in e for e in err)
    assert load_checkpoint(folder)["epoch"] == 1 and len(read_metrics(folder / "metrics.csv")) == 1
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "no half-written file"
    server("start")
    monkeypatch.setattr(worker.TrialLogger, "log_epoch", log_epoch)

    assert main(work) == 0  # after a grace period of the server's uptime: requeued, resumed
    assert "trial 1 lenet-seed0: resuming after epoch 1" in capsys.readouterr().err
    states = [t["state"] for t in trials(capsys, name, restartable, root)]
    assert states == ["FAIL", "COMPLETE"]
    assert [r["epoch"] for r in read_metrics(folder / "metrics.csv")] == [1, 2, 3]


def test_a_full_disk_during_a_checkpoint_requeues_the_trial(tmp_path: Path, data_dir: Path,
                                                            capsys, monkeypatch):
    storage, root, name = str(tmp_path / "s.journal"), tmp_path / "runs", "full"  # noqa: F811
    assert main(["sweep", "create", name, "--storage", storage, "--recipe", "lenet",
                 "--grid", "seed=0", "--set", "epochs=2", *TINY]) == 0
    real_write, saves = cnnlab.checkpoint.atomic_write, []

    def full_at_the_second_save(path: Path, write) -> None:
        saves.append(path)
        if len(saves) != 2:
            return real_write(path, write)

        def half_then_full(f) -> None:
            f.write(b"\0" * 4096)  # part of the checkpoint reached the disk
            raise OSError(errno.ENOSPC, "No space left on device")

        return real_write(path, half_then_full)

    monkeypatch.setattr(cnnlab.checkpoint, "atomic_write", full_at_the_second_save)
    work = ["sweep", "work", name, "--storage", storage, "--runs-root", str(root),
            "--data-dir", str(data_dir)]
    capsys.readouterr()
    assert main(work) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("cnnlab: error: the disk of ") and "trial 0 is requeued" in err[-1]
    assert any("trial 0 requeued: cannot write" in e and "No space left" in e for e in err)
    folder = root / name / "runs" / "lenet-seed0"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    assert load_checkpoint(folder)["epoch"] == 1, "the last checkpoint is whole"
    assert [t["state"] for t in trials(capsys, name, storage, root)] == ["FAIL", "WAITING"]

    monkeypatch.undo()  # space freed
    assert main(work) == 0
    assert "trial 1 lenet-seed0: resuming after epoch 1" in capsys.readouterr().err
    assert [t["state"] for t in trials(capsys, name, storage, root)] == ["FAIL", "COMPLETE"]
    assert [r["epoch"] for r in read_metrics(folder / "metrics.csv")] == [1, 2]


def test_two_creates_racing_for_one_name_give_one_sweep(storage: str, capsys):  # noqa: F811
    name = study_name()
    racers = [cli("sweep", "create", name, "--storage", storage, "--recipe", "lenet",
                  "--grid", "seed=0..3") for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in racers]
    assert sorted(p.returncode for p in racers) == [0, 2], outs
    lost = outs[[p.returncode for p in racers].index(2)]
    assert lost == (f"cnnlab: error: a sweep named '{name}' already exists in this storage; "
                    "choose another name\n")
    assert [t["state"] for t in trials(capsys, name, storage, Path("runs"))] == ["WAITING"] * 4


def test_a_journal_torn_by_a_crash_is_mended_and_loses_no_finished_trial(
        tmp_path: Path, data_dir: Path, capsys):
    journal, root, name = tmp_path / "s.journal", tmp_path / "runs", "torn"
    assert main(["sweep", "create", name, "--storage", str(journal), "--recipe", "lenet",
                 "--grid", "seed=0..1", "--set", "epochs=1", *TINY]) == 0
    work = ["sweep", "work", name, "--storage", str(journal), "--runs-root", str(root),
            "--data-dir", str(data_dir)]
    finish(cli(*work))
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-25])  # the crash: the last record (trial 1's end) half-written
    torn = journal.read_bytes()

    capsys.readouterr()
    assert main(["sweep", "status", name, "--storage", str(journal), "--json"]) == 0
    seen = capsys.readouterr()
    assert "its last record was cut off by a crash" in seen.err
    states = [t["state"] for t in json.loads(seen.out)]
    assert states == ["COMPLETE", "RUNNING"]  # trial 1's end is gone, with its worker
    [backup] = tmp_path.glob("s.journal.torn-*")
    assert backup.read_bytes() == torn and journal.read_bytes().endswith(b"\n")
    out = finish(cli(*work))
    assert "trial 1 requeued" in out and "trial 2 lenet-seed1: finished earlier" in out, out
    done = trials(capsys, name, str(journal), root)
    assert [t["state"] for t in done] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert done[2]["value"] == pytest.approx(
        read_metrics(root / name / "runs/lenet-seed1/metrics.csv")[-1]["test_acc"])

    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join(lines[:3] + [lines[3][:-5]] + lines[4:]))
    err = trials_error(capsys, name, str(journal))
    assert "journal" in err and "record 4 is damaged" in err and "create the sweep again" in err


def trials_error(capsys, name: str, storage: str) -> str:  # noqa: F811
    capsys.readouterr()
    assert main(["sweep", "status", name, "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err



def test_a_trial_requeued_while_its_worker_lives_is_trained_once(tmp_path: Path,
                                                                 data_dir: Path, capsys,
                                                                 monkeypatch):
    """What a worker cut off from the storage for longer than the grace period meets: its
    live trial failed and requeued by another. The retry waits for the run folder, the first
    worker's late result is not told over the retry's, and the run is trained once."""
    from cnnlab.sweep import engine
    from cnnlab.sweep.storage import open_storage
    from cnnlab.sweep.sweeps import load_sweep

    journal, root, name = str(tmp_path / "s.journal"), tmp_path / "runs", "twice"
    assert main(["sweep", "create", name, "--storage", journal, "--recipe", "lenet",
                 "--grid", "seed=0", "--set", "epochs=3", *TINY]) == 0
    work = ["sweep", "work", name, "--storage", journal, "--runs-root", str(root),
            "--data-dir", str(data_dir)]
    optuna_study, _ = load_sweep(name, open_storage(journal))
    log_epoch, other = worker.TrialLogger.log_epoch, []

    def requeued_by_another_after_epoch_1(self, row: dict) -> None:
        log_epoch(self, row)
        if row["epoch"] != 1:
            return
        failed = engine.fail_running(optuna_study._storage, engine.storage_id(self.trial))
        engine.retry(optuna_study, failed)
        other.append(cli(*work))
        deadline = time.monotonic() + 120
        while not engine.trials(optuna_study, "RUNNING"):  # the other took the retry
            assert other[0].poll() is None and time.monotonic() < deadline
            time.sleep(0.1)

    monkeypatch.setattr(worker.TrialLogger, "log_epoch", requeued_by_another_after_epoch_1)
    capsys.readouterr()
    assert main(work) == 0
    assert "trial 0 was requeued by another worker" in capsys.readouterr().err
    out = finish(other[0])
    assert "lenet-seed0: waiting for" in out and "trial 1 lenet-seed0: finished earlier" in out
    done = trials(capsys, name, journal, root)
    assert [t["state"] for t in done] == ["FAIL", "COMPLETE"]
    rows = read_metrics(root / name / "runs/lenet-seed0/metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and done[1]["value"] == rows[-1]["test_acc"]


def test_a_failed_trial_is_reported_and_run_again_by_the_next_command(
        tmp_path: Path, data_dir: Path, capsys, monkeypatch):
    storage, root, name = str(tmp_path / "s.journal"), tmp_path / "runs", "flaky"  # noqa: F811
    assert main(["sweep", "create", name, "--storage", storage, "--recipe", "lenet",
                 "--grid", "seed=0..1", "--set", "epochs=2", *TINY]) == 0
    folder, error = root / name / "runs" / "lenet-seed1", "cannot read batch 7 (Input/output error)"

    def seed1_fails_in_epoch_2(self, step: int, values: dict) -> None:
        if self.label.endswith("lenet-seed1") and (folder / "last.pt").exists():
            raise CnnlabError(error)

    monkeypatch.setattr(worker.TrialLogger, "log_step", seed1_fails_in_epoch_2)
    work = ["sweep", "work", name, "--storage", storage, "--runs-root", str(root),
            "--data-dir", str(data_dir)]
    capsys.readouterr()
    assert main(work) == 2, "a sweep with a failed trial does not end as a success"
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"cnnlab: error: sweep flaky: 1 trial failed (trial 1, lenet-seed1: "
                       f"{error}); fix the cause and run the same command again to retry it")
    assert not any("Traceback" in e for e in err)
    first = trials(capsys, name, storage, root)
    assert [(t["state"], t["error"]) for t in first] == [("COMPLETE", None), ("FAIL", error)]
    assert main(work) == 2, "queued again while the cause stands, it fails again"
    capsys.readouterr()

    monkeypatch.undo()  # the cause fixed
    assert main(work) == 0
    err = capsys.readouterr().err
    assert f"trial 2 (lenet-seed1) failed earlier ({error}); queued again" in err
    assert "trial 3 lenet-seed1: resuming after epoch 1" in err
    done = trials(capsys, name, storage, root)
    assert [(t["state"], t["retry_of"], t["error"]) for t in done] == [
        ("COMPLETE", None, None), ("FAIL", None, error), ("FAIL", 1, error), ("COMPLETE", 1, None)]
    assert [r["epoch"] for r in read_metrics(folder / "metrics.csv")] == [1, 2]
    assert main(work) == 0
    assert "queued again" not in capsys.readouterr().err, "a retried failure stays settled"
    assert len(trials(capsys, name, storage, root)) == 4


def test_reproduce_with_workers_runs_a_failed_run_again(tmp_path: Path, data_dir: Path, capsys,
                                                        monkeypatch):
    out = tmp_path / "study"
    command = ["reproduce", "--runs", "lenet", "--seeds", "0", "--quick", "--out", str(out),
               "--data-dir", str(data_dir), "--quiet", "--workers", "1"]

    def fails_in_epoch_2(self, step: int, values: dict) -> None:
        if (out / "runs" / "lenet-seed0" / "last.pt").exists():
            raise CnnlabError("cannot read batch 7 (Input/output error)")

    monkeypatch.setattr(worker.TrialLogger, "log_step", fails_in_epoch_2)
    capsys.readouterr()
    assert main(command) == 2
    assert "1 trial failed (trial 0, lenet-seed0" in capsys.readouterr().err
    assert not (out / "REPORT.md").exists(), "no report over a missing run"
    monkeypatch.undo()
    assert main(command) == 0
    assert "lenet-seed0: resuming after epoch 1" in capsys.readouterr().err
    assert "| lenet | 0 |" in (out / "REPORT.md").read_text()


def test_a_diverged_trial_failed_for_good(tmp_path: Path, data_dir: Path, capsys, monkeypatch):
    storage, root, name = str(tmp_path / "s.journal"), tmp_path / "runs", "nan"  # noqa: F811
    assert main(["sweep", "create", name, "--storage", storage, "--recipe", "lenet",
                 "--grid", "seed=0", "--set", "epochs=1", *TINY]) == 0

    def diverges(self, step: int, values: dict) -> None:
        raise Diverged("loss became nan at epoch 1 step 1; training stopped")

    monkeypatch.setattr(worker.TrialLogger, "log_step", diverges)
    work = ["sweep", "work", name, "--storage", storage, "--runs-root", str(root),
            "--data-dir", str(data_dir)]
    assert main(work) == 0, "an outcome of the trial's parameters, not a fault to fix"
    assert main(work) == 0
    assert "queued again" not in capsys.readouterr().err
    [trial] = trials(capsys, name, storage, root)
    assert (trial["state"], trial["error"]) == (
        "FAIL", "loss became nan at epoch 1 step 1; training stopped")


def test_spawned_workers_leave_the_requeue_to_their_command(tmp_path: Path, data_dir: Path,
                                                            capsys):
    storage, root, name = str(tmp_path / "s.journal"), tmp_path / "runs", "k"  # noqa: F811
    assert main(["sweep", "create", name, "--storage", storage, "--recipe", "lenet",
                 "--grid", "seed=0..1", "--set", "epochs=1", *TINY]) == 0
    blocked = root / name / "runs" / "lenet-seed1"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the run folder goes")
    work = ["sweep", "work", name, "--storage", storage, "--runs-root", str(root),
            "--data-dir", str(data_dir), "--workers", "2"]
    for attempt in range(2):  # the second time, the cause stands: one copy, not one per worker
        proc = cli(*work)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 2 and out.splitlines()[-2:] == [
            f"sweep {name}: 1 complete, {attempt + 1} fail; runs in {root / name / 'runs'}",
            f"cnnlab: error: sweep {name}: 1 trial failed (trial {attempt + 1}, lenet-seed1: "
            f"run folder {blocked} is a file; move it away, or choose another folder); fix "
            "the cause and run the same command again to retry it"], out
    assert [t["state"] for t in trials(capsys, name, storage, root)] == [
        "COMPLETE", "FAIL", "FAIL"]
    blocked.unlink()
    finish(cli(*work))
    assert [t["state"] for t in trials(capsys, name, storage, root)] == [
        "COMPLETE", "FAIL", "FAIL", "COMPLETE"]
