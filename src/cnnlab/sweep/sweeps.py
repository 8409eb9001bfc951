"""Creating and loading sweeps in a storage.

A sweep is an Optuna study that holds its own definition (a SweepSpec, as a user attribute)
and, from the moment it is created, every trial it will ever run: each grid point once, or N
empty slots for a search, whose parameters the sampler fills in when a worker takes one.
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
    return optuna_study, SweepSpec(**optuna_study.user_attrs[SPEC_ATTR])


def ensure_sweep(name: str, storage: Any, spec: SweepSpec) -> None:
    """Create the sweep, or accept an existing one with the same definition (a rerun)."""
    if name not in engine.study_names(storage):
        create_sweep(name, storage, spec)
    elif asdict(load_sweep(name, storage)[1]) != json.loads(json.dumps(asdict(spec))):
        raise CnnlabError(f"the sweep {name!r} in this storage was created with other "
                          "settings; use another --out or sweep name")
