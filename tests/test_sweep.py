"""The sweep engine on real storages: a journal file and a real PostgreSQL server, real worker
processes, real training runs (tiny ones), a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.recipe import builtin
from cnnlab.reproduce import QUICK
from cnnlab.runs import read_metrics
from cnnlab.sweep.definition import grid_spec
from cnnlab.sweep.storage import open_storage
from cnnlab.sweep.sweeps import ensure_sweep
from conftest import REPO, one_line_error

TINY = ["--set", "limit_train=1500", "--set", "limit_test=200"]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server: $CNNLAB_TEST_POSTGRES (set by .ci/run), else started here."""
    url = os.environ.get("CNNLAB_TEST_POSTGRES")
    if not url:
        out = subprocess.run([str(REPO / ".ci/postgres"), "start"], capture_output=True,
                             text=True)
        if out.returncode != 0:
            pytest.fail(f"could not start PostgreSQL with .ci/postgres start: {out.stderr}")
        url = out.stdout.strip()
    return url


@pytest.fixture(params=["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request, tmp_path: Path) -> str:
    if request.param == "journal":
        yield str(tmp_path / "sweep.journal")
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    storage = open_storage(url)
    for name in optuna.get_all_study_names(storage):
        if name.startswith(f"test-{os.getpid()}-"):
            optuna.delete_study(study_name=name, storage=storage)


def study_name() -> str:
    return f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def cli(*argv: str, **kwargs) -> subprocess.Popen:
    """`cnnlab ARGV` in a process of its own, as a user would start it."""
    return subprocess.Popen([sys.executable, "-m", "cnnlab.cli", *argv], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def status(name: str, storage: str, runs_root: Path) -> list[dict]:
    return json.loads(finish(cli("sweep", "status", name, "--storage", storage,
                                 "--runs-root", str(runs_root), "--json")))


def test_two_workers_run_a_grid_exactly_once(storage: str, tmp_path: Path, data_dir: Path):
    name, root = study_name(), tmp_path / "runs"
    assert main(["sweep", "create", name, "--storage", storage, "--recipe", "lenet",
                 "--grid", "optimizer.lr=0.001,0.002 seed=0..1", "--set", "epochs=2",
                 *TINY]) == 0
    queued = status(name, storage, root)
    assert [(t["state"], t["params"]) for t in queued][:2] == [
        ("WAITING", {"optimizer.lr": 0.001, "seed": 0}),
        ("WAITING", {"optimizer.lr": 0.001, "seed": 1})]
    out = finish(cli("sweep", "work", name, "--storage", storage, "--runs-root", str(root),
                     "--workers", "2", "--data-dir", str(data_dir)))
    trials = status(name, storage, root)
    assert [t["state"] for t in trials] == ["COMPLETE"] * 4, out
    folders = sorted(p.name for p in (root / name / "runs").iterdir())
    assert folders == ["lenet-lr=0.001-seed0", "lenet-lr=0.001-seed1", "lenet-lr=0.002-seed0",
                       "lenet-lr=0.002-seed1"]
    assert sorted((t["params"]["optimizer.lr"], t["params"]["seed"]) for t in trials) == [
        (0.001, 0), (0.001, 1), (0.002, 0), (0.002, 1)]
    assert len({t["host"] for t in trials}) == 2, "both workers took trials"
    for t in trials:
        rows = read_metrics(Path(t["run"]) / "metrics.csv")
        assert [r["epoch"] for r in rows] == [1, 2]
        assert t["value"] == pytest.approx(rows[-1]["test_acc"])
        config = json.loads((Path(t["run"]) / "config.json").read_text())
        assert config["threads"] == 1  # 2 cores / 2 workers
        assert config["recipe"]["optimizer"]["lr"] == t["params"]["optimizer.lr"]

    assert main(["sweep", "report", name, "--storage", storage, "--runs-root", str(root),
                 "--data-dir", str(data_dir)]) == 0
    report = (root / name / "REPORT.md").read_text()
    assert "| lenet-lr=0.001 | 0, 1 |" in report and "| lenet-lr=0.002 | 0, 1 |" in report


def test_a_killed_worker_s_trial_is_requeued_and_continues(storage: str, tmp_path: Path,
                                                            data_dir: Path):
    name, root = study_name(), tmp_path / "runs"
    assert main(["sweep", "create", name, "--storage", storage, "--recipe", "lenet",
                 "--grid", "optimizer.lr=0.001,0.002 seed=0..1", "--set", "epochs=4",
                 *TINY]) == 0
    work = ["sweep", "work", name, "--storage", storage, "--runs-root", str(root),
            "--data-dir", str(data_dir), "--heartbeat", "1"]
    victim = cli(*work)
    first = root / name / "runs" / "lenet-lr=0.001-seed0"
    deadline = time.monotonic() + 120
    while not (first / "last.pt").exists() or len(read_metrics(first / "metrics.csv")) < 1:
        assert victim.poll() is None and time.monotonic() < deadline, victim.stdout.read()
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    before = read_metrics(first / "metrics.csv")
    assert 1 <= len(before) < 4, "killed in mid-trial"
    assert [t["state"] for t in status(name, storage, root)][0] == "RUNNING"

    out = finish(cli(*work, "--workers", "2"))
    trials = status(name, storage, root)
    assert sorted(t["state"] for t in trials) == ["COMPLETE"] * 4 + ["FAIL"], out
    retry = next(t for t in trials if t["retry_of"] == 0)
    assert retry["state"] == "COMPLETE" and retry["run"] == str(first)
    assert f"{retry['trial']} lenet-lr=0.001-seed0: resuming after epoch {len(before)}" in out
    after = read_metrics(first / "metrics.csv")
    assert [r["epoch"] for r in after] == [1, 2, 3, 4]
    assert after[:len(before)] == before, "the finished epochs were kept, not retrained"
    assert len(list((root / name / "runs").iterdir())) == 4


def test_a_search_prunes_a_bad_learning_rate_range(tmp_path: Path, data_dir: Path, capsys):
    storage, root, name = str(tmp_path / "s.journal"), tmp_path / "runs", "lr"
    # lr from 1e-4 (slow) to 10 (diverges); with seed 15 the sampler's first ten (random)
    # draws are 0.008, 0.014, 0.00055, 0.0007, 0.014, then 5.6, 0.034, 2.6, 0.0052, 1.3:
    # learning runs first (the median pruner waits for five), then diverging ones.
    assert main(["sweep", "create", name, "--storage", storage, "--recipe", "lenet",
                 "--param", "optimizer.lr=log:1e-4:10", "--trials", "10", "--pruner",
                 "median", "--seed", "15", "--set", "epochs=3", "--set", "split.val=1000",
                 "--set", "limit_train=3000", "--set", "limit_test=200"]) == 0
    assert main(["sweep", "work", name, "--storage", storage, "--runs-root", str(root),
                 "--data-dir", str(data_dir)]) == 0
    trials = status(name, storage, root)
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert pruned and len(pruned) + len(complete) == 10
    for t in pruned:  # marked, folder kept
        assert (Path(t["run"]) / "last.pt").is_file() and t["value"] < 0.3
    assert min(t["epochs"] for t in pruned) < 3, "a trial was stopped before its last epoch"
    assert [f"{t['params']['optimizer.lr']:.2g}" for t in trials] == [
        "0.008", "0.014", "0.00055", "0.0007", "0.014", "5.6", "0.034", "2.6", "0.0052", "1.3"]
    assert {t["trial"] for t in pruned} >= {5, 7, 9}  # lr 5.6, 2.6 and 1.3
    best = max(complete, key=lambda t: t["value"])
    assert best["value"] > 0.4 and 1e-3 < best["params"]["optimizer.lr"] < 0.1
    rows = read_metrics(Path(best["run"]) / "metrics.csv")
    assert best["value"] == pytest.approx(rows[-1]["val_acc"])  # chosen on validation

    capsys.readouterr()
    assert main(["sweep", "report", name, "--storage", storage, "--runs-root", str(root)]) == 0
    report = (root / name / "SWEEP.md").read_text()
    assert f"| {best['trial']} | {best['value']:.4f} |" in report
    assert "| optimizer.lr | 1.000 |" in report
    assert (root / name / "figures" / "search-params.png").stat().st_size > 10_000


def test_reproduce_with_workers_continues_a_sequential_reproduction(tmp_path: Path,
                                                                   data_dir: Path):
    out = tmp_path / "study"
    quick = ["reproduce", "--runs", "lenet", "--quick", "--out", str(out), "--data-dir",
             str(data_dir), "--quiet"]
    assert main([*quick, "--seeds", "0"]) == 0
    seed0 = (out / "runs/lenet-seed0/metrics.csv").read_text()
    log = finish(cli(*quick, "--seeds", "0,1", "--workers", "2"))
    assert "lenet-seed0: finished earlier" in log and "lenet-seed1: starting" in log
    assert (out / "runs/lenet-seed0/metrics.csv").read_text() == seed0
    assert len(read_metrics(out / "runs/lenet-seed1/metrics.csv")) == QUICK["epochs"]
    assert "| lenet | 0, 1 |" in (out / "REPORT.md").read_text()


@pytest.mark.postgres
def test_storage_and_definition_errors_are_one_line(postgres_url: str, tmp_path: Path, capsys):
    journal = str(tmp_path / "j.journal")
    wrong_password = postgres_url.replace(":cnnlab-test@", ":wrong@")
    assert "password authentication failed" in one_line_error(
        capsys, ["sweep", "status", "x", "--storage", wrong_password])
    assert "wrong" not in one_line_error(capsys, ["sweep", "status", "x", "--storage",
                                                  wrong_password])
    unreachable = postgres_url.replace(":5432/", ":1/")
    assert "cannot connect" in one_line_error(
        capsys, ["sweep", "status", "x", "--storage", unreachable])
    assert "no sweep named 'nope'" in one_line_error(
        capsys, ["sweep", "status", "nope", "--storage", postgres_url])
    assert "SQLite" in one_line_error(capsys, ["sweep", "status", "x", "--storage",
                                               f"sqlite:///{tmp_path}/x.db"])
    for argv, expected in [
        (["--grid", "seed=0..x", "--recipe", "lenet"], "a range is two integers"),
        (["--grid", "seed", "--recipe", "lenet"], "expected KEY=V1,V2"),
        (["--grid", "seed=0..2"], "say which recipe"),
        (["--grid", "recipe=lenet,nope"], "unknown recipe 'nope'"),
        (["--grid", "recipe=lenet optimizer.lrr=0.1"], "optimizer.lrr: unknown key"),
        (["--recipe", "lenet", "--param", "optimizer.lr=log:0:1"], "LOW > 0"),
        (["--recipe", "lenet", "--param", "optimizer.lr=lug:1:2"], "expected float:LOW:HIGH"),
        (["--recipe", "lenet", "--param", "optimizer.lr"], "expected KEY=KIND"),
        (["--recipe", "lenet", "--param", "optimizer.lr=log:1e-4:1e-2"], "validation split"),
        (["--recipe", "lenet", "--param", "optimizer.lr=log:1e-4:1e-2", "--set",
          "split.val=100", "--pruner", "sometimes"], "--pruner sometimes"),
    ]:
        assert expected in one_line_error(capsys, ["sweep", "create", "x", "--storage",
                                                   journal, *argv])
    assert main(["sweep", "create", "x", "--storage", journal, "--grid", "recipe=lenet"]) == 0
    capsys.readouterr()
    assert "already exists" in one_line_error(
        capsys, ["sweep", "create", "x", "--storage", journal, "--grid", "recipe=lenet"])


def test_without_optuna_the_sweep_says_how_to_install_it(tmp_path: Path):
    blocker = tmp_path / "optuna.py"
    blocker.write_text("raise ImportError('not installed')\n")
    proc = cli("sweep", "status", "x", env={**os.environ, "PYTHONPATH": str(tmp_path)})
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2
    assert out.strip() == ("cnnlab: error: cnnlab sweep needs Optuna; install it with "
                           "pip install 'cnnlab[sweep]'")


def test_an_unsupported_storage_or_worker_count_is_one_line_and_stores_nothing(
        tmp_path: Path, capsys):
    assert "give a journal file path (one machine) or a postgresql:// URL" in one_line_error(
        capsys, ["sweep", "status", "x", "--storage", "mysql://u:p@localhost/x"])
    out = tmp_path / "study"
    assert "--workers and --heartbeat must be >= 1" in one_line_error(
        capsys, ["reproduce", "--workers", "0", "--runs", "lenet", "--out", str(out)])
    assert not out.exists()  # no journal that a corrected command would then disagree with
    assert "--workers and --heartbeat must be >= 1" in one_line_error(
        capsys, ["sweep", "work", "x", "--storage", str(tmp_path / "s.journal"),
                 "--heartbeat", "0"])
    assert not (tmp_path / "s.journal").exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, no newline")
    assert "is not a journal file (no whole record in it)" in one_line_error(
        capsys, ["sweep", "status", "x", "--storage", str(notes)])
    assert notes.read_text() == "my notes, no newline"


def test_reproduce_with_workers_adds_seeds_to_its_own_sweep(tmp_path: Path, data_dir: Path,
                                                           capsys):
    out = tmp_path / "study"
    quick = ["reproduce", "--runs", "lenet", "--quick", "--out", str(out), "--data-dir",
             str(data_dir), "--quiet", "--workers", "1"]
    assert main([*quick, "--seeds", "0"]) == 0
    seed0 = (out / "runs/lenet-seed0/metrics.csv").read_text()
    capsys.readouterr()
    assert main([*quick, "--seeds", "0,1"]) == 0  # the grid grows by seed 1
    err = capsys.readouterr().err
    assert "lenet-seed1: starting" in err and "lenet-seed0" not in err, "seed 0 is not rerun"
    assert (out / "runs/lenet-seed0/metrics.csv").read_text() == seed0
    assert "| lenet | 0, 1 |" in (out / "REPORT.md").read_text()
    assert [(t["state"], t["params"]) for t in status(out.name, str(out / "sweep.journal"),
                                                      tmp_path)] == [
        ("COMPLETE", {"recipe": "lenet", "seed": 0}), ("COMPLETE", {"recipe": "lenet", "seed": 1})]
    assert main([*quick, "--seeds", "1"]) == 0, "fewer seeds: nothing to queue, nothing rerun"
    assert "starting" not in capsys.readouterr().err
    assert main([*quick[:3], *quick[4:], "--seeds", "0"]) == 2  # without --quick: other --set
    assert "created with other settings" in capsys.readouterr().err


def test_a_reproduction_s_sweep_queues_only_the_runs_asked_for(tmp_path: Path, capsys):
    storage = str(tmp_path / "sweep.journal")
    for grid in ({"recipe": ["lenet"], "seed": [0]}, {"recipe": ["custom"], "seed": [1]}):
        spec = grid_spec(grid, {n: builtin(n) for n in grid["recipe"]}, QUICK)
        ensure_sweep("study", open_storage(storage), spec)
    queued = status("study", storage, tmp_path)
    assert [t["params"] for t in queued] == [{"recipe": "lenet", "seed": 0},
                                            {"recipe": "custom", "seed": 1}]
    spec = grid_spec({"recipe": ["lenet"], "seed": [0]}, {"lenet": builtin("lenet")}, {})
    with pytest.raises(CnnlabError, match="created with other settings"):
        ensure_sweep("study", open_storage(storage), spec)
