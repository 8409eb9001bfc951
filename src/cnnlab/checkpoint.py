"""Checkpoints: the parts of a run as tensors and plain data only, so they load with
`torch.load(weights_only=True)` and never run code. A run's last.pt holds everything a
resume needs; its model.pt only the weights it reports, in the same format."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write
from cnnlab.recipe import Recipe
from cnnlab.runs import RunFolder

FORMAT = "cnnlab-checkpoint-v2"
# Written before recipes existed: a flat preset config, no averaged weights.
LEGACY_FORMAT = "cnnlab-checkpoint-v1"


def save_checkpoint(path: Path, parts_state: dict[str, Any], epoch: int, recipe: Recipe,
                    metrics: list[dict[str, Any]]) -> None:
    state = {"format": FORMAT, "epoch": epoch, "recipe": recipe.to_dict(), "metrics": metrics,
             **parts_state}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a cnnlab checkpoint safely: plain data and tensors only, never code."""
    path = Path(path)
    if path.is_dir():
        path = RunFolder(path).model_source
    if not path.is_file():
        raise CnnlabError(f"{path}: no such checkpoint; give a run folder or a .pt file")
    try:
        with warnings.catch_warnings():  # torch warns of a foreign pickle; the error says more
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        # torch's words for a pickled class or function (a foreign file: unsupported operand)
        if any(word in str(e).lower() for word in ("unsupported global", "allowlisted")):
            reason = "it holds Python objects, not just tensors; refusing to run its code"
        else:
            reason = "not a PyTorch checkpoint file, or a truncated or damaged one"
        raise CnnlabError(f"{path} is not a loadable cnnlab checkpoint: {reason}") from e
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (no '{FORMAT}' marker)")
    _refuse_damaged(path, state)
    state.setdefault("averaged", None)
    return state


def _refuse_damaged(path: Path, state: dict[str, Any]) -> None:
    """A checkpoint with the marker but without what every reader takes from it (edited, or
    written by something else) is refused here rather than failing deep inside a command."""
    model = state.get("model")
    checks = (
        (isinstance(model, dict) and all(isinstance(v, torch.Tensor) for v in model.values()),
         "its 'model' is not a table of tensors"),
        (isinstance(state.get("epoch"), int), "its 'epoch' is not a whole number"),
        (isinstance(state.get("metrics"), list), "its 'metrics' is not a list"),
    )
    for ok, wrong in checks:
        if not ok:
            raise CnnlabError(f"{path} is a damaged cnnlab checkpoint ({wrong}); "
                              "use another checkpoint of the run or train it again")


def save_model(path: Path, state: dict[str, Any]) -> None:
    """Write the weights `state` (a checkpoint's contents) reports, with its epoch, recipe
    and metrics but no optimizer, schedule or average bookkeeping: a finished run's model.pt,
    a third of last.pt's size for an Adam-trained network, which `load_checkpoint` reads as
    it reads last.pt."""
    model = {"format": state.get("format", FORMAT), "model": inference_weights(state),
             **{k: state[k] for k in ("epoch", "recipe", "config", "metrics") if k in state}}
    atomic_write(path, lambda f: torch.save(model, f))


def inference_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a recipe reports: its weight average when it keeps one."""
    averaged = state.get("averaged")
    if averaged is None:
        return state["model"]
    return {k.removeprefix("module."): v for k, v in averaged.items() if k.startswith("module.")}
