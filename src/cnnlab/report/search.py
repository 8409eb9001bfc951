"""The report of a search sweep: best trials, the objective against each parameter, and
parameter importances.

It is given the trials as plain dicts (trial, state, value, params, epochs, run), so it needs
neither Optuna nor the sweep's storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.files import make_folder
from cnnlab.report.document import Document
from cnnlab.report.figures import search_figure

BEST_SHOWN = 10


def build_search_report(sweep_dir: Path, name: str, trials: list[dict[str, Any]],
                        log_params: dict[str, bool], importances: dict[str, float] | None,
                        metric: str, direction: str, command: str) -> tuple[Path, Path]:
    """SWEEP.md and sweep.html of a search: best trials, the objective against each
    parameter, parameter importances."""
    figures_dir = sweep_dir / "figures"
    make_folder(figures_dir, "the figures folder")
    doc = Document(figures_dir)
    title = f"Sweep {name}: search"
    doc.heading(1, title)
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    counts = ", ".join(f"{sum(t['state'] == s for t in trials)} {s.lower()}"
                       for s in sorted({t["state"] for t in trials}))
    doc.para(f"{len(trials)} trials ({counts}). The objective, {metric}, is measured on the "
             "validation split at the final epoch (pruned trials: at the epoch they were "
             "stopped); the test set plays no part in the choice.")
    doc.heading(2, "Best trials")
    doc.table(*best_trials_table(trials, log_params, metric, direction))
    if finished:
        doc.heading(2, "The objective against each parameter")
        doc.figure("search-params.png", search_figure(finished, log_params, metric),
                   f"{metric} against each searched parameter (hollow: pruned)")
    doc.heading(2, "Parameter importances")
    if importances:
        doc.table(["parameter", "importance"],
                  [[k, f"{v:.3f}"] for k, v in importances.items()])
        doc.para("PED-ANOVA importances (Optuna): how much each parameter's distribution "
                 "differs between the best trials and all trials.")
    else:
        doc.para("Not enough finished trials to estimate importances.")
    doc.heading(2, "Command")
    doc.code(command)
    return doc.write(sweep_dir / "SWEEP.md", sweep_dir / "sweep.html", title)


def best_trials_table(trials: list[dict[str, Any]], log_params: dict[str, bool], metric: str,
                      direction: str) -> tuple[list[str], list[list[str]]]:
    """The best complete trials, best first: objective, parameters, epochs, run folder."""
    complete = sorted((t for t in trials if t["state"] == "COMPLETE"),
                      key=lambda t: t["value"], reverse=direction == "maximize")
    return (["trial", metric, *log_params, "epochs", "run folder"],
            [[str(t["trial"]), f"{t['value']:.4f}",
              *(f"{t['params'][k]:.4g}" if isinstance(t["params"][k], float)
                else str(t["params"][k]) for k in log_params),
              str(t["epochs"]), t["run"] or ""] for t in complete[:BEST_SHOWN]])
