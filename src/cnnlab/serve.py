"""`cnnlab serve`: a trained model (run folder or .onnx) behind an HTTP API and a web page.

FastAPI on uvicorn (`pip install 'cnnlab[serve]'`; the CLI says so when it is missing).
Inference runs in worker threads, at most one per core, each with one torch thread, so
requests do not queue behind each other and the cores are not oversubscribed. Bad input
is a 4xx with a JSON error, never a 500; the token and every bound on clients are in
serve_guard.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image

from cnnlab.data import CLASSES, ImageSet
from cnnlab.errors import CnnlabError
from cnnlab.explain import ONNX_NO_GRADCAM, Explanation, explain_pictures
from cnnlab.inference import Prediction, Predictor
from cnnlab.serve_guard import (
    HttpError,
    InferenceQueue,
    Limits,
    RequireToken,
    uvicorn_settings,
    within,
)

PAGE = Path(__file__).with_name("serve_page.html")
IMAGE_TYPES = ("image/", "application/octet-stream")


def prediction_json(p: Prediction, ms: float) -> dict[str, Any]:
    return {"top": [{"class": name, "index": CLASSES.index(name), "probability": prob}
                    for name, prob in p.top],
            "inverted": p.inverted, "input": p.input.tolist(), "ms": ms}


def model_error(e: CnnlabError) -> HttpError:
    """The model's one-line refusal as an HTTP error: a picture too large (413) or not one
    it can read (422), or a model that cannot explain (501)."""
    text = str(e)
    if "Grad-CAM needs" in text:
        return HttpError(501, text)
    return HttpError(413 if "too large" in text else 422, text)


def create_app(predictor: Predictor, samples: ImageSet | None = None,
               report: Path | None = None, token: str | None = None,
               limits: Limits | None = None, explainer: Predictor | None = None) -> FastAPI:
    """The application: API, OpenAPI docs at /docs, and the page at /; with a `token`,
    every path but the page and /healthz needs it. `explainer`: a PyTorch Predictor of the
    same model for /v1/explain alone (Grad-CAM hooks into its model, so it cannot be the one
    serving predictions); without one, /v1/explain is a 501."""
    limits = limits or Limits()
    app = FastAPI(title="cnnlab", description="Fashion-MNIST classifier trained with cnnlab")
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limits.picture_pixels  # load_image refuses anything larger
    app.router.on_shutdown.append(lambda: setattr(Image, "MAX_IMAGE_PIXELS", previous_limit))

    @app.exception_handler(HttpError)
    async def refused(_request: Request, e: HttpError) -> JSONResponse:
        # A client too slow to send its body may still be sending: close, do not read on.
        headers = {"Connection": "close"} if e.status == 408 else None
        return JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        # A malformed query value (?top=abc): the API's own error shape, not FastAPI's.
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or "request"
        return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=422)

    if token is not None:
        app.add_middleware(RequireToken, token=token)
    add_prediction_routes(app, predictor, limits)
    add_explain_route(app, explainer, limits)
    add_model_routes(app, predictor, samples, report, explainer is not None)
    return app


async def body_of(request: Request, limits: Limits) -> bytes:
    """The request body, refused (413) as soon as it passes `body_bytes`, and (408) when it
    takes longer than `body_seconds` to arrive."""
    most = limits.body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > most:
        raise HttpError(413, f"body of {int(declared):,} bytes is over the limit of {most:,}")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > most:
                raise HttpError(413, f"body over the limit of {most:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    return await within(limits.body_seconds, read())


async def uploads(request: Request, field: str, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded picture: multipart field(s), or the raw body."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        body = await body_of(request, limits)
        try:
            form = await Request({**request.scope}, _replay(body)).form(
                max_files=limits.batch_files, max_part_size=limits.body_bytes)
        except Exception as e:  # the multipart parser's own errors
            raise HttpError(400, f"malformed multipart form ({e})") from None
        files = [f for f in form.getlist(field) if hasattr(f, "read")]
        if not files:
            raise HttpError(400, f"the form has no file in field {field!r}")
        return [(f.filename or field, await f.read()) for f in files]
    if kind and not kind.startswith(IMAGE_TYPES):
        raise HttpError(415, f"content type {kind!r}: send a picture (image/png, "
                        "image/jpeg, …) as the body, or multipart/form-data")
    return [("body", await body_of(request, limits))]


def decoded_pixels(pictures: list[tuple[str, bytes]]) -> int:
    """How many pixels the pictures decode to, read from their headers alone."""
    total = 0
    for _, data in pictures:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    total += image.width * image.height
        except Exception:  # not a picture, or a bomb: the predictor says which, per picture
            continue
    return total


def check_request(pictures: list[tuple[str, bytes]], top: int, limits: Limits) -> None:
    """The bounds on one request's pictures taken together (each one's are the predictor's)."""
    if not 1 <= top <= len(CLASSES):
        raise HttpError(422, f"top must be between 1 and {len(CLASSES)} (got {top})")
    if len(pictures) > limits.batch_files:
        raise HttpError(413, f"{len(pictures)} pictures; at most {limits.batch_files} per "
                        "request")
    pixels = decoded_pixels(pictures) if len(pictures) > 1 else 0
    if pixels > limits.batch_pixels:
        raise HttpError(413, f"the pictures decode to {pixels:,} pixels together; at most "
                        f"{limits.batch_pixels:,} per request")


def add_prediction_routes(app: FastAPI, predictor: Predictor, limits: Limits) -> None:
    """/v1/predict and /v1/predict/batch; the model runs in a bounded queue of threads."""
    queue = InferenceQueue(limits)

    async def predict(pictures: list[tuple[str, bytes]], top: int) -> list[dict[str, Any]]:
        check_request(pictures, top, limits)

        def run() -> tuple[list[Prediction], float]:
            start = time.perf_counter()
            try:
                results = predictor.predict([data for _, data in pictures],
                                            [name for name, _ in pictures], top=top)
            except CnnlabError as e:
                raise model_error(e) from None
            return results, 1000 * (time.perf_counter() - start)

        results, ms = await queue.run(run)
        return [prediction_json(p, ms / len(results)) for p in results]

    @app.post("/v1/predict", summary="classify one picture (multipart field `file`, or the "
              "raw bytes as the body)")
    async def predict_one(request: Request, top: int = 3) -> dict[str, Any]:
        pictures = await uploads(request, "file", limits)
        if len(pictures) != 1:
            raise HttpError(400, "one picture per request here; use /v1/predict/batch")
        return (await predict(pictures, top))[0]

    @app.post("/v1/predict/batch", summary="classify several pictures (multipart field "
              "`files`, repeated)")
    async def predict_batch(request: Request, top: int = 3) -> dict[str, Any]:
        pictures = await uploads(request, "files", limits)
        results = await predict(pictures, top)
        return {"predictions": [{"name": name, **r}
                                for (name, _), r in zip(pictures, results, strict=True)]}


def add_explain_route(app: FastAPI, explainer: Predictor | None, limits: Limits) -> None:
    """/v1/explain: a picture's prediction and its Grad-CAM, one at a time (the hooks that
    record the model's maps would catch another request's), behind its own bounded queue."""
    queue = InferenceQueue(dataclasses.replace(limits, threads=1))

    @app.post("/v1/explain", summary="classify one picture and say where the model looked: "
              "the Grad-CAM of its top class, 28 × 28 in [0, 1] (as /v1/predict takes it)")
    async def explain(request: Request, top: int = 3) -> dict[str, Any]:
        if explainer is None:
            raise HttpError(501, ONNX_NO_GRADCAM)
        pictures = await uploads(request, "file", limits)
        if len(pictures) != 1:
            raise HttpError(400, "one picture per request here")
        check_request(pictures, top, limits)
        [(name, data)] = pictures

        def run() -> tuple[Explanation, float]:
            start = time.perf_counter()
            try:
                [explained] = explain_pictures(explainer, [data], top, names=[name])
            except CnnlabError as e:
                raise model_error(e) from None
            return explained, 1000 * (time.perf_counter() - start)

        explained, ms = await queue.run(run)
        cam = [[round(v, 3) for v in row] for row in explained.cam.tolist()]
        return {**prediction_json(explained.prediction, ms), "cam": cam}


def add_model_routes(app: FastAPI, predictor: Predictor, samples: ImageSet | None,
                     report: Path | None, explains: bool) -> None:
    """What the page shows besides predictions: health, the model, samples, report, page."""

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        recipe = predictor.recipe
        return {"architecture": recipe.model.name, "recipe": recipe.to_dict(),
                "test_accuracy": predictor.test_acc, "epoch": predictor.epoch,
                "classes": list(CLASSES), "runtime": predictor.runtime,
                "report": report is not None, "samples": 0 if samples is None else len(samples),
                "explain": explains}

    @app.get("/v1/samples/{index}", summary="a test-set image as PNG; its class in the "
             "X-Class header")
    async def sample(index: int) -> Response:
        if samples is None or not 0 <= index < len(samples):
            raise HttpError(404, f"no sample {index}")
        buffer = io.BytesIO()
        Image.fromarray(samples.images[index].numpy(), mode="L").save(buffer, format="PNG")
        label = CLASSES[int(samples.labels[index])]
        return Response(buffer.getvalue(), media_type="image/png", headers={"X-Class": label})

    @app.get("/report", include_in_schema=False)
    async def report_page() -> Response:
        if report is None:
            raise HttpError(404, "this model's run has no report")
        return FileResponse(report)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())


def _replay(body: bytes):
    """A `receive` that hands the already-read body to a second Request."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


def find_report(source: Path) -> Path | None:
    """The report.html of the study folder a run folder sits in, if there is one."""
    for folder in (source, *source.parents[:3]):
        if (folder / "report.html").is_file():
            return folder / "report.html"
    return None


def choose_runtime(asked: str) -> str:
    """auto: onnxruntime when it is installed (measured 1.3× the requests/s of torch for
    lenet and custom, README "Serve"), else torch."""
    if asked != "auto":
        return asked
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


def serve(source: Path, host: str, port: int, samples: ImageSet | None,
          model_code: str | None = None, runtime: str = "auto", token: str | None = None,
          limits: Limits | None = None, announce: Callable[[], None] = lambda: None) -> None:
    """Serve a run folder or checkpoint with the chosen runtime (onnxruntime: exported to
    a temporary ONNX file first), or an .onnx model with onnxruntime; with a `token`, the
    API needs it; within `limits`. Grad-CAM needs the PyTorch model: a run folder or
    checkpoint keeps one for /v1/explain whatever the runtime; an .onnx model has none.
    The port is taken before the model loads, and `announce` is called once both are
    ready, so that neither a busy port nor a bad model is preceded by a "serving" line."""
    import tempfile

    import uvicorn

    if source.suffix == ".onnx" and runtime == "torch":
        raise CnnlabError(f"{source} is an ONNX model, which runs in onnxruntime only; drop "
                          "--runtime torch, or serve its run folder")
    limits = limits or Limits()
    with listening_socket(host, port) as sock, tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(1)  # one per request thread; as many threads as cores
        model = source
        if source.suffix != ".onnx" and choose_runtime(runtime) == "onnxruntime":
            from cnnlab.export import export_onnx

            model = Path(tmp) / "model.onnx"
            export_onnx(source, model, model_code=model_code)
        predictor = Predictor.load(model, torch.device("cpu"), model_code)
        explainer = (None if source.suffix == ".onnx"
                     else Predictor.load(source, torch.device("cpu"), model_code))
        app = create_app(predictor, samples, find_report(source.resolve()), token, limits,
                         explainer)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                               **uvicorn_settings(limits)))
        announce()
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops on Ctrl-C, re-raises it
            server.run(sockets=[sock])


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), as uvicorn binds one (IPv6 for an address with
    a colon); a port in use or an address not on this machine is a one-line error."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CnnlabError(f"cannot listen on {host} port {port}: {e.strerror}; choose "
                          "another --port, or a --host address of this machine") from None
    return sock
