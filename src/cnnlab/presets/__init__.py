"""The study's runs as data: one TOML file per preset, every field overridable."""

from __future__ import annotations

import sys
from importlib import resources
from typing import Any

from cnnlab.errors import CnnlabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STUDY_ORDER = ("lenet", "alexnet", "custom", "custom_nobn", "custom_nobn_lr1e-3")


def list_presets() -> list[str]:
    """Preset names, the study's five first in the study's order."""
    names = {p.name.removesuffix(".toml") for p in resources.files(__name__).iterdir()
             if p.name.endswith(".toml")}
    return [n for n in STUDY_ORDER if n in names] + sorted(names - set(STUDY_ORDER))


def load_preset(name: str) -> dict[str, Any]:
    if name not in list_presets():
        raise CnnlabError(f"unknown preset {name!r}; choose one of: {', '.join(list_presets())}")
    with resources.files(__name__).joinpath(f"{name}.toml").open("rb") as f:
        return {"preset": name, **tomllib.load(f)}
