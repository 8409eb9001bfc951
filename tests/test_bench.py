"""`cnnlab bench` runs end to end and reports what it measured; timings are never asserted."""

import json

import pytest

from cnnlab.cli import main
from conftest import one_line_error, write_dataset


def bench(tmp_path, capsys, n_train: int, *args: str) -> tuple[str, dict]:
    """`cnnlab bench ARGS` on synthetic data: what it printed, and its JSON."""
    data = write_dataset(tmp_path / "data", n_train=n_train, n_test=40)
    out = tmp_path / "bench.json"
    assert main(["bench", *args, "--data-dir", str(data), "--json", str(out)]) == 0
    return capsys.readouterr().out, json.loads(out.read_text())


@pytest.mark.slow
def test_bench_writes_table_and_json(tmp_path, capsys):
    printed, result = bench(tmp_path, capsys, 256, "--models", "lenet,custom,speednet",
                            "--steps", "2", "--repeats", "2")
    assert result["batch_size"] == 64 and result["eval_images"] == 40
    assert result["matmul_peak_gflops"] > 0
    for name in ("lenet", "custom", "speednet"):  # speednet: no recipe of its own name
        model = result["models"][name]
        assert f"| {name} |" in printed
        for kind in ("train", "eval"):
            side = model[kind]
            assert len(side["reference"]["samples"]) == len(side["cnnlab"]["samples"]) == 2
            assert side["ratio"] == side["cnnlab"]["median"] / side["reference"]["median"]
        train = model["train"]
        assert len(train["model_only"]["samples"]) == 2
        assert train["ceiling_ratio"] == (train["model_only"]["median"]
                                          / train["reference"]["median"])
        gflops = model["train"]["effective_gflops"]["cnnlab"]
        expected = model["train"]["cnnlab"]["median"] * 6 * model["macs_per_image"] / 1e9
        assert gflops == pytest.approx(expected)
    assert result["models"]["custom"]["macs_per_image"] == 87_201_024


def test_bench_refuses_more_steps_than_the_data_holds(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n_train=100, n_test=10)
    code = main(["bench", "--models", "lenet", "--steps", "2", "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert code == 2
    assert "need 128 training images; the data has 100" in err


@pytest.mark.slow
def test_bench_times_recipes_in_their_own_loop(tmp_path, capsys):
    # 3 warm-up and 3 × 1 timed steps: more than sprint's 4 epochs of 1 step, which its
    # one-cycle schedule would refuse if the bench sized the schedule by --steps alone
    printed, result = bench(tmp_path, capsys, 600, "--recipes", "fast,sprint", "--steps", "1",
                            "--repeats", "3")
    assert result["models"] == {}  # --recipes alone times no study network
    assert list(result["recipes"]) == ["fast", "sprint"]
    fast = result["recipes"]["fast"]
    assert fast["batch_size"] == 256 and len(fast["train"]["samples"]) == 3
    assert fast["train"]["gflops"] == pytest.approx(
        fast["train"]["median"] * 6 * fast["macs_per_image"] / 1e9)
    percent = 100 * fast["train"]["gflops"] / result["matmul_peak_gflops"]
    assert "| fast | 256 |" in printed and f"| {percent:.0f} % |" in printed


def test_bench_refuses_unknown_recipes_and_too_few_images(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n_train=300, n_test=10)
    assert main(["bench", "--recipes", "fastest", "--data-dir", str(data)]) == 2
    assert "unknown recipe fastest" in capsys.readouterr().err
    # refused before lenet is measured: one line, no "benchmarking" before it
    assert "2 steps of recipe fast's batch 256 need 512 training images; the data has 300" in (
        one_line_error(capsys, ["bench", "--models", "lenet", "--recipes", "fast", "--steps",
                                "2", "--data-dir", str(data)]))
    assert "cannot create the folder of --json" in one_line_error(
        capsys, ["bench", "--models", "lenet", "--steps", "1", "--data-dir", str(data),
                 "--json", str(next(data.glob("*.gz")) / "bench.json")])
