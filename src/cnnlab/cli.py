"""The `cnnlab` command line: its parser, one function per command, and the one place where
user errors become messages (the commands themselves are in commands.py)."""

from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import dataclass

import torch

from cnnlab import __version__, commands
from cnnlab import recipe as recipes
from cnnlab.cli_common import dest
from cnnlab.errors import CnnlabError
from cnnlab.reproduce import QUICK
from cnnlab.sweep.cli import add_sweep_command


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line through CnnlabError (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CnnlabError(f"{message} (see `{self.prog} --help`)")


@dataclass(frozen=True)
class Parents:
    """Option groups that several commands share (argparse parents)."""

    common: Parser     # every command: device, data, threads, tracebacks
    user_code: Parser  # loading a run that used a user's own network: its code named again
    heartbeat: Parser  # workers on a database storage (sweep work, reproduce --workers)


def shared_options() -> Parents:
    common = Parser(add_help=False)
    common.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (default auto)")
    common.add_argument("--data-dir", help="Fashion-MNIST folder "
                        "(default $CNNLAB_DATA, else ~/.cache/cnnlab/fashion-mnist)")
    common.add_argument("--threads", type=int, help="CPU threads for torch")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    user_code = Parser(add_help=False)
    user_code.add_argument("--model-code", metavar="FILE.py|MODULE",
                           help="the code of your own network, when a recipe file, sweep "
                           "or run names it (imported only when named here)")
    heartbeat = Parser(add_help=False)
    heartbeat.add_argument("--heartbeat", type=int, default=20, metavar="S",
                         help="database storage: a running trial's heartbeat every S seconds; "
                         "one silent for 3×S is requeued (default %(default)s)")
    return Parents(common, user_code, heartbeat)


Commands = argparse._SubParsersAction  # what add_subparsers returns: one parser per command


def add_models(sub: Commands, parents: Parents) -> None:
    sub.add_parser("models", help="list the networks with parameters and MACs",
                   parents=[parents.common]).set_defaults(run=commands.cmd_models)


def add_presets(sub: Commands, parents: Parents) -> None:
    sub.add_parser("presets", help="list the built-in recipes (the study's five first)",
                   parents=[parents.common]).set_defaults(run=commands.cmd_presets)


def add_recipe(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("recipe", help="show a recipe as TOML, or list every recipe key")
    recipe_sub = p.add_subparsers(dest="recipe_command", required=True, metavar="ACTION")
    q = recipe_sub.add_parser("show", help="print a recipe, every key with its value",
                              parents=[parents.common])
    q.add_argument("name", metavar="NAME|FILE", help="a built-in recipe or a .toml file")
    q.set_defaults(run=commands.cmd_recipe_show)
    recipe_sub.add_parser("keys", help="every recipe key: type, default, valid values",
                          parents=[parents.common]).set_defaults(run=commands.cmd_recipe_keys)


def add_train(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("train", help="train a recipe", parents=[parents.common, parents.user_code])
    p.add_argument("name", nargs="?", metavar="RECIPE", help="a built-in recipe "
                   "(`cnnlab presets`)")
    p.add_argument("--recipe", dest="recipe_file", metavar="FILE",
                   help="your own recipe file (TOML; `cnnlab recipe show custom` prints one)")
    for key in recipes.flags():
        valid = f" ({key.valid})" if key.valid else ""
        p.add_argument(key.flag, dest=dest(key.name), type=key.value_type,
                       metavar=key.name.rsplit(".", 1)[-1].upper(),
                       help=f"{key.name}: {key.doc}{valid}")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="the study's rotation + flip on the training images, or none "
                   "(default: the recipe's augment list)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any recipe key or run option, e.g. --set optimizer.lr=0.01, "
                   "--set schedule.name=cosine, --set epochs=3 (repeatable; see "
                   "`cnnlab recipe keys`)")
    p.add_argument("--log", action="append", choices=["tensorboard"],
                   help="also log to TensorBoard (RUN_DIR/tensorboard; needs "
                   "`pip install 'cnnlab[tensorboard]'`)")
    p.add_argument("--log-every", type=int, default=50, metavar="N",
                   help="TensorBoard: training loss and lr every N steps (default 50)")
    p.add_argument("--out", help="run folder (default runs/<recipe>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    p.set_defaults(run=commands.cmd_train)


def add_evaluate(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("evaluate", help="test loss and accuracy of a saved model",
                       parents=[parents.common, parents.user_code])
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT|MODEL.onnx")
    p.add_argument("--batch-size", type=int, help="default 128 on CPU, 1000 on CUDA")
    p.add_argument("--limit-test", type=int, help="test on the first N images only")
    p.set_defaults(run=commands.cmd_evaluate)


def add_export(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("export", help="write a trained model as ONNX (uint8 images → logits), "
                       "or as a run's small model.pt", parents=[parents.common, parents.user_code])
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--out", required=True, metavar="FILE.onnx|FILE.pt",
                   help="*.onnx: an ONNX model; *.pt: the reported weights alone, the "
                   "model.pt a finished run keeps (e.g. RUN_DIR/model.pt)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default %(default)s)")
    p.set_defaults(run=commands.cmd_export)


def add_serve(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("serve", help="an HTTP API and a web page for a trained model",
                       parents=[parents.common, parents.user_code])
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT|MODEL.onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s, "
                   "this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default %(default)s")
    p.add_argument("--runtime", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="auto: onnxruntime when installed (measured faster), else torch")
    p.add_argument("--token", help="the token API requests must carry (Authorization: Bearer "
                   "TOKEN); default $CNNLAB_SERVE_TOKEN, else none on loopback and a new random "
                   "one, printed with the URL, on any other address")
    p.add_argument("--no-auth", action="store_true", help="serve another address with no "
                   "token: anyone who can reach the port may use the API")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="override one bound on clients, e.g. --limit queue=64 (repeatable; "
                   "the limits and their defaults: docs/export-serve.md)")
    p.set_defaults(run=commands.cmd_serve)


def add_download(sub: Commands, parents: Parents) -> None:
    sub.add_parser("download", help="fetch and verify Fashion-MNIST",
                   parents=[parents.common]).set_defaults(run=commands.cmd_download)


def add_sweep(sub: Commands, parents: Parents) -> None:
    add_sweep_command(sub, parents.common, parents.user_code, parents.heartbeat)


def add_reproduce(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("reproduce", help="re-run the study and write its report",
                       parents=[parents.common, parents.heartbeat])
    p.add_argument("--workers", type=int, metavar="K", help="run through the sweep engine "
                   "with K worker processes (needs cnnlab[sweep]); default: one run after "
                   "another in this process")
    p.set_defaults(model_code=None)
    p.add_argument("--runs", default=",".join(recipes.STUDY_ORDER),
                   help="comma-separated built-in recipes (default: the study's five)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds and ranges, e.g. "
                   "0,1,2 or 0..9 (default 0)")
    p.add_argument("--out", default="results/study", help="study folder (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="subsets and few epochs: "
                   + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(run=commands.cmd_reproduce)


def add_bench(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("bench", help="train/eval speed against the study-style pipeline",
                       parents=[parents.common])
    p.add_argument("--models", help="comma-separated study networks to time against the "
                   "study-style pipeline (default lenet,alexnet,custom,custom_nobn, unless "
                   "--recipes is given)")
    p.add_argument("--recipes", help="comma-separated built-in recipes or recipe files to "
                   "time in their own training loops, taking turns, with GFLOP/s against the "
                   "matmul peak (e.g. fast,strong,my-recipe.toml)")
    p.add_argument("--steps", type=int, default=30,
                   help="training steps per measurement (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5,
                   help="measurements per side, alternating (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the full result as JSON")
    p.set_defaults(run=commands.cmd_bench)


def add_report(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("report", help="write the study report from the run folders in DIR",
                       parents=[parents.common])
    p.add_argument("dir", metavar="DIR", help="study folder holding runs/<recipe>-seed<k>/")
    p.add_argument("--collapse-runs", action="append", default=[], metavar="DIR",
                   help="a folder of more BatchNorm-ablation runs (e.g. a sweep's, "
                   "DIR/runs/*): their collapse rate joins the BatchNorm ablation (repeatable)")
    p.add_argument("--time-runs", action="append", default=[], metavar="DIR",
                   help="a folder of other recipes' runs (e.g. results/study): they join "
                   "the time-to-accuracy section's figure and table (repeatable)")
    p.set_defaults(run=commands.cmd_report)


def add_predict(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("predict", help="classify your own PNG or JPEG pictures",
                       parents=[parents.common, parents.user_code])
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR|CHECKPOINT|MODEL.onnx",
                   help="a run folder (its last.pt, else model.pt), a .pt file, or an "
                   "exported .onnx model (run by onnxruntime)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--no-invert", action="store_true",
                   help="keep a light background as it is (default: invert it, as "
                   "Fashion-MNIST shows light objects on black)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--top", type=int, default=3, metavar="K",
                   help="how many classes to show (default 3)")
    p.set_defaults(run=commands.cmd_predict)


def add_explain(sub: Commands, parents: Parents) -> None:
    p = sub.add_parser("explain", help="where a model looked (Grad-CAM) and its feature maps, "
                       "for your pictures or test images",
                       parents=[parents.common, parents.user_code])
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT",
                   help="a run folder (its last.pt, else model.pt) or a .pt file; not an "
                   ".onnx model: Grad-CAM needs the PyTorch model's gradients")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="PNG or JPEG pictures")
    p.add_argument("--test-images", metavar="LIST",
                   help="also test-set images by index, e.g. 0,7 or 0..9")
    p.add_argument("--out", default=".", metavar="DIR",
                   help="where IMAGE-gradcam.png and IMAGE-features.png go (default: the "
                   "current folder)")
    p.add_argument("--no-invert", action="store_true",
                   help="keep a light background as it is (as `cnnlab predict --no-invert`)")
    p.add_argument("--top", type=int, default=3, metavar="K",
                   help="how many classes to show (default 3)")
    p.set_defaults(run=commands.cmd_explain)


# In the order `cnnlab --help` lists them.
COMMANDS = (add_models, add_presets, add_recipe, add_train, add_evaluate, add_export, add_serve,
            add_download, add_sweep, add_reproduce, add_bench, add_report, add_predict,
            add_explain)


def build_parser() -> Parser:
    parser = Parser(prog="cnnlab", description="Reproduce, and go beyond, a study of "
                    "convolutional networks on Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = shared_options()
    for add in COMMANDS:
        add(sub, parents)
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
