"""A load test of a running `cnnlab serve`: many concurrent clients posting PNGs, each
answer checked against the class expected for its image. Used by measure.py and by the
serve tests; the package itself never needs it."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any


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
