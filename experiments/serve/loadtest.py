"""A load test of a running `cnnlab serve`: many concurrent clients posting PNGs, each
answer checked against the class expected for its image; and what the serve experiments
share to get there (test images as PNGs, a server on a free loopback port). Used by
measure.py, soak.py and the serve tests; the package itself never needs it."""

from __future__ import annotations

import io
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image


def png_bodies(images: torch.Tensor) -> list[bytes]:
    """Each uint8 28×28 image as a PNG file's bytes."""
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


@contextmanager
def running_server(source: Path, data_dir: Path, runtime: str,
                   options: tuple[str, ...] = ()) -> Iterator[tuple[str, int]]:
    """`cnnlab serve SOURCE` (with more `options`) on a free loopback port: yields its base
    URL and process id once it answers /healthz, and stops it afterwards."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "serve", str(source),
                               "--port", str(port), "--data-dir", str(data_dir),
                               "--runtime", runtime, *options], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"cnnlab serve {source} did not start") from None
                time.sleep(0.2)
        yield base, server.pid
    finally:
        server.terminate()
        server.wait()


def load_test(base_url: str, bodies: list[bytes], expected: list[int], clients: int,
              requests: int, timeout: float = 30.0) -> dict[str, Any]:
    """`requests` POSTs of PNG `bodies` (cycled) from `clients` concurrent threads to a
    running server on loopback; returns requests/s, latency percentiles, and how many
    answers were not 200 or named another class than `expected`."""

    def ask(i: int) -> tuple[float, bool]:
        request = urllib.request.Request(f"{base_url}/v1/predict", data=bodies[i % len(bodies)],
                                         headers={"Content-Type": "image/png"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
            ok = response.status == 200 and body["top"][0]["index"] == expected[i % len(bodies)]
        return time.perf_counter() - start, ok

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(ask, range(requests)))
    wall = time.perf_counter() - start
    latencies = sorted(1000 * t for t, _ in results)
    cuts = statistics.quantiles(latencies, n=100)
    return {"requests": requests, "clients": clients, "seconds": wall,
            "requests_per_s": requests / wall, "p50_ms": cuts[49], "p99_ms": cuts[98],
            "wrong": sum(not ok for _, ok in results)}
