"""Load test of `cnnlab serve` on loopback, for lenet and custom, served by torch and by
onnxruntime: 8 concurrent clients, 2,000 requests of test-set PNGs each.

    python -m experiments.serve.measure DATA_DIR results/serve/loadtest.json

The models are trained briefly here (accuracy does not change serving speed); every answer
is checked against the class cnnlab's own Predictor gives for the same image.
"""

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from PIL import Image

from cnnlab.data import load_datasets, load_split
from cnnlab.device import machine_name
from cnnlab.export import export_onnx
from cnnlab.inference import Predictor
from cnnlab.recipe import builtin
from cnnlab.runs import RunFolder
from cnnlab.train import train
from experiments.common import made_by
from experiments.serve.loadtest import load_test

CLIENTS, REQUESTS = 8, 2000


def png_bodies(images: torch.Tensor) -> list[bytes]:
    bodies = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.numpy()).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(source: Path, data_dir: Path, bodies: list[bytes], expected: list[int],
            runtime: str) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "serve", str(source),
                               "--port", str(port), "--data-dir", str(data_dir),
                               "--runtime", runtime],
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        load_test(base, bodies, expected, CLIENTS, 100)  # warm-up
        return load_test(base, bodies, expected, CLIENTS, REQUESTS)
    finally:
        server.terminate()
        server.wait()


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
            recipe = builtin(name).with_overrides({"epochs": 1, "limit_train": limit,
                                                   "limit_test": 500})
            run = Path(tmp) / name
            train(recipe, load_datasets(data_dir, 0, limit, 500), RunFolder(run),
                  torch.device("cpu"))
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
