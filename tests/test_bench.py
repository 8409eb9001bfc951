"""`cnnlab bench` runs end to end and reports what it measured; timings are never asserted."""

import json
import statistics

import pytest

from cnnlab import bench as bench_module
from cnnlab.bench import cnnlab_train
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
    # sampled at the start and after each repeat of each model: one busy moment skews no %
    assert len(result["matmul_peak_samples"]) == 1 + 2 * 3
    assert result["matmul_peak_gflops"] == statistics.median(result["matmul_peak_samples"]) > 0
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
def test_bench_times_recipes_in_their_own_loop(tmp_path, capsys, monkeypatch):
    # A recipe file is timed beside the built-ins, under the name it was given by. Its one
    # epoch on a one-cycle schedule must hold the 3 warm-up and 3 × 1 timed steps, which
    # one-cycle refuses to run past.
    mine = tmp_path / "narrow.toml"
    mine.write_text('name = "narrow"\nepochs = 1\n[model]\nname = "speednet"\n'
                    'args = { widths = [8, 16] }\n[schedule]\nname = "onecycle"\n')
    timed = []  # which recipe each training measurement ran: they must take turns
    monkeypatch.setattr(bench_module, "cnnlab_train", lambda parts, data, steps: (
        timed.append(parts.recipe.name), cnnlab_train(parts, data, steps))[1])
    printed, result = bench(tmp_path, capsys, 600, "--recipes", f"fast,sprint,{mine}",
                            "--steps", "1", "--repeats", "3")
    assert timed == ["fast", "sprint", "narrow"] * 4  # the warm-ups, then 3 turns
    assert result["models"] == {}  # --recipes alone times no study network
    assert list(result["recipes"]) == ["fast", "sprint", str(mine)]
    assert result["recipes"][str(mine)]["batch_size"] == 64
    assert result["recipes"][str(mine)]["macs_per_image"] < result["recipes"]["sprint"][
        "macs_per_image"]
    assert f"| {mine} | 64 |" in printed
    fast = result["recipes"]["fast"]
    assert fast["batch_size"] == 256 and len(fast["train"]["samples"]) == 3
    assert fast["train"]["gflops"] == pytest.approx(
        fast["train"]["median"] * 6 * fast["macs_per_image"] / 1e9)
    percent = 100 * fast["train"]["gflops"] / result["matmul_peak_gflops"]
    assert "| fast | 256 |" in printed and f"| {percent:.0f} % |" in printed
    sprint = result["recipes"]["sprint"]["train"]
    ratio = statistics.median(a / b for a, b in zip(sprint["samples"], fast["train"]["samples"],
                                                     strict=True))  # paired turn by turn
    assert sprint["vs_first"] == ratio and fast["train"]["vs_first"] == 1.0
    assert f"| {ratio:.2f}× |" in next(line for line in printed.splitlines()
                                       if line.startswith("| sprint |"))
    assert "| 1.00× |" in next(line for line in printed.splitlines()
                               if line.startswith("| fast |"))


def test_bench_refuses_unknown_recipes_and_too_few_images(tmp_path, capsys, monkeypatch):
    data = write_dataset(tmp_path / "data", n_train=300, n_test=10)
    assert "unknown recipe 'fastest'" in one_line_error(
        capsys, ["bench", "--recipes", "fastest", "--data-dir", str(data)])
    assert "names no recipe" in one_line_error(
        capsys, ["bench", "--recipes", ",", "--data-dir", str(data)])
    assert "--recipes names fast more than once" in one_line_error(
        capsys, ["bench", "--recipes", "fast,sprint,fast", "--data-dir", str(data)])
    mine = tmp_path / "mine.toml"
    mine.write_text('[model]\nname = "nets.py:tiny"\n')
    assert "its model nets.py:tiny is your own code" in one_line_error(
        capsys, ["bench", "--recipes", str(mine), "--data-dir", str(data)])
    monkeypatch.setattr("cnnlab.device.cpu_has_amx_bf16", lambda: False)
    mine.write_text('precision = "bf16"\n')
    assert "precision bf16 on cpu" in one_line_error(
        capsys, ["bench", "--recipes", str(mine), "--data-dir", str(data)])
    # refused before lenet is measured: one line, no "benchmarking" before it
    assert "2 steps of recipe fast's batch 256 need 512 training images; the data has 300" in (
        one_line_error(capsys, ["bench", "--models", "lenet", "--recipes", "fast", "--steps",
                                "2", "--data-dir", str(data)]))
    assert "cannot create the folder of --json" in one_line_error(
        capsys, ["bench", "--models", "lenet", "--steps", "1", "--data-dir", str(data),
                 "--json", str(next(data.glob("*.gz")) / "bench.json")])


@pytest.mark.slow
def test_step_phases_times_muon_s_orthogonalisation(tmp_path, capsys, monkeypatch):
    """experiments/recipes/step_phases.py splits a recipe's step by timing the functions the
    loop calls: were Muon to stop calling `cnnlab.muon.orthogonalised`, its column would read
    0 ms, and only this test would say so."""
    from experiments.recipes import step_phases

    data = write_dataset(tmp_path / "data", n_train=1600, n_test=10)
    monkeypatch.setattr("sys.argv", ["step_phases", "--recipes", "sprint,fast", "--steps", "1",
                                     "--data-dir", str(data)])
    # main() wraps Muon's function for good; this puts the plain one back after the test
    monkeypatch.setattr("cnnlab.muon.orthogonalised", step_phases.muon.orthogonalised)
    step_phases.main()
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| sprint |", "| fast |"))]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == "256"
        orthogonalise = float(cells[2 + step_phases.PHASES.index("orthogonalise")].split()[0])
        assert orthogonalise > 0


@pytest.mark.slow
def test_the_gpu_script_ends_with_the_bench_of_its_recipes(tmp_path, capsys, monkeypatch):
    """experiments/recipes/gpu.py gets one call on a borrowed GPU: its last step, the bench
    of the three recipes, is checked here on the CPU (`--quick`, a budget that skips every
    run)."""
    from experiments.recipes import gpu

    data = write_dataset(tmp_path / "data", n_train=600, n_test=10)
    out = tmp_path / "gpu"
    monkeypatch.setattr("sys.argv", ["gpu", "--data-dir", str(data), "--out", str(out),
                                     "--device", "cpu", "--quick", "--budget", "1"])
    gpu.main()
    assert "skipped strong seed 0 fp32" in capsys.readouterr().out
    bench = json.loads((out / "bench.json").read_text())
    assert list(bench["recipes"]) == list(gpu.RECIPES)
    assert all(len(r["train"]["samples"]) == 1 for r in bench["recipes"].values())
