"""What a sweep runs, as data: a grid (every combination of recipes × seeds × settings once)
or a search (searched keys, a trial count, an objective, a pruner), and the names of its runs.

Nothing here talks to Optuna: a trial is only asked for its values (`suggest_*`), so the
definition can be parsed, checked and tested without the sweep extra installed.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError
from cnnlab.recipe import Recipe, parse_recipe, parse_value

if TYPE_CHECKING:
    from cnnlab.sweep.engine import Trial

OBJECTIVES = {"val_acc": "maximize", "val_loss": "minimize"}
PRUNERS = ("none", "median", "hyperband")
# The longest range a list may name: all 10,000 test images, never a runaway `0..10**9`.
MAX_INTEGERS = 10_000


def parse_int_list(text: str) -> list[int]:
    """Integers and inclusive ranges: "3", "0,1,2", "0..9", "0..4,7" → sorted, each once."""
    numbers: set[int] = set()
    for piece in text.split(","):
        low, dots, high = piece.partition("..")
        try:
            first, last = int(low), int(high if dots else low)
        except ValueError:
            raise CnnlabError(f"{text!r} is not a list of integers and ranges like 3, 0,1,2, "
                              "0..9 or 0..4,7") from None
        if first > last:
            raise CnnlabError(f"{text!r} has the empty range {piece} (a range is LOW..HIGH "
                              "with LOW <= HIGH)")
        if last - first >= MAX_INTEGERS:
            raise CnnlabError(f"{text!r}: the range {piece} holds more than {MAX_INTEGERS:,} "
                              "integers; name fewer")
        numbers.update(range(first, last + 1))
    return sorted(numbers)


@dataclass
class Param:
    """One searched key: `float:LOW:HIGH`, `log:LOW:HIGH`, `int:LOW:HIGH` or `cat:A,B,…`."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: list[Any] = field(default_factory=list)

    @classmethod
    def parse(cls, key: str, text: str) -> Param:
        kind, _, rest = text.partition(":")
        usage = (f"--param {key}={text}: expected float:LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH "
                 "or cat:A,B,…")
        if kind == "cat":
            choices = [parse_value(v) for v in rest.split(",") if v]
            if not choices:
                raise CnnlabError(usage)
            return cls(kind, choices=choices)
        bounds = rest.split(":")
        if kind not in ("float", "log", "int") or len(bounds) != 2:
            raise CnnlabError(usage)
        try:
            low, high = (int(b) if kind == "int" else float(b) for b in bounds)
        except ValueError:
            raise CnnlabError(usage) from None
        if not low < high or (kind == "log" and low <= 0):
            raise CnnlabError(f"--param {key}={text}: needs LOW < HIGH"
                              + (" and LOW > 0 on a log scale" if kind == "log" else ""))
        return cls(kind, low, high)

    def suggest(self, trial: Trial, key: str) -> Any:
        if self.kind == "cat":
            return trial.suggest_categorical(key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(key, int(self.low), int(self.high))
        return trial.suggest_float(key, self.low, self.high, log=self.kind == "log")

    def ends(self) -> list[Any]:
        return self.choices if self.kind == "cat" else [self.low, self.high]


def parse_params(items: list[str]) -> dict[str, Param]:
    """`--param KEY=KIND:…` items → key: Param."""
    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CnnlabError(f"--param {item!r}: expected KEY=KIND:…, e.g. "
                              "optimizer.lr=log:1e-4:1e-2")
        if key in params:
            raise CnnlabError(f"--param {item!r}: {key} is given twice")
        params[key] = Param.parse(key, text)
    return params


def parse_grid(text: str) -> dict[str, list[Any]]:
    """`recipe=custom,custom_nobn seed=0..9 optimizer.lr=0.001,0.003` → key: values, in the
    order given (an integer range `A..B` stands for A, A+1, …, B)."""
    grid: dict[str, list[Any]] = {}
    for item in text.split():
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise CnnlabError(f"--grid {item!r}: expected KEY=V1,V2,… or KEY=A..B, e.g. "
                              "--grid 'recipe=custom,custom_nobn seed=0..9'")
        out: list[Any] = []
        for value in values.split(","):
            if ".." in value:
                try:
                    out.extend(parse_int_list(value))
                except CnnlabError:
                    raise CnnlabError(f"--grid {item!r}: a range is two integers, low to "
                                      "high, like seed=0..9") from None
            elif value:
                out.append(parse_value(value))
        if not out or key in grid:
            raise CnnlabError(f"--grid {item!r}: " + ("no values" if not out
                                                      else f"{key} is given twice"))
        repeated = sorted({str(v) for v in out if out.count(v) > 1})
        if repeated:  # every combination runs exactly once
            raise CnnlabError(f"--grid {item!r}: {', '.join(repeated)} given twice")
        grid[key] = out
    if not grid:
        raise CnnlabError("--grid is empty; e.g. --grid 'recipe=custom,custom_nobn seed=0..9'")
    return grid


@dataclass
class SweepSpec:
    """What a sweep runs; saved in its Optuna study so every worker, anywhere, runs the
    same."""

    kind: str  # "grid" or "search"
    recipes: dict[str, dict[str, Any]]  # base recipes by name, as data
    fixed: dict[str, Any]  # --set, for every trial
    grid: dict[str, list[Any]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: int = 0
    objective: str = "val_acc"
    pruner: str = "none"
    seed: int | None = None

    @property
    def metric(self) -> str:
        """A trial's value: the search's objective (validation), or a grid run's final
        test accuracy (a grid chooses nothing; it is the record of its runs)."""
        return self.objective if self.kind == "search" else "test_acc"

    @property
    def direction(self) -> str:
        return OBJECTIVES.get(self.metric, "maximize")

    def points(self) -> list[dict[str, Any]]:
        """Every grid point, in order."""
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*self.grid.values())]

    def recipe(self, values: dict[str, Any]) -> Recipe:
        """The recipe of one trial: the base recipe, --set, then the trial's own values; a
        grid point's recipe is named by its values other than the seed (`custom-lr=0.003`),
        so that a report groups its seeds."""
        values = dict(values)
        base = values.pop("recipe", None) or next(iter(self.recipes))
        recipe = parse_recipe(self.recipes[base], f"recipe {base}")
        recipe = recipe.with_overrides(self.fixed, "--set")
        if self.kind == "search":
            return recipe.with_overrides(values, "sweep --param")
        label = trial_label(base, {k: v for k, v in values.items() if k != "seed"})
        return recipe.with_overrides({**values, "name": label}, "sweep --grid")

    def search_values(self, trial: Trial) -> dict[str, Any]:
        """A search trial's values, proposed by the sampler. (A grid trial's are its queued
        point, not suggested: so a grid can grow, as Optuna fixes a key's choices.)"""
        return {k: Param(**p).suggest(trial, k) for k, p in self.params.items()}

    def merged_with(self, other: SweepSpec) -> SweepSpec | None:
        """This grid and grid `other` as one (their recipes, and each key's values), which
        names everything either runs; None when `other` differs in more than that: other
        keys or --set, or another recipe under a name this grid has."""
        def rest(spec: SweepSpec) -> dict[str, Any]:
            return {**asdict(spec), "recipes": None, "grid": list(spec.grid)}

        if self.kind != "grid" or rest(self) != rest(other) or any(
                self.recipes.get(name, recipe) != recipe
                for name, recipe in other.recipes.items()):
            return None
        grid = {k: v + [x for x in other.grid[k] if x not in v] for k, v in self.grid.items()}
        return SweepSpec("grid", {**self.recipes, **other.recipes}, self.fixed, grid=grid)

    def run_name(self, trial: Trial, values: dict[str, Any], recipe: Recipe) -> str:
        """The run folder of a trial: its grid point's, or the search trial's number and
        values (`trial007-lr=0.00123`)."""
        if self.kind == "grid":
            return grid_run_name(values, recipe)
        return trial_label(f"trial{trial.number:03d}", values)

    def model_names(self) -> list[str]:
        """Every network the sweep's trials build (each grid point's, a search's ends)."""
        if self.kind == "grid":
            built = [self.recipe(point) for point in self.points()]
        else:
            built = [self.recipe({})] + [self.recipe({k: end}) for k, p in self.params.items()
                                         for end in Param(**p).ends()]
        return sorted({recipe.model.name for recipe in built})

    def base_epochs(self) -> int:
        """The epochs of the first recipe with --set: a hyperband pruner's longest trial."""
        return parse_recipe(next(iter(self.recipes.values())), "recipe").with_overrides(
            self.fixed).epochs


def grid_run_name(point: dict[str, Any], recipe: Recipe) -> str:
    """The run folder of a grid point: its recipe's name (which holds the point's other
    values) and seed, e.g. `custom-lr=0.003-seed3`."""
    return recipe.name + (f"-seed{point['seed']}" if "seed" in point else "")


def trial_label(base: str, values: dict[str, Any]) -> str:
    def short(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return "-".join([base] + [f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in values.items()])


def grid_spec(grid: dict[str, list[Any]], recipes: dict[str, Recipe],
              fixed: dict[str, Any]) -> SweepSpec:
    """A grid over `recipes` (named by the grid's `recipe` key, else the one given)."""
    spec = SweepSpec("grid", {n: r.to_dict() for n, r in recipes.items()}, fixed, grid=grid)
    folders: dict[str, dict[str, Any]] = {}
    for point in spec.points():  # every point must be a valid recipe before anything runs
        folder = grid_run_name(point, spec.recipe(point))
        if folder in folders:  # labels round floats to 3 digits
            raise CnnlabError(f"grid points {folders[folder]} and {point} would share the "
                              f"run folder {folder}; make their values differ in the first "
                              "3 significant digits")
        folders[folder] = point
    return spec


def search_spec(recipe: Recipe, params: dict[str, Param], fixed: dict[str, Any], trials: int,
                objective: str, pruner: str, seed: int | None) -> SweepSpec:
    if not params:
        raise CnnlabError("a search needs at least one --param KEY=KIND:…, e.g. "
                          "--param optimizer.lr=log:1e-4:1e-2 (or give --grid)")
    if trials < 1:
        raise CnnlabError(f"--trials must be >= 1 (got {trials})")
    if objective not in OBJECTIVES:
        raise CnnlabError(f"--objective {objective}: choose {' or '.join(OBJECTIVES)} "
                          "(always on the validation split)")
    if pruner not in PRUNERS:
        raise CnnlabError(f"--pruner {pruner}: choose one of {', '.join(PRUNERS)}")
    spec = SweepSpec("search", {recipe.name: recipe.to_dict()}, fixed,
                     params={k: asdict(p) for k, p in params.items()}, trials=trials,
                     objective=objective, pruner=pruner, seed=seed)
    if spec.recipe({}).split.val == 0:
        raise CnnlabError("a search chooses on the validation split, and this recipe has "
                          "none; add e.g. --set split.val=5000")
    for k, p in params.items():
        for end in p.ends():
            spec.recipe({k: end})
    return spec
