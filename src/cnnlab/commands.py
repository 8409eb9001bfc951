"""What each top-level `cnnlab` command does, given its parsed arguments (the parser is in
cli.py; the sweep commands are in sweep/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from cnnlab import recipe as recipes
from cnnlab.checkpoint import load_checkpoint, save_model
from cnnlab.cli_common import dest, format_table, named_recipe, print_results
from cnnlab.data import CLASSES, SHA256, download, ensure_data, load_split, resolve_data_dir, verify
from cnnlab.device import check_precision, resolve_device
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write_text, make_folder
from cnnlab.inference import Predictor, format_json, format_text, load_image
from cnnlab.loggers import ConsoleLogger, Logger, TensorBoardLogger
from cnnlab.models import (
    code_of,
    count_macs,
    count_parameters,
    get_model,
    is_user_code,
    list_models,
    trusted_code,
)
from cnnlab.recipe import STUDY_AUGMENT, Recipe
from cnnlab.reproduce import QUICK
from cnnlab.runs import RunFolder, command_line
from cnnlab.sweep.cli import check_worker_options, run_workers
from cnnlab.sweep.definition import grid_spec, parse_int_list
from cnnlab.sweep.storage import open_storage
from cnnlab.sweep.sweeps import ensure_sweep
from cnnlab.sweep.worker import refuse_failures
from cnnlab.train import resume_recipe, start_or_resume


def cmd_models(args: argparse.Namespace) -> None:
    rows = []
    for name in list_models():
        model = get_model(name)
        rows.append([name, f"{count_parameters(model):,}", f"{count_macs(model):,}"])
    print(format_table(["model", "parameters", "MACs/image"], rows))


def augment_summary(recipe: Recipe) -> str:
    return " + ".join(t.NAME for t in recipe.augment) or "none"


def cmd_presets(args: argparse.Namespace) -> None:
    rows = []
    for name in recipes.list_builtin():
        r = recipes.builtin(name)
        rows.append([name, r.model.name, r.batch_size, r.epochs, r.optimizer.name,
                     r.optimizer.lr, r.schedule.name, augment_summary(r),
                     f"{100 * r.study.accuracy:.1f}%" if r.is_study else ""])
    print(format_table(["recipe", "model", "batch", "epochs", "optimizer", "lr", "schedule",
                        "augmentation", "study"], rows))


def cmd_recipe_show(args: argparse.Namespace) -> None:
    recipe = named_recipe(args.name)
    print(f"# cnnlab recipe {recipe.name!r}: every key with its value; copy, edit, and train "
          f"it with `cnnlab train --recipe FILE.toml`\n" + recipes.to_toml(recipe), end="")


def cmd_recipe_keys(args: argparse.Namespace) -> None:
    print(recipes.keys_table())


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe keys this command line sets: flags first, then --set in order."""
    out = {key.name: getattr(args, dest(key.name)) for key in recipes.flags()
           if getattr(args, dest(key.name)) is not None}
    if args.augment is not None:
        out["augment"] = STUDY_AUGMENT if args.augment else []
    out.update(recipes.parse_assignments(args.set or []))
    return out


def user_code_of(recipe: Recipe, given: str | None, typed: bool, origin: str) -> str | None:
    """The source of a user's network that this command line names: a network typed on it
    (`--model my_nets.py:Net`, `--set model.name=…`) names its own code; one that a recipe
    file (`origin`) names must be named again with --model-code (never a file merely
    written in a recipe, run folder or checkpoint)."""
    if not is_user_code(recipe.model.name):
        return given
    if typed:
        return given if given is not None else code_of(recipe.model.name)
    return trusted_code(recipe.model.name, origin, given)


def make_loggers(args: argparse.Namespace, recipe: Recipe) -> list[Logger]:
    loggers: list[Logger] = [] if args.quiet else [ConsoleLogger(recipe.epochs)]
    if "tensorboard" in (args.log or []):
        if args.log_every < 1:
            raise CnnlabError(f"--log-every must be >= 1 (got {args.log_every})")
        loggers.append(TensorBoardLogger(args.log_every))
    return loggers


def cmd_train(args: argparse.Namespace) -> None:
    overrides = overrides_from(args)
    if args.resume:
        run = RunFolder(args.resume)
        if args.out and Path(args.out).resolve() != run.path.resolve():
            raise CnnlabError("--out and --resume name different folders; give only --resume")
        if args.recipe_file:
            raise CnnlabError("--recipe and --resume: a resumed run keeps its saved recipe; "
                              "give only --resume")
        if args.name:
            overrides["name"] = args.name
        recipe = resume_recipe(run, overrides)
        code = args.model_code
    else:
        if args.name and args.recipe_file:
            raise CnnlabError("name a built-in recipe or give --recipe FILE, not both")
        if not (args.name or args.recipe_file):
            raise CnnlabError("name a recipe (see `cnnlab presets`), give --recipe FILE.toml, "
                              "or --resume RUN_DIR")
        base = (recipes.load_file(Path(args.recipe_file)) if args.recipe_file
                else recipes.builtin(args.name))
        recipe = base.with_overrides(overrides) if overrides else base
        code = user_code_of(recipe, args.model_code, typed="model.name" in overrides,
                            origin=args.recipe_file or f"recipe {recipe.name}")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run = RunFolder(args.out or Path("runs") / f"{recipe.name}-{stamp}")
    device = resolve_device(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    ensure_data(data_dir)
    if not args.resume:  # only now, so that a refused command leaves an old run whole
        check_precision(recipe.precision, device)
        run.claim(args.overwrite)
    metrics = start_or_resume(recipe, run, data_dir, device, resume=bool(args.resume),
                              loggers=make_loggers(args, recipe), progress_bar=not args.quiet,
                              model_code=code)
    final = metrics[-1]
    print(f"{recipe.name}: final test accuracy {100 * final['test_acc']:.2f}% "
          f"(test loss {final['test_loss']:.4f}) after {final['epoch']} epochs on {device}; "
          f"run folder {run.path}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.batch_size is not None and args.batch_size < 1:
        raise CnnlabError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.limit_test is not None and args.limit_test < 1:
        raise CnnlabError(f"--limit-test must be >= 1 (got {args.limit_test})")
    predictor = Predictor.load(Path(args.checkpoint), resolve_device(args.device),
                               args.model_code)
    test_set = load_split(resolve_data_dir(args.data_dir), "test").head(args.limit_test)
    loss, acc = predictor.evaluate(test_set, args.batch_size)
    recipe = predictor.recipe
    print(f"{recipe.name} ({recipe.model.name}, epoch {predictor.epoch}, "
          f"{predictor.runtime}): test accuracy {100 * acc:.2f}%, test loss {loss:.4f} on "
          f"{len(test_set):,} images")


def cmd_export(args: argparse.Namespace) -> None:
    from cnnlab.export import export_onnx, refuse_onnx_source

    out = Path(args.out)
    if out.suffix == ".pt":
        refuse_onnx_source(Path(args.source))
        export_model_pt(Path(args.source), out)
        return
    metadata = export_onnx(Path(args.source), out, args.opset, args.model_code)
    accuracy = metadata["test_accuracy"]
    note = f", test accuracy {100 * float(accuracy):.2f}% when saved" if accuracy else ""
    print(f"wrote {out} (opset {args.opset}, input uint8 images (batch, 28, 28), "
          f"output logits{note})")


def export_model_pt(source: Path, out: Path) -> None:
    """`cnnlab export RUN --out RUN/model.pt`: the small weights-only model.pt that training
    writes when a run finishes, for a run that has only its last.pt."""
    read = RunFolder(source).model_source if source.is_dir() else source
    if out.resolve() == read.resolve():
        raise CnnlabError(f"--out {out} is the checkpoint being read; choose another file")
    state = load_checkpoint(source)
    make_folder(out.parent, "the folder of --out")
    save_model(out, state)
    print(f"wrote {out} (the reported weights of epoch {state['epoch']}, no optimizer state; "
          "`cnnlab predict`, `evaluate`, `explain` and `serve` load it)")


def cmd_serve(args: argparse.Namespace) -> None:
    import ipaddress

    from cnnlab.data import missing_files

    try:
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn  # noqa: F401

        from cnnlab.serve import serve
        from cnnlab.serve_guard import Limits, choose_token
    except ImportError:
        raise CnnlabError("cnnlab serve needs FastAPI, uvicorn and python-multipart: "
                          "pip install 'cnnlab[serve]'") from None

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        raise CnnlabError(f"--host {args.host!r} is not an IP address or localhost") from None
    if not 0 < args.port < 65536:
        raise CnnlabError(f"--port must be between 1 and 65535 (got {args.port})")
    if args.device not in ("auto", "cpu"):
        raise CnnlabError("cnnlab serve runs on the CPU; drop --device")
    if args.threads is not None:
        raise CnnlabError("cnnlab serve sets its inference threads with --limit threads=N "
                          "(one torch thread each); drop --threads")
    limits = Limits().with_overrides(args.limit)
    token, generated = choose_token(args.token, args.no_auth, loopback)
    if token is None and not loopback:
        print(f"cnnlab: warning: serving on {args.host} with --no-auth: anyone who can reach "
              f"port {args.port} may use the API", file=sys.stderr)
    data_dir = resolve_data_dir(args.data_dir)
    samples = None if missing_files(data_dir) else load_split(data_dir, "test")
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address
    url = f"http://{host}:{args.port}/"
    where = f"{url}?token={token}" if generated else url
    needs = ("" if token is None or generated
             else "; the API needs your token (open the page at /?token=TOKEN)")
    serve(Path(args.source), args.host, args.port, samples, args.model_code, args.runtime,
          token, limits, announce=lambda: print(
              f"serving {args.source} on {where} (API docs at /docs){needs}; Ctrl-C stops",
              file=sys.stderr, flush=True))


def cmd_download(args: argparse.Namespace) -> None:
    data_dir = resolve_data_dir(args.data_dir)
    fetched = download(data_dir)
    bad = [name for name, ok in verify(data_dir).items() if not ok]
    if bad:
        raise CnnlabError(f"{data_dir}: {', '.join(bad)} fail the SHA-256 check; "
                          "delete them and run `cnnlab download` again")
    note = f"downloaded {len(fetched)}, " if fetched else ""
    print(f"{data_dir}: {note}all {len(SHA256)} files present and verified (SHA-256)")


def cmd_report(args: argparse.Namespace) -> None:
    from cnnlab.report.study import build_report

    for path in build_report(Path(args.dir), resolve_data_dir(args.data_dir), command_line(),
                             [Path(d) for d in args.collapse_runs],
                             [Path(d) for d in args.time_runs]):
        print(f"wrote {path}")
    print_results(Path(args.dir))


def cmd_predict(args: argparse.Namespace) -> None:
    paths = [Path(p) for p in args.images]
    pictures = [load_image(p) for p in paths]  # every picture is checked before loading
    predictor = Predictor.load(Path(args.checkpoint), resolve_device(args.device),
                               args.model_code)
    predictions = predictor.predict(pictures, [str(p) for p in paths],
                                    invert=not args.no_invert, top=args.top)
    print(format_json(predictions) if args.json else format_text(predictions))


def cmd_explain(args: argparse.Namespace) -> None:
    from cnnlab.explain import ONNX_NO_GRADCAM, explain_pictures, feature_maps
    from cnnlab.report.figures import save_png
    from cnnlab.report.learned import features_figure, gradcam_figure

    source = Path(args.source)
    if source.suffix == ".onnx":
        raise CnnlabError(ONNX_NO_GRADCAM)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"--out {out} is a file; give a folder for the PNGs")
    pictures, names, stems = explain_inputs(args)
    predictor = Predictor.load(source, resolve_device(args.device), args.model_code)
    explanations = explain_pictures(predictor, pictures, args.top, names=names,
                                    invert=not args.no_invert)
    print(format_text([e.prediction for e in explanations]))
    make_folder(out, "--out")
    for stem, explained in zip(stems, explanations, strict=True):
        seen, (best, probability) = explained.prediction.input, explained.prediction.top[0]
        title = f"{explained.prediction.image}: {best} {100 * probability:.1f}%"
        cam_path, maps_path = out / f"{stem}-gradcam.png", out / f"{stem}-features.png"
        save_png(gradcam_figure(title, seen, explained.cam), cam_path)
        save_png(features_figure(title, seen, feature_maps(predictor.model, seen)), maps_path)
        print(f"wrote {cam_path} and {maps_path}")


def explain_inputs(args: argparse.Namespace) -> tuple[list[Any], list[str], list[str]]:
    """`cnnlab explain`'s pictures (each checked before the model loads), their names and
    the stems of their PNGs: IMAGE files, then --test-images."""
    paths = [Path(p) for p in args.images]
    pictures: list[Any] = [load_image(p) for p in paths]
    names, stems = [str(p) for p in paths], [p.stem for p in paths]
    if args.test_images:
        try:
            indices = parse_int_list(args.test_images)
        except CnnlabError as e:
            raise CnnlabError(f"--test-images wants indices: {e}") from None
        test = load_split(resolve_data_dir(args.data_dir), "test")
        if bad := [i for i in indices if not 0 <= i < len(test)]:
            raise CnnlabError(f"--test-images {bad[0]}: the test set's images are numbered "
                              f"0..{len(test) - 1}")
        pictures += [test.images[i] for i in indices]
        names += [f"test image {i} ({CLASSES[int(test.labels[i])]})" for i in indices]
        stems += [f"test-{i}" for i in indices]
    if not pictures:
        raise CnnlabError("give IMAGE files to explain, or --test-images LIST")
    if len(set(stems)) < len(stems):
        twice = next(s for s in stems if stems.count(s) > 1)
        raise CnnlabError(f"two images would both write {twice}-gradcam.png; explain them "
                          "one at a time, or rename one")
    return pictures, names, stems


def cmd_reproduce(args: argparse.Namespace) -> None:
    from cnnlab.report.study import build_report
    from cnnlab.reproduce import full_note, quick_note, reproduce

    names = parse_list(args.runs, recipes.list_builtin(), "recipe")
    try:
        seeds = parse_int_list(args.seeds)
    except CnnlabError as e:
        raise CnnlabError(f"--seeds wants integers: {e}") from None
    if not 0 <= seeds[0] <= seeds[-1] <= recipes.MAX_SEED:  # sorted
        raise CnnlabError(f"--seeds must be between 0 and {recipes.MAX_SEED} "
                          f"(got {args.seeds})")
    out_dir, data_dir = Path(args.out), resolve_data_dir(args.data_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CnnlabError(f"--out {out_dir} is a file; give a study folder")
    if args.quick:
        print(quick_note(), flush=True)
    if args.workers is not None:
        # The study's grid as a sweep named after --out, its journal inside --out.
        check_worker_options(args)
        storage = str(out_dir / "sweep.journal")
        grid = {"recipe": names, "seed": seeds}
        spec = grid_spec(grid, {n: recipes.builtin(n) for n in names},
                         QUICK if args.quick else {})
        ensure_sweep(out_dir.name, open_storage(storage), spec)
        refuse_failures(out_dir.name, run_workers(out_dir.name, storage, out_dir.parent, args))
    else:
        reproduce(names, seeds, out_dir, data_dir, resolve_device(args.device), args.quick,
                  args.quiet)
    for path in build_report(out_dir, data_dir, command_line()):
        print(f"wrote {path}")
    print_results(out_dir)
    if args.quick:
        print(full_note(out_dir))


def cmd_bench(args: argparse.Namespace) -> None:
    from cnnlab.bench import format_bench, run_bench

    labels = [n.strip() for n in (args.recipes or "").split(",") if n.strip()]
    if args.recipes is not None and not labels:
        raise CnnlabError(f"--recipes {args.recipes!r} names no recipe; give built-in names "
                          f"({', '.join(recipes.list_builtin())}) or recipe files")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise CnnlabError(f"--recipes names {', '.join(repeated)} more than once; name each "
                          "recipe once")
    timed_recipes = {label: named_recipe(label) for label in labels}
    default_models = [] if timed_recipes else ["lenet", "alexnet", "custom", "custom_nobn"]
    models = parse_list(args.models, list_models(), "model") if args.models else default_models
    if args.steps < 1 or args.repeats < 1:
        raise CnnlabError("--steps and --repeats must be >= 1")
    if args.json:  # checked before the minutes of measuring, not after
        make_folder(Path(args.json).parent, "the folder of --json")
        if Path(args.json).is_dir():
            raise CnnlabError(f"--json {args.json} is a folder; name a file")
    result = run_bench(models, resolve_data_dir(args.data_dir), resolve_device(args.device),
                       args.steps, args.repeats,
                       log=lambda line: print(line, file=sys.stderr, flush=True),
                       recipes=timed_recipes)
    print(format_bench(result))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def parse_list(text: str, valid: list[str], kind: str) -> list[str]:
    """A comma-separated list of names, each of which must be valid."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise CnnlabError(f"unknown {kind} {', '.join(unknown) or repr(text)}; "
                          f"choose from: {', '.join(valid)}")
    return names
