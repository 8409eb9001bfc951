"""`cnnlab serve`: the API through FastAPI's test client, every bad input, a bounded load
test on loopback, and the page."""

import io
import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cnnlab.data import CLASSES, load_split
from cnnlab.inference import Predictor
from cnnlab.serve import create_app
from cnnlab.serve_guard import Limits
from experiments.serve.loadtest import load_test, running_server


@pytest.fixture(scope="module")
def run_dir(synthetic_run) -> Path:
    """A small network trained on synthetic images: the API needs no real data."""
    return synthetic_run


@pytest.fixture(scope="module")
def test_set(synthetic_dir):
    return load_split(synthetic_dir, "test").head(200)


@pytest.fixture(scope="module")
def client(run_dir, test_set):
    with TestClient(create_app(Predictor.load(run_dir), test_set)) as c:
        yield c


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_one_picture_as_raw_body_and_as_multipart(client, run_dir, test_set):
    expected = Predictor.load(run_dir).logits(test_set.images[:1]).softmax(1)[0]
    image = png(test_set.images[0].numpy())
    raw = client.post("/v1/predict?top=5", content=image, headers={"content-type": "image/png"})
    form = client.post("/v1/predict", files={"file": ("x.png", image, "image/png")})
    for response, k in ((raw, 5), (form, 3)):
        assert response.status_code == 200
        body = response.json()
        assert len(body["top"]) == k and body["inverted"] is False and body["ms"] > 0
        first = body["top"][0]
        assert first["index"] == int(expected.argmax())
        assert first["class"] == CLASSES[first["index"]]
        assert first["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
        assert torch.equal(torch.tensor(body["input"], dtype=torch.uint8), test_set.images[0])


def test_batch_predicts_what_evaluate_predicts(client, run_dir, test_set):
    files = [("files", (f"{i}.png", png(test_set.images[i].numpy()), "image/png"))
             for i in range(20)]
    response = client.post("/v1/predict/batch", files=files)
    assert response.status_code == 200
    got = [p["top"][0]["index"] for p in response.json()["predictions"]]
    expected = Predictor.load(run_dir).logits(test_set.images[:20]).argmax(1).tolist()
    assert got == expected
    assert [p["name"] for p in response.json()["predictions"]] == [f"{i}.png" for i in range(20)]


def test_model_health_samples_page_and_docs(client, run_dir, test_set):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["architecture"] == "speednet" and info["runtime"] == "torch"
    assert info["classes"] == list(CLASSES) and info["samples"] == 200
    assert info["test_accuracy"] == pytest.approx(Predictor.load(run_dir).test_acc)
    sample = client.get("/v1/samples/3")
    assert sample.headers["x-class"] == CLASSES[int(test_set.labels[3])]
    decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(sample.content))))
    assert torch.equal(decoded, test_set.images[3])
    page = client.get("/")
    assert page.status_code == 200 and 'id="top1"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no outside assets
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buffer, format="PNG")  # 36 M pixels, a few KB
    return buffer.getvalue()


@pytest.mark.parametrize("request_args, status, message", [
    ({"content": b"x" * (Limits().body_bytes + 1), "headers": {"content-type": "image/png"}},
     413, "over the limit"),
    ({"content": bomb(), "headers": {"content-type": "image/png"}}, 413, "too large"),
    ({"content": png(torch.randint(0, 256, (28, 28), dtype=torch.uint8).numpy())[:400],
      "headers": {"content-type": "image/png"}}, 422, "truncated"),
    ({"content": b"hello, not a picture", "headers": {"content-type": "image/png"}}, 422,
     "not an image"),
    ({"content": b"", "headers": {"content-type": "image/png"}}, 422, "empty"),
    ({"content": b'{"a": 1}', "headers": {"content-type": "application/json"}}, 415,
     "content type 'application/json'"),
    ({"content": b"--xyz\r\nbroken", "headers": {
        "content-type": "multipart/form-data; boundary=xyz"}}, 400, ""),
    ({"files": {"other": ("x.png", b"1", "image/png")}}, 400, "no file in field 'file'"),
])
def test_bad_input_is_a_4xx_with_a_json_error(client, request_args, status, message):
    response = client.post("/v1/predict", **request_args)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_bad_query_and_unknown_sample(client, test_set):
    image = png(test_set.images[0].numpy())
    response = client.post("/v1/predict?top=11", content=image,
                           headers={"content-type": "image/png"})
    assert response.status_code == 422 and "top must be between 1 and 10" in response.text
    assert client.get("/v1/samples/999").status_code == 404


@contextmanager
def served(run_dir: Path, data_dir: Path, runtime: str = "auto",
           options: tuple[str, ...] = ()) -> Iterator[str]:
    """`cnnlab serve` (with more `options`) on a free loopback port: its base URL."""
    with running_server(run_dir, data_dir, runtime, options) as (base, _):
        yield base


@pytest.mark.server
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_a_real_server_under_bounded_concurrent_load(run_dir, test_set, synthetic_dir, runtime):
    """`cnnlab serve` on loopback: 8 clients, 200 requests, all 200 and correct, the
    server healthy afterwards; with either runtime."""
    expected = Predictor.load(run_dir).logits(test_set.images).argmax(1).tolist()
    bodies = [png(x.numpy()) for x in test_set.images]
    with served(run_dir, synthetic_dir, runtime) as base:
        result = load_test(base, bodies, expected, clients=8, requests=200)
        assert result["wrong"] == 0 and result["requests"] == 200
        assert result["p50_ms"] <= result["p99_ms"]
        model = json.loads(urllib.request.urlopen(f"{base}/v1/model", timeout=5).read())
        assert model["runtime"] == runtime
        assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200


def test_binding_another_address_warns(capsys, run_dir):
    from conftest import one_line_error

    assert "--port must be between" in one_line_error(
        capsys, ["serve", str(run_dir), "--port", "0"])
    assert "--host 'nowhere'" in one_line_error(capsys, ["serve", str(run_dir), "--host",
                                                         "nowhere", "--port", "0"])


@pytest.mark.server
@pytest.mark.browser
def test_the_page_in_a_real_browser(run_dir, synthetic_dir, test_set, tmp_path):
    """Headless Debian chromium driven by Selenium, on a server that needs a token: open the
    page with the token in its URL (taken out of the address bar, sent with every API call),
    upload a test-set image, read the predicted class from the page; a screenshot is kept
    as a test artifact."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver (make test does)")
    index = 7
    picture = tmp_path / "test-image.png"
    picture.write_bytes(png(test_set.images[index].numpy()))
    expected = CLASSES[int(Predictor.load(run_dir).logits(test_set.images[index:index + 1])
                           .argmax(1))]
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,800"):
        options.add_argument(flag)
    browser = None
    with served(run_dir, synthetic_dir, options=("--token", "page-token")) as base:
        try:
            browser = webdriver.Chrome(service=Service(chromedriver), options=options)
            wait = WebDriverWait(browser, 30)
            browser.get(f"{base}/?token=page-token")
            wait.until(lambda b: "epoch" in b.find_element(By.ID, "model").text)
            assert browser.current_url == f"{base}/"
            browser.find_element(By.ID, "file").send_keys(str(picture))
            wait.until(lambda b: b.find_element(By.ID, "top1").text != "—")
            assert browser.find_element(By.ID, "top1").text == expected
            assert len(browser.find_elements(By.CSS_SELECTOR, "#top tr")) == 3
            artifacts = Path(__file__).parents[1] / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            assert browser.save_screenshot(str(artifacts / "serve-page.png"))

            browser.find_element(By.ID, "sample").click()
            wait.until(lambda b: b.find_element(By.ID, "truth").text.startswith("test image"))
            assert browser.find_element(By.ID, "error").text == ""
        finally:
            if browser is not None:
                browser.quit()
