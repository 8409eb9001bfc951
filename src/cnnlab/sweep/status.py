"""Where a sweep stands: one record per trial (state, values, run folder, worker, epochs
done), their counts, and the report of a search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.runs import RunFolder
from cnnlab.sweep import engine
from cnnlab.sweep.definition import SweepSpec

if TYPE_CHECKING:
    from cnnlab.sweep.engine import Study


def trial_rows(optuna_study: Study, sweep_dir: Path) -> list[dict[str, Any]]:
    """One record per trial: state, values, run folder, worker, epochs done."""
    rows = []
    for t in engine.trials(optuna_study):
        run = t.user_attrs.get("run")
        folder = RunFolder(sweep_dir / "runs" / run) if run else None
        epochs = len(folder.read_metrics()) if folder and folder.metrics_path.is_file() else 0
        # A requeued trial inherits its dead worker's attrs; only a taken one has a worker.
        taken = t.state.name != "WAITING"
        worker = (taken and t.user_attrs.get("worker")) or [None, None]
        params = engine.queued_params(t)
        rows.append({"trial": t.number, "state": t.state.name,
                     "params": {k: params[k] for k in sorted(params)},
                     "value": t.value, "run": str(folder.path) if folder else None,
                     "epochs": epochs,
                     "host": f"{worker[0]}:{worker[1]}" if worker[0] else None,
                     "retry_of": engine.retry_of(t),
                     "error": t.user_attrs.get("error")})
    return rows


def state_counts(rows: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))


def status_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)


def write_search_report(optuna_study: Study, spec: SweepSpec, sweep_dir: Path,
                        command: str) -> tuple[Path, Path]:
    from cnnlab.report.search import build_search_report

    importances = engine.param_importances(optuna_study)
    log_params = {k: p["kind"] == "log" for k, p in spec.params.items()}
    return build_search_report(sweep_dir, optuna_study.study_name,
                               trial_rows(optuna_study, sweep_dir), log_params, importances,
                               spec.metric, spec.direction, command)
