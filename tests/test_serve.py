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
    app = create_app(Predictor.load(run_dir), test_set, explainer=Predictor.load(run_dir))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def onnx_model(run_dir, tmp_path_factory) -> Path:
    from cnnlab.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(run_dir, out)
    return out


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


def test_explain_gives_the_prediction_and_its_grad_cam(client, run_dir, test_set):
    from cnnlab.explain import explain_pictures

    image = png(test_set.images[5].numpy())
    [direct] = explain_pictures(Predictor.load(run_dir), [image], top=3)
    raw = client.post("/v1/explain", content=image, headers={"content-type": "image/png"})
    form = client.post("/v1/explain?top=2", files={"file": ("x.png", image, "image/png")})
    for response, k in ((raw, 3), (form, 2)):
        assert response.status_code == 200, response.text
        body = response.json()
        assert [t["class"] for t in body["top"]] == [c for c, _ in direct.prediction.top[:k]]
        assert torch.equal(torch.tensor(body["input"], dtype=torch.uint8), test_set.images[5])
        cam = torch.tensor(body["cam"])
        assert cam.shape == (28, 28) and cam.min() >= 0 and cam.max() <= 1
        assert torch.allclose(cam, direct.cam, atol=5e-4)
    assert client.get("/v1/model").json()["explain"] is True


def test_an_onnx_model_serves_predictions_but_says_it_cannot_explain(onnx_model, test_set):
    from cnnlab.explain import ONNX_NO_GRADCAM

    image = png(test_set.images[0].numpy())
    with TestClient(create_app(Predictor.load(onnx_model), test_set)) as onnx_client:
        assert onnx_client.get("/v1/model").json()["explain"] is False
        response = onnx_client.post("/v1/explain", content=image,
                                    headers={"content-type": "image/png"})
        assert response.status_code == 501 and response.json() == {"error": ONNX_NO_GRADCAM}
        assert onnx_client.post("/v1/predict", content=image,
                                headers={"content-type": "image/png"}).status_code == 200


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buffer, format="PNG")  # 36 M pixels, a few KB
    return buffer.getvalue()


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/explain"])
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
def test_bad_input_is_a_4xx_with_a_json_error(client, path, request_args, status, message):
    response = client.post(path, **request_args)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_bad_query_and_unknown_sample(client, test_set):
    image = png(test_set.images[0].numpy())
    for path in ("/v1/predict", "/v1/explain"):
        response = client.post(f"{path}?top=11", content=image,
                               headers={"content-type": "image/png"})
        assert response.status_code == 422 and "top must be between 1 and 10" in response.text
        response = client.post(f"{path}?top=abc", content=image,
                               headers={"content-type": "image/png"})
        assert response.status_code == 422
        assert response.json()["error"].startswith("top: Input should be a valid integer")
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
        assert model["runtime"] == runtime and model["explain"] is True
        explain = urllib.request.Request(f"{base}/v1/explain", data=bodies[0],
                                         headers={"Content-Type": "image/png"})
        explained = json.loads(urllib.request.urlopen(explain, timeout=30).read())
        assert explained["top"][0]["index"] == expected[0] and len(explained["cam"]) == 28
        assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200


def test_binding_another_address_warns(capsys, run_dir):
    from conftest import one_line_error

    assert "--port must be between" in one_line_error(
        capsys, ["serve", str(run_dir), "--port", "0"])
    assert "--host 'nowhere'" in one_line_error(capsys, ["serve", str(run_dir), "--host",
                                                         "nowhere", "--port", "0"])


WARM_PIXELS = """const d = document.getElementById("cam").getContext("2d")
  .getImageData(0, 0, 168, 168).data;
let warm = 0;
for (let i = 0; i < d.length; i += 4) if (d[i] > d[i + 2] + 20) warm++;
return warm;"""


@contextmanager
def chromium() -> Iterator:
    """Headless Debian chromium driven by Selenium."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver (make test does)")
    options = Options()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,800"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.mark.server
@pytest.mark.browser
def test_the_page_in_a_real_browser(run_dir, onnx_model, synthetic_dir, test_set, tmp_path):
    """On a server that needs a token: open the page with the token in its URL (taken out
    of the address bar, sent with every API call), upload a test-set image, read the
    predicted class and see the Grad-CAM overlay drawn beside the bars (a screenshot is kept
    as a test artifact); then an ONNX model: the prediction, and one line where the overlay
    would be."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from cnnlab.explain import ONNX_NO_GRADCAM

    index = 7
    picture = tmp_path / "test-image.png"
    picture.write_bytes(png(test_set.images[index].numpy()))
    expected = CLASSES[int(Predictor.load(run_dir).logits(test_set.images[index:index + 1])
                           .argmax(1))]

    def text(browser, element_id: str) -> str:
        return browser.find_element(By.ID, element_id).text

    with chromium() as browser:
        wait = WebDriverWait(browser, 30)
        with served(run_dir, synthetic_dir, options=("--token", "page-token")) as base:
            browser.get(f"{base}/?token=page-token")
            wait.until(lambda b: "epoch" in text(b, "model"))
            assert browser.current_url == f"{base}/"
            browser.find_element(By.ID, "file").send_keys(str(picture))
            wait.until(lambda b: text(b, "top1") != "—" and text(b, "cam-note").endswith(")"))
            assert text(browser, "top1") == expected
            assert len(browser.find_elements(By.CSS_SELECTOR, "#top tr")) == 3
            assert text(browser, "cam-note") == f"where it looked for {expected} (Grad-CAM)"
            assert browser.execute_script(WARM_PIXELS) > 0
            artifacts = Path(__file__).parents[1] / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            assert browser.save_screenshot(str(artifacts / "serve-page.png"))

            browser.find_element(By.ID, "sample").click()
            wait.until(lambda b: text(b, "truth").startswith("test image"))
            assert text(browser, "error") == ""
        with served(onnx_model, synthetic_dir) as base:
            browser.get(f"{base}/")
            wait.until(lambda b: "epoch" in text(b, "model"))
            browser.find_element(By.ID, "file").send_keys(str(picture))
            wait.until(lambda b: text(b, "top1") != "—" and text(b, "cam-note") == ONNX_NO_GRADCAM)
            assert text(browser, "top1") == expected
            assert browser.execute_script(WARM_PIXELS) == 0
