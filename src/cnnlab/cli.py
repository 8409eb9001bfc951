"""The `cnnlab` command line, and the one place where user errors become messages."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from datetime import datetime
from pathlib import Path

import torch

from cnnlab import __version__
from cnnlab.data import SHA256, download, load_split, resolve_data_dir, verify
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write_text
from cnnlab.models import count_macs, count_parameters, get_model, list_models
from cnnlab.presets import list_presets, load_preset
from cnnlab.report import plot_run
from cnnlab.reproduce import QUICK
from cnnlab.train import (
    TrainConfig,
    command_line,
    evaluate,
    load_checkpoint,
    model_from_checkpoint,
    prepare_model,
    resolve_device,
    resume_config,
    train,
)

RUN_FILES = ("last.pt", "metrics.csv", "config.json", "loss.png", "accuracy.png")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line through CnnlabError (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CnnlabError(f"{message} (see `{self.prog} --help`)")


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


# --------------------------------------------------------------------------- commands

def cmd_models(args: argparse.Namespace) -> None:
    rows = []
    for name in list_models():
        model = get_model(name)
        rows.append([name, f"{count_parameters(model):,}", f"{count_macs(model):,}"])
    print(format_table(["model", "parameters", "MACs/image"], rows))


def cmd_presets(args: argparse.Namespace) -> None:
    rows = []
    for name in list_presets():
        p = load_preset(name)
        rows.append([name, p["model"], p["batch_size"], p["epochs"], p["lr"], p["step_size"],
                     p["gamma"], "rotation + flip" if p["augment"] else "none",
                     f"{100 * p['study_accuracy']:.1f}%"])
    print(format_table(["preset", "model", "batch", "epochs", "lr", "step", "gamma",
                        "augmentation", "study"], rows))


def cmd_train(args: argparse.Namespace) -> None:
    overrides = {"model": args.model, "epochs": args.epochs, "lr": args.lr,
                 "batch_size": args.batch_size, "step_size": args.step_size,
                 "gamma": args.gamma, "augment": args.augment, "seed": args.seed,
                 "limit_train": args.limit_train, "limit_test": args.limit_test,
                 "bf16": args.bf16 or None}
    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise CnnlabError("--out and --resume name different folders; give only --resume")
        config = resume_config(run_dir, args.preset, overrides)
    else:
        if args.preset is None:
            raise CnnlabError("name a preset (see `cnnlab presets`) or give --resume RUN_DIR")
        config = TrainConfig.from_preset(args.preset, **overrides)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.out) if args.out else Path("runs") / f"{config.preset}-{stamp}"
        claim_run_dir(run_dir, args.overwrite)
    device = resolve_device(args.device)
    rows = train(config, run_dir, resolve_data_dir(args.data_dir), device,
                 resume=bool(args.resume), quiet=args.quiet)
    plot_run(rows, run_dir, config.preset)
    final = rows[-1]
    print(f"{config.preset}: final test accuracy {100 * final['test_acc']:.2f}% "
          f"(test loss {final['test_loss']:.4f}) after {final['epoch']} epochs on {device}; "
          f"run folder {run_dir}")


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to start over an existing run unless --overwrite says so."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CnnlabError(f"--out {run_dir} is a file; choose a folder")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise CnnlabError(f"{run_dir} already holds a run ({', '.join(existing)}); "
                          "continue it with --resume, or replace it with --overwrite")
    for name in existing:
        (run_dir / name).unlink()


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.batch_size is not None and args.batch_size < 1:
        raise CnnlabError(f"--batch-size must be >= 1 (got {args.batch_size})")
    source = Path(args.checkpoint)
    state = load_checkpoint(source)
    device = resolve_device(args.device)
    model = prepare_model(model_from_checkpoint(state, source), device)
    test_set = load_split(resolve_data_dir(args.data_dir), "test").head(args.limit_test)
    loss, acc = evaluate(model, test_set.to(device), args.batch_size)
    config = state["config"]
    print(f"{config['preset']} ({config['model']}, epoch {state['epoch']}): "
          f"test accuracy {100 * acc:.2f}%, test loss {loss:.4f} on {len(test_set):,} images")


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
    from cnnlab.report import build_report

    for path in build_report(Path(args.dir), resolve_data_dir(args.data_dir), command_line()):
        print(f"wrote {path}")
    print_results(Path(args.dir))


def cmd_predict(args: argparse.Namespace) -> None:
    from cnnlab.predict import format_json, format_text, predict

    predictions = predict(Path(args.checkpoint), [Path(p) for p in args.images],
                          invert=not args.no_invert, top=args.top,
                          device=resolve_device(args.device))
    print(format_json(predictions) if args.json else format_text(predictions))


def cmd_reproduce(args: argparse.Namespace) -> None:
    from cnnlab.report import build_report
    from cnnlab.reproduce import reproduce

    presets = parse_list(args.runs, list_presets(), "preset")
    try:
        seeds = sorted({int(s) for s in args.seeds.split(",")})
    except ValueError:
        raise CnnlabError(f"--seeds wants integers like 0,1,2 (got {args.seeds!r})") from None
    out_dir, data_dir = Path(args.out), resolve_data_dir(args.data_dir)
    reproduce(presets, seeds, out_dir, data_dir, resolve_device(args.device), args.quick,
              args.quiet)
    for path in build_report(out_dir, data_dir, command_line()):
        print(f"wrote {path}")
    print_results(out_dir)


def print_results(study_dir: Path) -> None:
    """The report's results table, trimmed to the columns that fit a terminal."""
    from cnnlab.report import load_runs, results_table

    headers, rows = results_table(load_runs(study_dir)[0])
    keep = [0, 1, 2, 3, 4, 8, 9]  # preset, seeds, final acc, study, Δ, epochs, time
    print(format_table([headers[i] for i in keep], [[row[i] for i in keep] for row in rows]))


def cmd_bench(args: argparse.Namespace) -> None:
    from cnnlab.bench import format_bench, run_bench

    models = parse_list(args.models, list_models(), "model")
    if args.steps < 1 or args.repeats < 1:
        raise CnnlabError("--steps and --repeats must be >= 1")
    result = run_bench(models, resolve_data_dir(args.data_dir), resolve_device(args.device),
                       args.steps, args.repeats,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
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


# --------------------------------------------------------------------------- parser

def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (default auto)")
    common.add_argument("--data-dir", help="Fashion-MNIST folder "
                        "(default $CNNLAB_DATA, else ~/.cache/cnnlab/fashion-mnist)")
    common.add_argument("--threads", type=int, help="CPU threads for torch")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")

    parser = Parser(prog="cnnlab", description="Reproduce, and go beyond, a study of "
                    "convolutional networks on Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("models", help="list the networks with parameters and MACs",
                   parents=[common]).set_defaults(run=cmd_models)
    sub.add_parser("presets", help="list the study's runs and their settings",
                   parents=[common]).set_defaults(run=cmd_presets)

    p = sub.add_parser("train", help="train a preset", parents=[common])
    p.add_argument("preset", nargs="?", help="one of `cnnlab presets`")
    p.add_argument("--model", help="another network for the preset's recipe")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--step-size", type=int, help="StepLR step size in epochs (default 5)")
    p.add_argument("--gamma", type=float, help="StepLR decay factor (default 0.5)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="rotation + flip on the training images (default: the preset's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--limit-train", type=int, help="train on the first N images only")
    p.add_argument("--limit-test", type=int, help="test on the first N images only")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--out", help="run folder (default runs/<preset>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("evaluate", help="test loss and accuracy of a saved model",
                       parents=[common])
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--batch-size", type=int, help="default 128 on CPU, 1000 on CUDA")
    p.add_argument("--limit-test", type=int, help="test on the first N images only")
    p.set_defaults(run=cmd_evaluate)

    sub.add_parser("download", help="fetch and verify Fashion-MNIST",
                   parents=[common]).set_defaults(run=cmd_download)

    p = sub.add_parser("reproduce", help="re-run the study and write its report",
                       parents=[common])
    p.add_argument("--runs", default=",".join(list_presets()),
                   help="comma-separated presets (default: the study's five)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--out", default="results/study", help="study folder (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="subsets and few epochs: "
                   + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(run=cmd_reproduce)

    p = sub.add_parser("bench", help="train/eval speed against the study-style pipeline",
                       parents=[common])
    p.add_argument("--models", default="lenet,alexnet,custom,custom_nobn",
                   help="comma-separated models (default %(default)s)")
    p.add_argument("--steps", type=int, default=30,
                   help="training steps per measurement (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5,
                   help="measurements per side, alternating (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the full result as JSON")
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("report", help="write the study report from the run folders in DIR",
                       parents=[common])
    p.add_argument("dir", metavar="DIR", help="study folder holding runs/<preset>-seed<k>/")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("predict", help="classify your own PNG or JPEG pictures",
                       parents=[common])
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR|FILE",
                   help="a run folder (uses its last.pt) or a .pt file")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--no-invert", action="store_true",
                   help="keep a light background as it is (default: invert it, as "
                   "Fashion-MNIST shows light objects on black)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--top", type=int, default=3, metavar="K",
                   help="how many classes to show (default 3)")
    p.set_defaults(run=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.threads is not None:
            if args.threads < 1:
                raise CnnlabError(f"--threads must be >= 1 (got {args.threads})")
            torch.set_num_threads(args.threads)
        args.run(args)
    except CnnlabError as e:
        if debug:
            traceback.print_exc()
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cnnlab: aborted; checkpoints already on disk are intact", file=sys.stderr)
        return 130
    return 0


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
