"""`cnnlab sweep create|work|status|report`, and the workers that `cnnlab reproduce
--workers K` starts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab import recipe as recipes
from cnnlab.cli_common import format_table, named_recipe, print_results
from cnnlab.data import resolve_data_dir
from cnnlab.device import resolve_device
from cnnlab.errors import CnnlabError
from cnnlab.files import is_plain_name
from cnnlab.models import trusted_code
from cnnlab.runs import command_line
from cnnlab.sweep.definition import grid_spec, parse_grid, parse_params, search_spec
from cnnlab.sweep.status import state_counts, status_json, trial_rows, write_search_report
from cnnlab.sweep.storage import DEFAULT_RUNS_ROOT, DEFAULT_STORAGE, open_storage, safe_url
from cnnlab.sweep.sweeps import create_sweep, load_sweep
from cnnlab.sweep.worker import (
    SPAWNED_ENV,
    cpu_count,
    refuse_failures,
    requeue_failures,
    spawn_workers,
    work,
)

if TYPE_CHECKING:
    from cnnlab.sweep.engine import Study

SEARCH_DEFAULTS = {"trials": 20, "objective": "val_acc", "pruner": "none", "seed": None}


def cmd_sweep_create(args: argparse.Namespace) -> None:
    if not is_plain_name(args.name):
        raise CnnlabError(f"sweep name {args.name!r}: it names the sweep's runs folder, so "
                          "give a plain folder name")
    fixed = recipes.parse_assignments(args.set or [])
    if args.grid and args.param:
        raise CnnlabError("give --grid (every combination) or --param (a search), not both")
    if args.grid:
        search_options = [f"--{k}" for k in SEARCH_DEFAULTS if getattr(args, k) is not None]
        if search_options:
            raise CnnlabError(f"{', '.join(search_options)}: options of a search, and a "
                              "--grid runs every combination once; drop them")
        grid = parse_grid(args.grid)
        names = grid.get("recipe") or ([args.recipe] if args.recipe else [])
        if not names:
            raise CnnlabError("say which recipe: a recipe=… key in --grid, or --recipe NAME")
        if "recipe" in grid and args.recipe:
            raise CnnlabError("--grid has recipe=…; drop --recipe")
        loaded = [named_recipe(str(n)) for n in names]
        if "recipe" in grid:  # files stand in the grid by their recipe's name
            grid["recipe"] = [r.name for r in loaded]
            clash = {n for n in grid["recipe"] if grid["recipe"].count(n) > 1}
            if clash:
                raise CnnlabError(f"--grid names recipe {', '.join(sorted(clash))} twice (a "
                                  "file's recipe goes by the name inside it): give each its "
                                  "own name = \"…\"")
        spec = grid_spec(grid, {r.name: r for r in loaded}, fixed)
    else:
        if not args.recipe:
            raise CnnlabError("a search needs --recipe NAME|FILE and --param KEY=KIND:…; "
                              "a grid needs --grid 'KEY=V1,V2 …'")
        params = parse_params(args.param or [])
        chosen = {k: default if getattr(args, k) is None else getattr(args, k)
                  for k, default in SEARCH_DEFAULTS.items()}
        spec = search_spec(named_recipe(args.recipe), params, fixed, **chosen)
    count = create_sweep(args.name, open_storage(args.storage), spec)
    storage = safe_url(args.storage)
    print(f"sweep {args.name}: {count} trials queued in {storage}; start workers with "
          f"`cnnlab sweep work {args.name} --storage {storage}`")


def check_worker_options(args: argparse.Namespace) -> None:
    """Before anything is stored: a refused command must not leave a sweep behind."""
    if args.workers < 1 or args.heartbeat < 1:
        raise CnnlabError("--workers and --heartbeat must be >= 1")


def run_workers(name: str, storage: str, runs_root: Path, args: argparse.Namespace) -> Study:
    """Work on sweep `name` with args.workers processes here; runs go to runs_root/name.
    Returns the sweep's study.

    The command a user starts (not the workers it spawns) first queues the sweep's failed
    trials again, the cause being fixed; it then ends with `refuse_failures`. The caller
    has checked the worker options (`check_worker_options`)."""
    # Loaded here so that a bad name or storage fails once, not in K workers.
    optuna_study, spec = load_sweep(name, open_storage(storage, args.heartbeat))
    for model in spec.model_names():  # stored recipes are data: their code needs naming here
        trusted_code(model, f"sweep {name}", args.model_code)
    if not os.environ.get(SPAWNED_ENV):
        requeue_failures(optuna_study)
    if args.workers == 1:
        work(name, storage, runs_root / name, resolve_data_dir(args.data_dir),
             resolve_device(args.device), args.heartbeat, args.model_code)
    else:
        spawn_workers(args.workers, args.threads or max(1, cpu_count() // args.workers),
                      worker_arguments(name, storage, runs_root, args))
    return optuna_study


def worker_arguments(name: str, storage: str, runs_root: Path, args: argparse.Namespace
                     ) -> list[str]:
    """The `cnnlab sweep work` arguments that each spawned worker gets."""
    forwarded = [name, "--storage", storage, "--runs-root", str(runs_root),
                 "--heartbeat", str(args.heartbeat), "--device", args.device]
    for flag, value in (("--data-dir", args.data_dir), ("--model-code", args.model_code)):
        forwarded += [flag, value] if value else []
    return forwarded


def cmd_sweep_work(args: argparse.Namespace) -> None:
    check_worker_options(args)
    optuna_study = run_workers(args.name, args.storage, Path(args.runs_root), args)
    if os.environ.get(SPAWNED_ENV):
        return  # the command that started this worker sums up
    rows = trial_rows(optuna_study, Path(args.runs_root) / args.name)
    print(f"sweep {args.name}: {state_counts(rows)}; runs in "
          f"{Path(args.runs_root) / args.name / 'runs'}", flush=True)  # before any error
    refuse_failures(args.name, optuna_study)


def cmd_sweep_status(args: argparse.Namespace) -> None:
    optuna_study, spec = load_sweep(args.name, open_storage(args.storage))
    rows = trial_rows(optuna_study, Path(args.runs_root) / args.name)
    if args.json:
        print(status_json(rows))
        return
    table = [[r["trial"], r["state"].lower(), "" if r["value"] is None else f"{r['value']:.4f}",
              " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in r["params"].items()),
              r["epochs"], r["run"] or "", r["host"] or ""] for r in rows]
    print(format_table(["trial", "state", spec.metric, "parameters", "epochs", "run folder",
                        "worker"], table))
    print(f"{len(rows)} trials: {state_counts(rows)}")


def cmd_sweep_report(args: argparse.Namespace) -> None:
    from cnnlab.report.study import build_report

    optuna_study, spec = load_sweep(args.name, open_storage(args.storage))
    sweep_dir = Path(args.runs_root) / args.name
    if spec.kind == "grid":
        for path in build_report(sweep_dir, resolve_data_dir(args.data_dir), command_line()):
            print(f"wrote {path}")
        print_results(sweep_dir)
    else:
        for path in write_search_report(optuna_study, spec, sweep_dir, command_line()):
            print(f"wrote {path}")


def add_sweep_command(sub: Any, common: argparse.ArgumentParser,
                      user_code: argparse.ArgumentParser,
                      heartbeat: argparse.ArgumentParser) -> None:
    """Add `cnnlab sweep ACTION` to the top-level subcommands `sub`; `common`, `user_code`
    and `heartbeat` are the shared option groups (parent parsers) of cnnlab's command line."""
    p = sub.add_parser("sweep", help="many runs as an Optuna study: grids, searches, "
                       "many workers and machines")
    sweep_sub = p.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")
    storage = argparse.ArgumentParser(add_help=False)
    storage.add_argument("name", metavar="NAME", help="the sweep (an Optuna study)")
    storage.add_argument("--storage", default=DEFAULT_STORAGE, metavar="PATH|URL",
                         help="a journal file (one machine; default %(default)s) or "
                         "postgresql://USER:PASSWORD@HOST/DB (many machines)")
    runs_root = argparse.ArgumentParser(add_help=False)
    runs_root.add_argument("--runs-root", default=DEFAULT_RUNS_ROOT, metavar="DIR",
                           help="run folders go to DIR/NAME/runs/ (default %(default)s)")
    add_create(sweep_sub, [common, storage])
    q = sweep_sub.add_parser("work", help="run the sweep's trials with K workers here "
                             "(start more on other machines)",
                             parents=[common, storage, runs_root, heartbeat, user_code])
    q.add_argument("--workers", type=int, default=1, metavar="K",
                   help="worker processes, each with cores/K threads unless --threads")
    q.set_defaults(run=cmd_sweep_work)
    q = sweep_sub.add_parser("status", help="every trial: state, parameters, value, run, "
                             "worker", parents=[common, storage, runs_root])
    q.add_argument("--json", action="store_true", help="print machine-readable JSON")
    q.set_defaults(run=cmd_sweep_status)
    sweep_sub.add_parser("report", help="a grid's report (mean ± std per recipe) or a "
                         "search's (best trials, parameters, importances)",
                         parents=[common, storage, runs_root]).set_defaults(run=cmd_sweep_report)


def add_create(sweep_sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    q = sweep_sub.add_parser("create", help="define a sweep and queue its trials",
                             parents=parents)
    q.add_argument("--grid", metavar="'KEY=V1,V2 KEY=A..B …'",
                   help="every combination once, e.g. 'recipe=custom,custom_nobn seed=0..9'")
    q.add_argument("--recipe", metavar="NAME|FILE", help="the recipe (of a search, or of a "
                   "grid without recipe=…)")
    q.add_argument("--param", action="append", metavar="KEY=KIND:…",
                   help="a searched key: float:LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH or "
                   "cat:A,B (repeatable)")
    # Unset (None) here so that a grid can refuse them; a search fills SEARCH_DEFAULTS in.
    q.add_argument("--trials", type=int, help="search: how many (default 20)")
    q.add_argument("--objective", help="search: val_acc (maximized) or val_loss (minimized), "
                   "on the validation split (default val_acc)")
    q.add_argument("--pruner", help="search: none, median or hyperband, on the objective per "
                   "epoch (default none)")
    q.add_argument("--seed", type=int, help="search: the sampler's seed (repeatable with one "
                   "worker)")
    q.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="fix a recipe key for every trial, as `cnnlab train --set`")
    q.set_defaults(run=cmd_sweep_create)
