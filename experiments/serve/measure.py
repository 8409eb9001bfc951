"""Load test of `cnnlab serve` on loopback, for lenet and custom, served by torch and by
onnxruntime: 8 concurrent clients, 2,000 requests of test-set PNGs each.

    python -m experiments.serve.measure DATA_DIR results/serve/loadtest.json

The models are trained briefly here (accuracy does not change serving speed); every answer
is checked against the class cnnlab's own Predictor gives for the same image.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

from cnnlab.data import load_datasets, load_split
from cnnlab.device import machine_name
from cnnlab.export import export_onnx
from cnnlab.inference import Predictor
from cnnlab.recipe import builtin
from cnnlab.runs import RunFolder
from cnnlab.train import train
from experiments.common import made_by
from experiments.serve.loadtest import load_test, png_bodies, running_server

CLIENTS, REQUESTS = 8, 2000


def brief_run(name: str, limit: int, data_dir: Path, folder: Path) -> Path:
    """Built-in recipe `name` trained for one epoch on `limit` images (accuracy does not
    change serving speed) into `folder`."""
    recipe = builtin(name).with_overrides({"epochs": 1, "limit_train": limit,
                                           "limit_test": 500})
    train(recipe, load_datasets(data_dir, 0, limit, 500), RunFolder(folder),
          torch.device("cpu"))
    return folder


def measure(source: Path, data_dir: Path, bodies: list[bytes], expected: list[int],
            runtime: str) -> dict:
    with running_server(source, data_dir, runtime) as (base, _):
        load_test(base, bodies, expected, CLIENTS, 100)  # warm-up
        return load_test(base, bodies, expected, CLIENTS, REQUESTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path, help="the Fashion-MNIST folder")
    parser.add_argument("out", help="the JSON file to write")
    args = parser.parse_args()
    data_dir, out = args.data_dir, Path(args.out)
    # The data folder differs from machine to machine; the record names it DATA_DIR.
    command = made_by(__spec__.name, "DATA_DIR", args.out)
    test = load_split(data_dir, "test").head(500)
    bodies = png_bodies(test.images)
    results = {"made_by": command, "machine": machine_name(torch.device("cpu")),
               "clients": CLIENTS, "requests": REQUESTS, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, limit in (("lenet", 10_000), ("custom", 3_000)):
            run = brief_run(name, limit, data_dir, Path(tmp) / name)
            onnx = Path(tmp) / f"{name}.onnx"
            export_onnx(run, onnx)
            expected = Predictor.load(run).logits(test.images).argmax(1).tolist()
            results["models"][name] = {
                "torch": measure(run, data_dir, bodies, expected, "torch"),
                "onnxruntime": measure(onnx, data_dir, bodies, expected, "onnxruntime")}
            print(name, json.dumps(results["models"][name]), flush=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| model | runtime | requests/s | p50 ms | p99 ms | wrong |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, runtimes in results["models"].items():
        for runtime, r in runtimes.items():
            print(f"| {name} | {runtime} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['wrong']} |")


if __name__ == "__main__":
    main()
