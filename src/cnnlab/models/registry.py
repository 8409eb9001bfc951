"""The model registry: every network is a name mapped to a factory that takes keyword
arguments; a user's own network comes from a file or module they name explicitly."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError

Factory = Callable[..., nn.Module]
_MODELS: dict[str, Factory] = {}
IMAGE_SIZE = 28
NUM_CLASSES = 10


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make `fn(**kwargs)` available as `get_model(name, **kwargs)`."""
    def decorate(fn: Factory) -> Factory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn
    return decorate


def list_models() -> list[str]:
    return sorted(_MODELS)


def is_user_code(name: str) -> bool:
    """`my_nets.py:TinyResNet` or `package.module:factory`, not a registry name."""
    return ":" in name


def code_of(name: str) -> str:
    """The source a user-code name imports: `my_nets.py` of `my_nets.py:TinyResNet`."""
    return name.rsplit(":", 1)[0]


def same_code(given: str, named: str) -> bool:
    """Whether --model-code `given` is the source `named`: the same file (paths compared
    resolved) or the same module."""
    if given.endswith(".py") and named.endswith(".py"):
        return Path(given).expanduser().resolve() == Path(named).expanduser().resolve()
    return given == named


def trusted_code(name: str, origin: str, given: str | None) -> str | None:
    """The code a model named in `origin` (a recipe file, a sweep) may import: only the
    code this command line names again with --model-code. A recipe file is data that may
    come from anyone; importing the code it names would run that code, so naming it is
    not enough, exactly as for a run folder or a checkpoint."""
    if not is_user_code(name):
        return given
    named = code_of(name)
    if given is None or not same_code(given, named):
        instead = "" if given is None else f", not --model-code {given}"
        raise CnnlabError(f"{origin} names code {name}{instead}; running it imports that "
                          f"file: pass --model-code {named} if you trust it")
    return given


def factory_of(name: str, code: str | None = None) -> Factory:
    """The factory behind a model name. A user-code name is imported only from `code`, the
    source the user named in this command (the part before ':' of the name, or the file
    given with --model-code); never merely because a recipe or checkpoint mentions it."""
    if not is_user_code(name):
        try:
            return _MODELS[name]
        except KeyError:
            raise CnnlabError(f"unknown model {name!r}; choose one of: "
                              f"{', '.join(list_models())}, or name your own as "
                              "FILE.py:FACTORY or package.module:FACTORY") from None
    if code is None:
        raise CnnlabError(f"model {name!r} is user code; cnnlab does not import code because "
                          "a run folder or checkpoint names it: pass --model-code "
                          f"{code_of(name)} to load it")
    module = _import_user_module(code)
    attribute = name.rsplit(":", 1)[1]
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CnnlabError(f"{code} has no callable {attribute!r}; name a function or class "
                          "that returns an nn.Module")
    return factory


def _import_user_module(code: str) -> Any:
    try:
        if code.endswith(".py"):
            path = Path(code).expanduser().resolve()
            if not path.is_file():
                raise CnnlabError(f"model code {code}: no such file")
            name = f"cnnlab_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(code)
    except CnnlabError:
        raise
    except Exception as e:  # any error in the user's module: say where, not a traceback
        raise CnnlabError(f"model code {code} failed to import: {type(e).__name__}: {e}") from e


def check_model_args(name: str, factory: Factory, args: dict[str, Any]) -> None:
    """Refuse arguments the factory does not take, naming the ones it does."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    unknown = [a for a in args if a not in valid]
    if unknown:
        raise CnnlabError(f"model.args.{unknown[0]}: not an argument of model {name!r}; "
                          f"valid: {', '.join(valid) or 'none'}")


def create_model(name: str, args: dict[str, Any] | None = None,
                 code: str | None = None) -> nn.Module:
    """Build the network `name` with keyword `args`, checked to be a 10-class classifier
    of 1×28×28 images."""
    args = args or {}
    factory = factory_of(name, code)
    check_model_args(name, factory, args)
    try:
        model = factory(**args)
    except (TypeError, ValueError) as e:
        raise CnnlabError(f"model {name!r} with args {args}: {e}") from e
    if not isinstance(model, nn.Module):
        raise CnnlabError(f"model {name!r} returned {type(model).__name__}, not an nn.Module")
    if is_user_code(name):
        with torch.no_grad():
            was_training = model.training
            out = model.eval()(torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE))
            model.train(was_training)
        if tuple(getattr(out, "shape", ())) != (2, NUM_CLASSES):
            raise CnnlabError(f"model {name!r} maps a batch of 2 images of 1×28×28 to "
                              f"{tuple(getattr(out, 'shape', ()))}; it must return (2, 10) "
                              "logits")
    return model


def get_model(name: str, **args: Any) -> nn.Module:
    """A registered network (no user code)."""
    return create_model(name, args)


def fit_to_data(model: nn.Module, images: torch.Tensor) -> None:
    """Let layers whose weights come from the data (those with a `fit_to_data(images)`
    method, like speednet's whitening stem) set them, before the first training step.
    `images`: normalized training images (N, 1, 28, 28)."""
    for module in model.modules():
        if callable(fit := getattr(module, "fit_to_data", None)):
            fit(images)


def start_epoch(model: nn.Module, epoch: int) -> None:
    """Tell layers that change between epochs (those with a `start_epoch(epoch)` method, like
    speednet's whitening stem, whose bias may be frozen after some epochs) that `epoch`
    (counted from 1) begins; called before its first step, so a resumed run repeats it."""
    for module in model.modules():
        if callable(begin := getattr(module, "start_epoch", None)):
            begin(epoch)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextmanager
def plain_path(model: nn.Module) -> Iterator[None]:
    """Run `model` layer by layer: switch off exact fast paths (modules that have one
    expose a boolean `fused_stem`) for the duration."""
    fused = [m for m in model.modules() if getattr(m, "fused_stem", False)]
    for m in fused:
        m.fused_stem = False
    try:
        yield
    finally:
        for m in fused:
            m.fused_stem = True


def count_macs(model: nn.Module, image_size: int = IMAGE_SIZE) -> int:
    """Multiply-accumulates of one forward pass on one image, counted by torch's
    FlopCounterMode in the plain network (convolutions and matrix products; pooling,
    norms and activations are free)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), plain_path(model), counter:
            model(torch.zeros(1, 1, image_size, image_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
