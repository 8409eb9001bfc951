"""`cnnlab serve` beyond loopback: the token (in-process and through the CLI), and every
bound on clients, in-process where the app enforces it and on a real server where the
connection does (slow senders, the connection cap, oversized headers)."""

import json
import socket
import threading
import time
from pathlib import Path

import anyio
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cnnlab.errors import CnnlabError
from cnnlab.inference import Predictor
from cnnlab.serve import create_app
from cnnlab.serve_guard import TOKEN_ENV, HttpError, InferenceQueue, Limits, choose_token
from test_serve import png, served

TOKEN = "a-token-for-the-tests"


@pytest.fixture(scope="module")
def predictor(synthetic_run) -> Predictor:
    return Predictor.load(synthetic_run)


@pytest.fixture(scope="module")
def picture(synthetic_dir) -> bytes:
    from cnnlab.data import load_split

    return png(load_split(synthetic_dir, "test").images[0].numpy())


def test_with_a_token_the_api_needs_it_and_the_probe_and_page_do_not(predictor, picture):
    with TestClient(create_app(predictor, token=TOKEN)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            for response in (client.get("/v1/model", headers=headers),
                             *(client.post(path, content=picture,
                                           headers={**headers, "content-type": "image/png"})
                               for path in ("/v1/predict", "/v1/explain"))):
                assert response.status_code == 401
                assert response.headers["www-authenticate"] == "Bearer"
                assert "missing or wrong token" in response.json()["error"]
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/").status_code == 200 and client.get("/docs").status_code == 200
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/model", headers=good).status_code == 200
        answer = client.post("/v1/predict", content=picture,
                             headers={**good, "content-type": "image/png"})
        assert answer.status_code == 200 and len(answer.json()["top"]) == 3


def test_without_a_token_the_api_is_open(predictor):
    with TestClient(create_app(predictor)) as client:
        assert client.get("/v1/model").status_code == 200


def test_which_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert choose_token(None, no_auth=False, loopback=True) == (None, False)
    assert choose_token(None, no_auth=True, loopback=False) == (None, False)
    token, generated = choose_token(None, no_auth=False, loopback=False)
    assert generated and len(token) >= 40 and token != choose_token(None, False, False)[0]
    assert choose_token("mine", no_auth=False, loopback=True) == ("mine", False)
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert choose_token(None, no_auth=False, loopback=False) == ("from-env", False)
    assert choose_token("given", no_auth=False, loopback=False) == ("given", False)
    with pytest.raises(CnnlabError, match="contradict"):
        choose_token(None, no_auth=True, loopback=False)
    for bad in ("", "two words", "tab\there", "caf\u00e9"):
        with pytest.raises(CnnlabError, match="printable ASCII without spaces, and not empty"):
            choose_token(bad, no_auth=False, loopback=False)


@pytest.fixture
def started(monkeypatch) -> dict:
    """`cnnlab serve` up to the point where it would start the server: what it passed."""
    import cnnlab.serve

    seen: dict = {}

    def fake_serve(*args, announce):
        seen["args"] = args
        announce()

    monkeypatch.setattr(cnnlab.serve, "serve", fake_serve)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    return seen


def serve_cli(capsys, run: Path, data: Path, *options: str) -> str:
    from cnnlab.cli import main

    assert main(["serve", str(run), "--port", "8123", "--data-dir", str(data), *options]) == 0
    return capsys.readouterr().err


def test_another_address_gets_a_new_token_printed_once_with_the_url(
        capsys, started, synthetic_run, synthetic_dir):
    err = serve_cli(capsys, synthetic_run, synthetic_dir, "--host", "0.0.0.0")
    token = started["args"][6]
    assert err.count(token) == 1 and f"http://0.0.0.0:8123/?token={token} " in err
    assert "warning" not in err


def test_loopback_stays_open_and_a_given_token_is_not_printed(
        capsys, started, synthetic_run, synthetic_dir, monkeypatch):
    err = serve_cli(capsys, synthetic_run, synthetic_dir)
    assert started["args"][6] is None and "token" not in err
    assert err == (f"serving {synthetic_run} on http://127.0.0.1:8123/ (API docs at /docs); "
                   "Ctrl-C stops\n")
    started.clear()
    err = serve_cli(capsys, synthetic_run, synthetic_dir, "--host", "::1")  # bracketed
    assert started["args"][6] is None and " on http://[::1]:8123/ " in err
    started.clear()
    monkeypatch.setenv(TOKEN_ENV, "secret-from-env")
    err = serve_cli(capsys, synthetic_run, synthetic_dir, "--host", "10.1.2.3")
    assert started["args"][6] == "secret-from-env" and "secret-from-env" not in err


def test_no_auth_warns_and_limits_are_checked(capsys, started, synthetic_run, synthetic_dir):
    from conftest import one_line_error

    err = serve_cli(capsys, synthetic_run, synthetic_dir, "--host", "0.0.0.0", "--no-auth",
                    "--limit", "queue=7", "--limit", "body_seconds=2.5")
    assert started["args"][6] is None
    assert err.startswith("cnnlab: warning: serving on 0.0.0.0 with --no-auth: anyone")
    assert started["args"][7] == Limits(queue=7, body_seconds=2.5)
    assert "no such limit; the limits are connections, backlog" in one_line_error(
        capsys, ["serve", str(synthetic_run), "--limit", "speed=3"])
    assert "must be a positive whole number" in one_line_error(
        capsys, ["serve", str(synthetic_run), "--limit", "queue=1.5"])
    for bad in ("nan", "inf", "0", "-1", "x", "1e10"):
        assert "must be a positive number up to 2147483647" in one_line_error(
            capsys, ["serve", str(synthetic_run), "--limit", f"body_seconds={bad}"])
    assert "must be a positive whole number up to" in one_line_error(
        capsys, ["serve", str(synthetic_run), "--limit", "backlog=99999999999999"])
    assert "contradict" in one_line_error(
        capsys, ["serve", str(synthetic_run), "--no-auth", "--token", "x"])


def test_serve_refuses_what_it_cannot_honour_before_announcing(capsys, synthetic_run):
    """A busy port, a runtime or device the model cannot use, torch threads set apart from
    the inference threads: one line each, and no "serving" line before it."""
    from conftest import one_line_error

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in (
            one_line_error(capsys, ["serve", str(synthetic_run), "--port", port]))
    assert "runs in onnxruntime only" in one_line_error(
        capsys, ["serve", "model.onnx", "--runtime", "torch"])
    assert "serve runs on the CPU" in one_line_error(
        capsys, ["serve", str(synthetic_run), "--device", "cuda"])
    assert "--limit threads=N" in one_line_error(  # (the CLI sets them before it refuses)
        capsys, ["serve", str(synthetic_run), "--threads", str(torch.get_num_threads())])


def test_a_batch_is_bounded_in_total_decoded_pixels(predictor):
    import io

    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")  # 9 M pixels, a few KB
    files = [("files", (f"{i}.png", buffer.getvalue(), "image/png")) for i in range(4)]
    with TestClient(create_app(predictor)) as client:
        response = client.post("/v1/predict/batch", files=files)
        assert response.status_code == 413
        assert "decode to 36,000,000 pixels together" in response.json()["error"]
    with TestClient(create_app(predictor, limits=Limits(batch_pixels=40_000_000))) as client:
        assert client.post("/v1/predict/batch", files=files).status_code == 200


def test_the_inference_queue_is_bounded_in_length_and_in_waiting_time():
    """One thread, one place in the queue: the third request is refused at once, the second
    after queue_seconds, while the first still runs."""
    queue = InferenceQueue(Limits(threads=1, queue=1, queue_seconds=0.5))
    release = threading.Event()
    outcomes: dict[str, object] = {}

    async def ask(name: str, delay: float) -> None:
        await anyio.sleep(delay)
        start = time.monotonic()
        try:
            outcomes[name] = await queue.run(lambda: release.wait(5) and name)
        except HttpError as e:
            outcomes[name] = (e.status, str(e), round(time.monotonic() - start, 1))

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ask, "first", 0)
            tasks.start_soon(ask, "second", 0.1)
            tasks.start_soon(ask, "third", 0.2)
            await anyio.sleep(1.0)
            release.set()

    anyio.run(main)
    assert outcomes["first"] == "first"
    assert outcomes["third"][:2] == (503, "overloaded: 1 requests already wait for the model; "
                                     "try again shortly") and outcomes["third"][2] < 0.2
    assert outcomes["second"][0] == 503 and "within 0.5 s" in outcomes["second"][1]
    assert 0.4 <= outcomes["second"][2] < 2


def test_an_overloaded_server_answers_503_in_json(predictor, picture):
    """The queue wired into /v1/predict: with the one thread and the one queue place taken
    by slow requests, the next is a 503 with a JSON error, and the others still finish."""
    running, release = threading.Event(), threading.Event()

    class Slow(Predictor):
        def predict(self, *args, **kwargs):
            running.set()
            release.wait(10)  # held until the overloaded request has had its answer
            return predictor.predict(*args, **kwargs)

    slow = Slow(predictor.model, predictor.views, predictor.recipe)
    with TestClient(create_app(slow, limits=Limits(threads=1, queue=1))) as client:
        def ask() -> int:
            return client.post("/v1/predict", content=picture,
                               headers={"content-type": "image/png"}).status_code

        results: list[int] = []
        workers = [threading.Thread(target=lambda: results.append(ask())) for _ in range(2)]
        workers[0].start()
        assert running.wait(10)  # the first runs
        workers[1].start()
        time.sleep(1)  # the second waits in the queue
        response = client.post("/v1/predict", content=picture,
                               headers={"content-type": "image/png"})
        release.set()
        for w in workers:
            w.join()
    assert response.status_code == 503
    assert response.json()["error"].startswith("overloaded: 1 requests already wait")
    assert results == [200, 200]


def raw_exchange(base: str, sends: list[tuple[bytes, float]], wait: float = 10) -> bytes:
    """Send each piece after its pause on one connection, then read until the server closes
    it (or `wait` seconds pass): the raw answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        try:
            for data, pause in sends:
                time.sleep(pause)
                s.sendall(data)
        except OSError:  # the server closed first: read what it said
            pass
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def json_answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), raw
    return int(head.split()[1]), json.loads(body)


@pytest.mark.server
def test_a_real_server_cuts_off_slow_and_oversized_senders(synthetic_run, synthetic_dir):
    limits = ("--limit", "header_seconds=1", "--limit", "body_seconds=1")
    with served(synthetic_run, synthetic_dir, "torch", limits) as base:
        start = time.monotonic()
        assert raw_exchange(base, []) == b""  # an idle connection is closed, silently
        assert 0.8 < time.monotonic() - start < 3
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" * 3
        byte_at_a_time = [(request[i:i + 1], 0.1) for i in range(len(request))]
        status, body = json_answer(raw_exchange(base, byte_at_a_time))
        assert status == 408 and "headers took longer than 1 s" in body["error"]
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        slow_body = [(head + b"Content-Length: 100\r\n\r\n", 0)] + [(b"x", 0.1)] * 60
        status, body = json_answer(raw_exchange(base, slow_body))
        assert status == 408 and "body took longer than 1 s" in body["error"]
        huge = [(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
                 0)]
        status, body = json_answer(raw_exchange(base, huge))
        assert status == 431 and "over the limit of 16,384 bytes" in body["error"]
        status, body = json_answer(raw_exchange(base, [(b"NOT HTTP AT ALL\r\n\r\n", 0)]))
        assert status == 400 and body["error"] == "Invalid HTTP request received."
        probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert raw_exchange(base, [(probe, 0)]).startswith(b"HTTP/1.1 200")


@pytest.mark.server
def test_a_real_server_caps_open_connections(synthetic_run, synthetic_dir):
    limits = ("--limit", "connections=3", "--limit", "header_seconds=2")
    probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with served(synthetic_run, synthetic_dir, "torch", limits) as base:
        host, port = base.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(3)]
        try:
            time.sleep(0.3)
            status, body = json_answer(raw_exchange(base, [(probe, 0)]))
            assert status == 503 and "over 3 open connections" in body["error"]
            time.sleep(2.5)  # the idle ones are cut off: room again
            assert raw_exchange(base, [(probe, 0)]).startswith(b"HTTP/1.1 200")
        finally:
            for s in idle:
                s.close()


def test_the_limits_table_in_the_docs_is_the_code():
    import dataclasses
    import re

    page = (Path(__file__).parents[1] / "docs" / "export-serve.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", page, re.MULTILINE))
    for f in dataclasses.fields(Limits):
        default = ("the number of cores" if f.name == "threads"
                   else f"{f.default:,}" if isinstance(f.default, int) else f"{f.default:g}")
        assert rows.pop(f.name) == default, f.name
        assert f"| {f.metadata['unit']} | {f.metadata['doc'].split(' (default')[0]} |" in page
    assert rows == {}
