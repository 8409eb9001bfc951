"""Recipes as data: every setting of a training run, declared once with its default, its
valid values and its meaning.

A recipe is a TOML file whose tables mirror the dataclasses below. Parsing and
validation, the TOML that `cnnlab recipe show` prints, the key table of the README
(`cnnlab recipe keys`), the command-line flags and `--set KEY=VALUE` all come from these
fields. The built-in recipes live in `cnnlab/recipes/*.toml`; the study's five come first.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cnnlab.augment import STUDY_AUGMENT, TRANSFORMS, parse_transforms
from cnnlab.errors import CnnlabError
from cnnlab.files import is_plain_name
from cnnlab.models import is_user_code
from cnnlab.models.registry import check_model_args, factory_of
from cnnlab.spec import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Each,
    KeyDoc,
    OneOf,
    Range,
    SpecError,
    build,
    documented_keys,
    key,
    to_dict,
    type_name,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Each epoch reseeds from (seed << 20) + epoch (train.epoch_seed), which torch needs below
# 2**64; seeds stop at numpy's bound.
MAX_SEED = 2**32 - 1
STUDY_ORDER = ("lenet", "alexnet", "custom", "custom_nobn", "custom_nobn_lr1e-3")
PER_STEP_SCHEDULES = ("cosine", "onecycle", "linear")


@dataclass
class ModelSpec:
    name: str = key("custom", "a registered network (`cnnlab models`), or your own as "
                    "FILE.py:FACTORY or package.module:FACTORY", flag="--model")
    args: dict[str, Any] = key({}, "keyword arguments of the network's factory, checked "
                               "against its signature (e.g. { fused_stem = false })")
    memory_format: str = key("auto", "activation layout in training: auto (the one "
                             "`cnnlab bench` measured fastest for the network), "
                             "channels_last, or contiguous (NCHW)",
                             OneOf(("auto", "channels_last", "contiguous")))

    def validate(self, path: str) -> None:
        if not is_user_code(self.name):
            check_model_args(self.name, factory_of(self.name), self.args)


@dataclass
class OptimizerSpec:
    name: str = key("adam", "the optimizer; muon: orthogonalised steps for convolution "
                    "filters (at filter_lr), SGD for the rest", OneOf(("adam", "adamw", "sgd",
                                                                        "muon")))
    lr: float = key(0.001, "base learning rate (the peak for onecycle)", POSITIVE,
                    flag="--lr")
    weight_decay: float = key(0.0, "weight decay (L2 for adam and sgd, decoupled for adamw)",
                              NON_NEGATIVE)
    betas: list[float] = key([0.9, 0.999], "adam/adamw: the two moment decay rates",
                             Each(FRACTION, 2))
    momentum: float = key(0.9, "sgd, muon: momentum", FRACTION)
    nesterov: bool = key(False, "sgd, muon: Nesterov momentum")
    filter_lr: float = key(0.05, "muon: learning rate of the convolution filters' "
                           "orthogonalised steps (the schedule scales it with lr)", POSITIVE)
    norm_bias_decay: bool = key(True, "apply weight_decay to norm-layer and bias parameters "
                                "too; false gives them a parameter group without it")
    norm_bias_lr_scale: float = key(1.0, "learning-rate multiplier for norm-layer and bias "
                                    "parameters", POSITIVE)
    fused: bool = key(True, "torch's single-kernel update where it has one (cpu, cuda): "
                      "the same update, measured 15–20 % faster training")

    def validate(self, path: str) -> None:
        if self.name in ("sgd", "muon") and self.nesterov and self.momentum == 0:
            raise SpecError(f"{path}.nesterov = true needs momentum > 0")


@dataclass
class ScheduleSpec:
    name: str = key("constant", "learning-rate schedule: constant; step and multistep "
                    "(stepped per epoch); cosine, linear and onecycle (stepped per batch)",
                    OneOf(("constant", "step", "multistep", "cosine", "linear", "onecycle")))
    step_size: int = key(5, "step: epochs between decays", AT_LEAST_ONE, flag="--step-size")
    gamma: float = key(0.5, "step, multistep: factor applied at each decay", POSITIVE,
                       flag="--gamma")
    milestones: list[int] = key([], "multistep: the epochs after which lr is multiplied "
                                "by gamma", Each(AT_LEAST_ONE))
    warmup_epochs: float = key(0.0, "cosine, linear: linear warm-up over this many epochs "
                               "(per batch) before the decay", NON_NEGATIVE)
    warmup_factor: float = key(0.1, "cosine, linear: lr multiplier at the first warm-up step",
                               Range(0, 1, low_open=True))
    final_lr_factor: float = key(0.0, "cosine, linear: the last step's lr as a fraction of lr",
                                 Range(0, 1))
    pct_start: float = key(0.25, "onecycle: fraction of the steps spent rising to lr",
                           Range(0, 1, low_open=True, high_open=True))
    div_factor: float = key(25.0, "onecycle: the first step's lr is lr / div_factor",
                            Range(1))
    final_div_factor: float = key(1e4, "onecycle: the last step's lr is the first's / "
                                  "final_div_factor", Range(1))
    anneal: str = key("cos", "onecycle: shape of both phases (linear = triangular)",
                      OneOf(("cos", "linear")))

    @property
    def per_step(self) -> bool:
        return self.name in PER_STEP_SCHEDULES


@dataclass
class LossSpec:
    label_smoothing: float = key(0.0, "cross-entropy label smoothing", FRACTION)


@dataclass
class AverageSpec:
    name: str = key("none", "weight averaging: none; ema (an exponential moving average "
                    "of weights and BatchNorm statistics, updated every step); lookahead "
                    "(every `every` steps slow weights move toward the network's, which then "
                    "restarts from them). The average is evaluated and saved in the "
                    "checkpoint", OneOf(("none", "ema", "lookahead")))
    decay: float = key(0.999, "ema: weight kept per step; lookahead: weight the slow weights "
                       "keep at each sync (1 − its alpha)", FRACTION)
    every: int = key(5, "lookahead: steps between syncs", AT_LEAST_ONE)
    start_epoch: int = key(1, "ema, lookahead: first epoch whose steps update the average",
                           AT_LEAST_ONE)
    warmup: bool = key(False, "ema: after n updates keep min(decay, (1 + n) / (10 + n)) per "
                       "step, so that early in a run the average follows the network instead "
                       "of holding its initial weights")


@dataclass
class EvaluateSpec:
    flip: bool = key(False, "test-time flip averaging: the logits of each image and of its "
                     "mirror image are averaged (for validation, test and predictions)")
    shift: int = key(0, "test-time translation averaging: also average the logits of each "
                     "image (and mirror) shifted this many pixels down-right and up-left; "
                     "3× the evaluation cost", Range(0, 4))
    every_epoch: bool = key(True, "evaluate the test (and validation) set after every epoch; "
                            "false: after the last only, as the speed runs time themselves "
                            "(the other epochs' rows leave those columns empty)")


@dataclass
class SplitSpec:
    val: int = key(0, "training images held out for validation (chosen by a fixed seeded "
                   "permutation; evaluated every epoch); 0: no split", NON_NEGATIVE,
                   flag="--val-split")


@dataclass
class StudySpec:
    accuracy: float | None = key(None, "the study's reported test accuracy for this run "
                                 "(study recipes only)", Range(0, 1))
    tolerance: float | None = key(None, "how close a faithful reproduction should come, in "
                                  "percentage points", POSITIVE)


@dataclass
class Recipe:
    name: str = key("recipe", "the recipe's name: runs are grouped by it in reports "
                    "(a file's default: its stem)")
    description: str = key("", "one line for listings")
    epochs: int = key(10, "passes over the training set", AT_LEAST_ONE, flag="--epochs")
    batch_size: int = key(64, "training batch size (the last partial batch is kept)",
                          AT_LEAST_ONE, flag="--batch-size")
    precision: str = key("fp32", "fp32, or bf16 autocast (CUDA, or a CPU with AMX-bf16)",
                         OneOf(("fp32", "bf16")), flag="--precision")
    seed: int = key(0, "initialisation, data order, augmentation and dropout derive from "
                    "(seed, epoch)", Range(0, MAX_SEED), flag="--seed")
    pipeline: str = key("batched", "batched: the whole batch augmented at once, cnnlab's "
                        "data order; per_image: the study's own way, one image at a time "
                        "(torchvision's transforms) through a shuffling DataLoader; slower, "
                        "only with the study's augmentation or none",
                        OneOf(("batched", "per_image")))
    limit_train: int | None = key(None, "run option: train on the first N training images "
                                  "(after the validation split)", AT_LEAST_ONE,
                                  flag="--limit-train")
    limit_test: int | None = key(None, "run option: test on the first N test images",
                                 AT_LEAST_ONE, flag="--limit-test")
    model: ModelSpec = key(ModelSpec(), "")
    optimizer: OptimizerSpec = key(OptimizerSpec(), "")
    schedule: ScheduleSpec = key(ScheduleSpec(), "")
    loss: LossSpec = key(LossSpec(), "")
    augment: list[Any] = key([], "ordered list of batched per-sample transforms, each a "
                             "table with a name: rotate, flip, alternating_flip, translate, "
                             "erase", parse=parse_transforms)
    average: AverageSpec = key(AverageSpec(), "")
    evaluate: EvaluateSpec = key(EvaluateSpec(), "")
    split: SplitSpec = key(SplitSpec(), "")
    study: StudySpec = key(StudySpec(), "")

    def validate(self, path: str) -> None:
        if not is_plain_name(self.name):
            raise CnnlabError(f"name = {self.name!r}: a recipe's name names its run folders "
                              "and figures, so it must be a plain file name (no / or \\)")
        if self.average.name != "none" and self.average.start_epoch > self.epochs:
            raise CnnlabError(f"average.start_epoch = {self.average.start_epoch} is after the "
                              f"last epoch ({self.epochs}): the {self.average.name} average "
                              "would never be updated, and the run would save its untrained "
                              "weights; lower it or raise epochs")
        if self.pipeline == "per_image" and [to_dict(t) for t in self.augment] not in (
                [], STUDY_AUGMENT):
            raise CnnlabError("pipeline per_image performs the study's augmentation (rotate "
                              "10° + flip) or none; set augment to one of those, or use "
                              "pipeline batched")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def with_overrides(self, overrides: dict[str, Any], source: str = "--set") -> Recipe:
        """A new recipe with dotted keys replaced (`{"optimizer.lr": 0.01}`), validated."""
        data = self.to_dict()
        for path, value in overrides.items():
            set_path(data, path, value, source)
        return parse_recipe(data, source)

    @property
    def is_study(self) -> bool:
        return self.study.accuracy is not None


def flat_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A recipe's dict as dotted keys (`optimizer.lr`); a model's args stay one value."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and k != "args":
            out.update(flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(recipe: Recipe, base: Recipe) -> dict[str, tuple[Any, Any]]:
    """Each dotted key whose value differs between `base` and `recipe`: (base's, recipe's)."""
    before, after = flat_settings(base.to_dict()), flat_settings(recipe.to_dict())
    return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)}


def set_path(data: dict[str, Any], path: str, value: Any, source: str) -> None:
    """Set `data[a][b]… = value` for the dotted `path`; unknown sections are refused by
    the validation that follows, except through a non-table value."""
    parts = path.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise CnnlabError(f"{source} {path}: {'.'.join(parts[:i + 1])} is not a table; "
                              "set the whole value instead")
        node = child
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def parse_recipe(data: dict[str, Any], source: str) -> Recipe:
    """Validate a recipe's plain data; errors name the source (file or flag) and the key."""
    try:
        return build(Recipe, data)
    except CnnlabError as e:
        raise CnnlabError(f"{source}: {e}") from None


def parse_value(text: str) -> Any:
    """A `--set` value as TOML (numbers, true/false, [lists], "strings"); anything that is
    not valid TOML is taken as a bare string (`--set schedule.name=cosine`)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items as a dict of dotted keys."""
    out = {}
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not path.strip():
            raise CnnlabError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optimizer.lr=0.01")
        out[path.strip()] = parse_value(text.strip())
    return out


# --------------------------------------------------------------------------- files

def list_builtin() -> list[str]:
    """Built-in recipe names, the study's five first in the study's order."""
    names = {p.name.removesuffix(".toml") for p in _builtin_dir().iterdir()
             if p.name.endswith(".toml")}
    return [n for n in STUDY_ORDER if n in names] + sorted(names - set(STUDY_ORDER))


def _builtin_dir() -> Any:
    return resources.files("cnnlab") / "recipes"


def builtin(name: str) -> Recipe:
    if name not in list_builtin():
        raise CnnlabError(f"unknown recipe {name!r}; choose one of: {', '.join(list_builtin())} "
                          "(or train your own file with --recipe FILE.toml)")
    with _builtin_dir().joinpath(f"{name}.toml").open("rb") as f:
        return parse_recipe({"name": name, **tomllib.load(f)}, f"recipe {name}")


def load_file(path: Path) -> Recipe:
    """A user's recipe file; its name defaults to the file's stem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CnnlabError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CnnlabError(f"{path}: cannot read it ({e})") from e
    except tomllib.TOMLDecodeError as e:
        raise CnnlabError(f"{path}: not valid TOML ({e})") from e
    return parse_recipe({"name": path.stem, **data}, str(path))


def from_record(data: dict[str, Any], source: str) -> Recipe:
    """The recipe saved in a run's config.json or checkpoint. Runs written before recipes
    existed saved a flat preset config; it maps onto a recipe that computes the same."""
    if "recipe" in data:
        return parse_recipe(data["recipe"], source)
    try:
        return _from_preset_config(data["config"], source)
    except (KeyError, TypeError) as e:
        raise CnnlabError(f"{source}: an incomplete run config (no {e}); the run folder is "
                          "damaged") from None


def _from_preset_config(old: dict[str, Any], source: str) -> Recipe:
    known = old["preset"] in list_builtin()
    return parse_recipe({
        **(builtin(old["preset"]).to_dict() if known else {"name": old["preset"]}),
        "epochs": old["epochs"], "batch_size": old["batch_size"], "seed": old["seed"],
        "precision": "bf16" if old.get("bf16") else "fp32",
        "limit_train": old.get("limit_train"), "limit_test": old.get("limit_test"),
        "model": {"name": old["model"]},
        "optimizer": {"name": "adam", "lr": old["lr"]},
        "schedule": {"name": "step", "step_size": old["step_size"], "gamma": old["gamma"]},
        "augment": STUDY_AUGMENT if old["augment"] else [],
    }, source)


# --------------------------------------------------------------------------- showing

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(recipe: Recipe) -> str:
    """The whole recipe, every key with its value and a comment saying what it does."""
    data = recipe.to_dict()
    docs = {k.name: k for k in documented_keys(Recipe)}

    def line(path: str, name: str, value: Any) -> str:
        key = docs[path]
        comment = f"{key.doc} ({key.valid})" if key.valid else key.doc
        return f"{name} = {_toml_value(value)}" + (f"  # {comment}" if comment else "")

    top, tables = [], []
    for f in fields(Recipe):
        value = data.get(f.name)
        if f.name == "augment":
            items = [_toml_value(item) for item in value]
            top.append("# " + docs["augment"].doc)
            top.append("augment = [" + "".join(f"\n  {item}," for item in items)
                       + ("\n]" if items else "]"))
        elif isinstance(getattr(recipe, f.name), (int, float, str, type(None))):
            if value is not None:
                top.append(line(f.name, f.name, value))
        elif is_dataclass(getattr(recipe, f.name)) and value:
            tables.append(f"\n[{f.name}]")
            tables += [line(f"{f.name}.{k}", k, v) for k, v in value.items()]
    return "\n".join(top + tables) + "\n"


def keys_table() -> str:
    """Every recipe key as a Markdown table: `cnnlab recipe keys`, and the documentation's
    recipe page, which generates it when the site is built."""
    rows = ["| key | type | default | valid values | meaning |",
            "| --- | --- | --- | --- | --- |"]
    for k in documented_keys(Recipe) + transform_keys():
        shown = "—" if k.default is ... else "none" if k.default is None else \
            f"`{_toml_value(to_dict(k.default))}`"
        kind = "—" if k.default is ... else type_name(k.type)
        rows.append(f"| `{k.name}` | {kind} | {shown} | {k.valid} | {k.doc} |")
    return "\n".join(rows)


def transform_keys() -> list[KeyDoc]:
    """Each augmentation transform (what it does), then each of its keys."""
    rows = []
    for cls in TRANSFORMS.values():
        rows.append(KeyDoc(f"augment: {cls.NAME}", None, ..., "", " ".join(cls.__doc__.split())))
        rows += documented_keys(cls, f"augment: {cls.NAME}.")
    return rows


def flags() -> list[KeyDoc]:
    """The keys that have a command-line flag of their own."""
    return [k for k in documented_keys(Recipe) if k.flag]
