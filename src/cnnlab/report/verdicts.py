"""The study report's written findings, each computed from the runs (none written in)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data import CLASSES
from cnnlab.errors import CnnlabError
from cnnlab.recipe import STUDY_ORDER, Recipe, builtin, changed_settings, list_builtin
from cnnlab.report.tables import mean_final, trained_as_study
from cnnlab.runs import CHANCE_BAND, Run, load_runs
from cnnlab.stats import sample_std, welch_interval, wilson_interval

ABLATION = ("custom", "custom_nobn", "custom_nobn_lr1e-3")


# --------------------------------------------------------------------------- results

def band_verdict(name: str, runs: list[Run]) -> str | None:
    """Whether the final accuracy lands within the recipe's tolerance of the study's."""
    study_spec = runs[0].recipe.study
    tolerance = study_spec.tolerance
    if tolerance is None or not trained_as_study(runs):
        return None
    study, ours = 100 * study_spec.accuracy, 100 * mean_final(runs)
    inside = abs(ours - study) <= tolerance
    return (f"{name}: {ours:.2f}% is {'within' if inside else 'OUTSIDE'} ±{tolerance} "
            f"points of the study's {study:.1f}%"
            + ("." if all(r.complete for r in runs) else " (run incomplete)."))


def results_notes(groups: dict[str, list[Run]]) -> list[str]:
    notes = [v for name, runs in groups.items() if (v := band_verdict(name, runs))]
    if any(name in STUDY_ORDER for name in groups):
        notes += [f"{name}: no run of this study recipe in this folder yet."
                  for name in STUDY_ORDER if name not in groups]
    for recipe, runs in groups.items():
        notes += [note for r in runs for note in run_notes(r)]
        if mixed := mixed_settings_note(recipe, runs):
            notes.append(mixed)
        limits = {(r.recipe.limit_train, r.recipe.limit_test) for r in runs}
        for train_n, test_n in sorted(limits, key=str):
            if train_n or test_n:
                notes.append(f"{recipe}: trained on {train_n or 'all'} training images and "
                             f"tested on {test_n or 'all'} test images, so its accuracy is not "
                             "comparable with the study's.")
    return notes


def mixed_settings_note(name: str, runs: list[Run]) -> str | None:
    """Runs grouped under one name but trained otherwise (a recipe changed between them):
    their mean and spread would silently mix two recipes."""
    first = runs[0]
    differ = {run.path.name: sorted(set(changed_settings(run.recipe, first.recipe))
                                    - {"seed", "limit_train", "limit_test"})
              for run in runs[1:]}
    differ = {folder: keys for folder, keys in differ.items() if keys}
    if not differ:
        return None
    keys = sorted({k for keys in differ.values() for k in keys})
    return (f"{name}: {', '.join(sorted(differ))} trained with other settings than "
            f"{first.path.name} ({', '.join(keys)}), so its figures mix two recipes; "
            "keep the runs of one version of a recipe per folder.")


def run_notes(run: Run) -> list[str]:
    """What a reader must know about one run: that it collapsed, or is unfinished."""
    notes = []
    if run.collapsed:
        notes.append(f"{run.path.name} did not learn: final test accuracy "
                     f"{100 * run.final_acc:.2f}% where chance is "
                     f"{100 / len(CLASSES):.0f}% (final train loss "
                     f"{run.metrics[-1]['train_loss']:.3f}; ln 10 = 2.303). It counts in "
                     f"the means and spreads.")
    if not run.complete:
        notes.append(f"{run.path.name} is incomplete: {len(run.metrics)} of "
                     f"{run.planned_epochs} epochs; its last finished epoch counts as final.")
    return notes


# --------------------------------------------------------------------------- the BatchNorm ablation

def ablation_text(groups: dict[str, list[Run]]) -> list[str]:
    """The BatchNorm ablation's findings, computed from the runs (no written-in verdicts)."""
    present = [name for name in ABLATION if name in groups]
    if len(present) < 2:
        return [f"Comparison skipped: needs at least two of {', '.join(ABLATION)}; "
                f"this study has {', '.join(present) or 'none'}."] + collapse_text(groups,
                                                                                   present)
    return ([difference_text(groups, present), volatility_text(groups, present)]
            + collapse_text(groups, present))


def difference_text(groups: dict[str, list[Run]], present: list[str]) -> str:
    """custom's final accuracy minus each no-BN recipe's, over the runs that learned, with a
    95 % Welch interval over seeds. A collapsed run ends at chance whatever the recipe, so
    averaging it in would restate the collapse rate (reported apart, with its own interval)
    and give a mean that no run reached."""
    if "custom" not in present:
        return ("The accuracy comparison needs custom (the network with BatchNorm) beside the "
                "recipes without it; this study has no custom run.")
    learned = {name: [100 * r.final_acc for r in groups[name] if not r.collapsed]
               for name in present}
    verdicts = [difference_verdict("custom", other, learned)
                for other in present if other != "custom"]
    return ("Final test accuracy with BatchNorm minus without, over the runs that learned "
            "(the collapsed runs are left out here and counted in the collapse rates below), "
            "with a 95% Welch interval over seeds: " + "; ".join(verdicts) + ".")


def difference_verdict(base: str, other: str, learned: dict[str, list[float]]) -> str:
    """One comparison, worded from its interval: a lead the interval bounds away from 0,
    or no difference that these seeds can resolve."""
    a, b = learned[base], learned[other]
    if not a or not b:
        return (f"{base} against {other} cannot be compared: "
                f"no {base if not a else other} run learned")
    means = (f"{base} {statistics.mean(a):.2f}% ({runs_count(a)}) minus {other} "
             f"{statistics.mean(b):.2f}% ({runs_count(b)}) is "
             f"{statistics.mean(a) - statistics.mean(b):+.2f} points")
    interval = welch_interval(a, b)
    if interval is None:
        return (f"{means}, with no interval: {base if len(a) < 2 else other} has only one run "
                "that learned, and an interval needs two of each")
    diff, low, high, df = interval
    if low > 0:
        verdict = f"{base} is better by {low:.2f} to {high:.2f} points"
    elif high < 0:
        verdict = f"{base} is worse by {-high:.2f} to {-low:.2f} points"
    else:
        verdict = "no difference this many seeds can resolve"
    return f"{means} (95% interval {low:+.2f} to {high:+.2f}; Welch df {df:.1f}): {verdict}"


def runs_count(values: list[float]) -> str:
    return f"{len(values)} run{'s' * (len(values) != 1)}"


def volatility(run: Run) -> float | None:
    """How erratic the test loss is: std of its epoch-to-epoch changes."""
    changes = np.diff([r["test_loss"] for r in run.evaluated])
    return sample_std(changes.tolist())


def volatility_text(groups: dict[str, list[Run]], present: list[str]) -> str:
    """Each recipe's test-loss volatility over its seeds, and whether it exceeds custom's."""
    vol = {}
    for name in present:
        # A collapsed run's test loss is flat, which would pass for stable training.
        trained = [r for r in groups[name] if not r.collapsed]
        values = [v for v in map(volatility, trained) if v is not None]
        vol[name] = statistics.mean(values) if values else None
    listed = "; ".join(f"{name} {v:.4f}" if v is not None else
                       f"{name} n/a (needs 3 epochs of a run that learned)"
                       for name, v in vol.items())
    sentence = ("Test-loss volatility, the standard deviation of epoch-to-epoch test-loss "
                f"changes (mean over the seeds that learned): {listed}.")
    base = vol.get("custom")
    verdicts = [f"{name}'s test loss is {'more' if v > base else 'not more'} erratic than "
                f"custom's ({v / base:.1f}×)"
                for name, v in vol.items() if name != "custom" and v is not None] if base else []
    return " ".join([sentence, "; ".join(verdicts) + "." if verdicts else
                     "A comparison with BatchNorm needs custom with 3 or more epochs."])


def collapse_text(groups: dict[str, list[Run]], present: list[str]) -> list[str]:
    """How often each recipe's runs collapsed to chance, with a 95 % interval, and when."""
    text = []
    for name in present:
        runs = groups[name]
        collapsed = [r for r in runs if r.collapsed]
        trained = [r for r in runs if not r.collapsed]
        low, high = wilson_interval(len(collapsed), len(runs))
        when = ", ".join(f"{r.path.name} from epoch {chance_from(r)}" for r in collapsed)
        text.append(f"{len(collapsed)} of {len(runs)} {name} runs did not learn"
                    + (f" (at chance level to the end: {when})" if collapsed else "")
                    + f"; collapse rate {100 * len(collapsed) / len(runs):.0f}% (95% Wilson "
                    f"interval {100 * low:.0f}–{100 * high:.0f}%); "
                    + (f"the runs that did reached {100 * mean_final(trained):.2f}% on average."
                       if trained else "none learned."))
    return text


def chance_from(run: Run) -> int:
    """The first epoch of the run's final stretch at chance level."""
    epoch = run.metrics[-1]["epoch"]
    for row in reversed(run.evaluated):
        if row["test_acc"] >= CHANCE_BAND:
            break
        epoch = row["epoch"]
    return epoch


def more_seeds_text(folder: Path) -> list[str]:
    """Collapse rates of the ablation recipes over the finished runs of another folder (a
    sweep over many seeds, often of fewer epochs): reported beside the study's, not mixed in."""
    groups, _ = load_runs(folder)
    present = [name for name in ABLATION if name in groups]
    if not present:
        raise CnnlabError(f"{folder / 'runs'} holds no run of {', '.join(ABLATION)}; give a "
                          "folder of BatchNorm-ablation runs to --collapse-runs")
    finished = {name: [r for r in groups[name] if r.complete] for name in present}
    epochs = sorted({r.planned_epochs for runs in finished.values() for r in runs})
    left = sum(len(groups[n]) - len(finished[n]) for n in present)
    changed = sorted({f"{key}={json.dumps(value)}" for runs in finished.values()
                      for r in runs for key, value in settings_beyond_builtin(r.recipe).items()})
    head = (f"More seeds, from {folder / 'runs'} ({len(sum(finished.values(), []))} finished "
            f"run(s) of {'/'.join(map(str, epochs)) or '—'} epochs"
            + (f"; {left} unfinished run(s) left out" if left else "")
            + (f"; changed from the built-in recipe: {', '.join(changed)}" if changed else "")
            + "):")
    return [head] + collapse_text({n: runs for n, runs in finished.items() if runs},
                                  [n for n in present if finished[n]])


def settings_beyond_builtin(recipe: Recipe) -> dict[str, Any]:
    """The settings in which a run of a built-in recipe departs from it (other than its seed
    and length), so that runs computed another way say so; none for other recipes."""
    if recipe.name not in list_builtin():
        return {}
    return {key: value for key, (_, value) in changed_settings(recipe, builtin(recipe.name)).items()
            if key not in ("seed", "epochs")}
