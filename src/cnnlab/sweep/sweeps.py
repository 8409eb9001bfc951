"""Creating and loading sweeps in a storage.

A sweep is an Optuna study that holds its own definition (a SweepSpec, as a user attribute)
and, from the moment it is created, every trial it will ever run: each grid point once, or N
empty slots for a search, whose parameters the sampler fills in when a worker takes one.
Trials are added later only to run a point again (a failed trial's copy), or by `cnnlab
reproduce --workers`, which adds the points it is asked for and its sweep lacks.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError
from cnnlab.sweep import engine
from cnnlab.sweep.definition import SweepSpec

if TYPE_CHECKING:
    from cnnlab.sweep.engine import Study

SPEC_ATTR = "cnnlab_sweep"


def create_sweep(name: str, storage: Any, spec: SweepSpec) -> int:
    """Create the sweep and enqueue its trials; returns how many."""
    optuna_study = engine.new_study(name, storage, spec.direction)
    if optuna_study is None:
        raise CnnlabError(f"a sweep named {name!r} already exists in this storage; choose "
                          "another name")
    optuna_study.set_user_attr(SPEC_ATTR, asdict(spec))
    points = spec.points() if spec.kind == "grid" else [{}] * spec.trials
    for point in points:
        optuna_study.enqueue_trial(point)
    return len(points)


def load_sweep(name: str, storage: Any) -> tuple[Study, SweepSpec]:
    """The sweep's Optuna study and its definition."""
    optuna_study = engine.load_study(name, storage)
    if optuna_study is None:
        names = engine.study_names(storage)
        raise CnnlabError(f"no sweep named {name!r} in this storage (it holds: "
                          f"{', '.join(names) or 'none'}); create it with `cnnlab sweep "
                          "create`")
    if SPEC_ATTR not in optuna_study.user_attrs:
        raise CnnlabError(f"study {name!r} was not created by `cnnlab sweep create`")
    return optuna_study, stored_spec(optuna_study)


def stored_spec(optuna_study: Study) -> SweepSpec:
    """The definition as stored now (a grid may have grown since a worker started)."""
    return SweepSpec(**optuna_study.user_attrs[SPEC_ATTR])


def ensure_sweep(name: str, storage: Any, spec: SweepSpec) -> None:
    """Create the grid sweep, or add to the existing one the points of `spec` it lacks
    (more seeds or recipes: a rerun with more)."""
    if name not in engine.study_names(storage):
        create_sweep(name, storage, spec)
        return
    optuna_study, stored = load_sweep(name, storage)
    spec = SweepSpec(**json.loads(json.dumps(asdict(spec))))  # as it would be stored
    merged = stored.merged_with(spec)
    if merged is None:
        raise CnnlabError(f"the sweep {name!r} in this storage was created with other "
                          "settings; use another --out or sweep name")
    if merged != stored:
        optuna_study.set_user_attr(SPEC_ATTR, asdict(merged))
    # Queued by what the trials hold, so that a command stopped halfway is mended by a rerun.
    queued = {point_key(engine.queued_params(t)) for t in engine.trials(optuna_study)}
    for point in spec.points():
        if point_key(point) not in queued:
            optuna_study.enqueue_trial(point)


def point_key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)
