"""Soak test of `cnnlab serve` with a token on loopback: full load from 8 clients plus 50
slow connections that send a header byte every few seconds (cut off by the server's header
deadline, they reconnect at once), for `--minutes`; per minute the requests/s, p50 and p99,
the server's RSS, wrong answers and 5xx.

    python -m experiments.serve.soak --minutes 10

Writes results/serve/soak.json and results/serve/SOAK.md (both name this command). The
model is lenet trained briefly here, served with the default runtime; every answer is
checked against the class cnnlab's own Predictor gives for the same image.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from cnnlab.data import load_split, resolve_data_dir
from cnnlab.device import machine_name
from cnnlab.files import atomic_write_text
from cnnlab.inference import Predictor
from experiments.common import RESULTS, made_by
from experiments.serve.loadtest import png_bodies, running_server
from experiments.serve.measure import brief_run

TOKEN = "soak-test-token"
SLOW_BYTE_SECONDS = 2.0  # a slow connection's pace: one header byte each


class Record:
    """Every answer of the soak, by the time it came (thread-safe appends)."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, float, int, bool]] = []  # time, ms, status, right
        self.failures: list[tuple[float, str]] = []  # no answer at all
        self.cut_off = 0  # slow connections the server closed
        self.lock = threading.Lock()


def client(port: int, bodies: list[bytes], expected: list[int], until: float, first: int,
           record: Record) -> None:
    """One client at full load: a kept-alive connection, one request after the other."""
    headers = {"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = first
    while time.monotonic() < until:
        start = time.monotonic()
        try:
            connection.request("POST", "/v1/predict", bodies[i % len(bodies)], headers)
            response = connection.getresponse()
            body = response.read()
            right = (response.status == 200
                     and json.loads(body)["top"][0]["index"] == expected[i % len(bodies)])
            with record.lock:
                record.answers.append((time.monotonic(), 1000 * (time.monotonic() - start),
                                       response.status, right))
        except (OSError, http.client.HTTPException, ValueError) as e:
            with record.lock:
                record.failures.append((time.monotonic(), repr(e)))
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i += 1
    connection.close()


async def slow_connection(port: int, until: float, record: Record) -> None:
    """A connection that sends a request header a byte every SLOW_BYTE_SECONDS (it would
    take hours to finish); when the server cuts it off, another one takes its place."""
    request = b"GET /healthz HTTP/1.1\r\nHost: soak\r\nX-Padding: " + b"a" * 10_000
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(1)
            continue
        try:
            for i in range(len(request)):
                if time.monotonic() >= until:
                    break
                writer.write(request[i:i + 1])
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(4096), SLOW_BYTE_SECONDS)
                except TimeoutError:
                    continue
                record.cut_off += 1  # the server answered (a 408) or closed: cut off
                break
        except OSError:
            record.cut_off += 1
        finally:
            writer.close()


def slow_connections(port: int, count: int, until: float, record: Record) -> None:
    async def all_of_them() -> None:
        await asyncio.gather(*(slow_connection(port, until, record) for _ in range(count)))
    asyncio.run(all_of_them())


def rss_mib(pid: int) -> float:
    """The process's resident memory, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def per_minute(record: Record, rss: list[tuple[float, float]], start: float,
               minutes: int) -> list[dict[str, Any]]:
    rows = []
    for m in range(minutes):
        low, high = start + 60 * m, start + 60 * (m + 1)
        answers = [a for a in record.answers if low <= a[0] < high]
        latencies = sorted(ms for _, ms, _, _ in answers)
        cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [None] * 99
        memory = [mib for t, mib in rss if low <= t <= high + 1]  # the last comes at the end
        rows.append({"minute": m + 1, "requests": len(answers),
                     "requests_per_s": len(answers) / 60, "p50_ms": cuts[49],
                     "p99_ms": cuts[98], "rss_mib": memory[-1] if memory else None,
                     "wrong": sum(s == 200 and not right for _, _, s, right in answers),
                     "status_5xx": sum(s >= 500 for _, _, s, _ in answers),
                     "other_status": sum(s != 200 and s < 500 for _, _, s, _ in answers),
                     "no_answer": sum(low <= t < high for t, _ in record.failures)})
    return rows


def soak(base: str, pid: int, bodies: list[bytes], expected: list[int], minutes: int,
         clients: int, slow: int) -> tuple[Record, list[dict[str, Any]]]:
    port = int(base.rsplit(":", 1)[1])
    record, rss = Record(), []
    start = time.monotonic()
    until = start + 60 * minutes
    threads = [threading.Thread(target=client, args=(port, bodies, expected, until,
                                                     k * 97, record)) for k in range(clients)]
    threads.append(threading.Thread(target=slow_connections, args=(port, slow, until, record)))
    for t in threads:
        t.start()
    while time.monotonic() < until:
        rss.append((time.monotonic(), rss_mib(pid)))
        time.sleep(5)
    rss.append((time.monotonic(), rss_mib(pid)))
    for t in threads:
        t.join()
    return record, per_minute(record, rss, start, minutes)


def summary(out: dict[str, Any]) -> str:
    rows, totals = out["minutes"], out["totals"]
    lines = [f"Made by `{out['made_by']}`.", "",
             f"`cnnlab serve` (lenet, runtime {out['runtime']}, token required) on loopback "
             f"on {out['machine']}: {out['clients']} clients at full load (kept-alive "
             f"connections, test-set PNGs, every answer checked) and {out['slow']} slow "
             f"connections sending a header byte every {SLOW_BYTE_SECONDS:g} s (the server "
             "cuts them off at its header deadline; each reconnects at once), for "
             f"{len(rows)} min. RSS is the server process's VmRSS at the end of each "
             "minute.", "",
             "| minute | requests/s | p50 ms | p99 ms | RSS MiB | wrong | 5xx | other "
             "status | no answer |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for r in rows:
        lines.append(f"| {r['minute']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['rss_mib']:.1f} | {r['wrong']} | "
                     f"{r['status_5xx']} | {r['other_status']} | {r['no_answer']} |")
    lines += ["", f"Totals: {totals['requests']:,} requests, {totals['wrong']} wrong answers, "
              f"{totals['status_5xx']} 5xx, {totals['no_answer']} without an answer; "
              f"{totals['slow_cut_off']:,} slow connections cut off. RSS from minute 1 to "
              f"the last: {rows[0]['rss_mib']:.1f} → {rows[-1]['rss_mib']:.1f} MiB "
              f"({totals['rss_growth_mib']:+.1f} MiB)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=10, help="default %(default)s")
    parser.add_argument("--clients", type=int, default=8, help="default %(default)s")
    parser.add_argument("--slow", type=int, default=50, help="default %(default)s")
    args = parser.parse_args()
    command = made_by(__spec__.name, "--minutes", str(args.minutes), "--clients",
                      str(args.clients), "--slow", str(args.slow))
    data_dir = resolve_data_dir()
    test = load_split(data_dir, "test").head(500)
    bodies = png_bodies(test.images)
    with tempfile.TemporaryDirectory() as tmp:
        run = brief_run("lenet", 10_000, data_dir, Path(tmp) / "lenet")
        expected = Predictor.load(run).logits(test.images).argmax(1).tolist()
        with running_server(run, data_dir, "auto", ("--token", TOKEN)) as (base, pid):
            runtime = json.loads(http_get(base, "/v1/model"))["runtime"]
            record, rows = soak(base, pid, bodies, expected, args.minutes, args.clients,
                                args.slow)
    totals = {key: sum(r[key] for r in rows)
              for key in ("requests", "wrong", "status_5xx", "other_status", "no_answer")}
    totals |= {"slow_cut_off": record.cut_off,
               "rss_growth_mib": rows[-1]["rss_mib"] - rows[0]["rss_mib"]}
    out = {"made_by": command, "machine": machine_name(torch.device("cpu")),
           "runtime": runtime, "clients": args.clients, "slow": args.slow,
           "minutes": rows, "totals": totals}
    (RESULTS / "serve").mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "serve" / "soak.json", json.dumps(out, indent=2) + "\n")
    atomic_write_text(RESULTS / "serve" / "SOAK.md", summary(out))
    print(summary(out))


def http_get(base: str, path: str) -> bytes:
    import urllib.request

    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


if __name__ == "__main__":
    main()
