"""The AEVB-vs-wake-sleep benchmark: its smoke preset end to end, its step-size pilot, its errors."""

import json
import math

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def benchmark():
    return load_benchmark("aevb_vs_wake_sleep")


def test_smoke_preset_writes_results_and_figures(benchmark, data_dir, tmp_path):
    assert benchmark.main(["--preset", "smoke", "--data-dir", str(data_dir), "--out", str(tmp_path), "--workers", "1"]) == 0
    records = json.loads((tmp_path / "aevb_vs_wake_sleep.json").read_text())
    required = {"dataset", "latent_dim", "method", "samples_seen", "train_bound", "test_bound", "seconds"}
    assert records and all(required <= set(record) for record in records)
    grid = benchmark.PRESETS["smoke"].grids
    expected = {(dataset, nz, method) for dataset, g in grid.items() for nz in g.latent_dims for method in benchmark.METHODS}
    assert {(r["dataset"], r["latent_dim"], r["method"]) for r in records} == expected
    assert all(math.isfinite(r["train_bound"]) and math.isfinite(r["test_bound"]) for r in records)
    summary = json.loads((tmp_path / "aevb_vs_wake_sleep_summary.json").read_text())
    assert summary["command"].startswith("python benchmarks/aevb_vs_wake_sleep.py --preset smoke")
    assert set(summary["learning_rates"].values()) <= set(benchmark.LEARNING_RATES)
    assert len(summary["final"]) == len(expected) and not any(r["error"] for r in summary["final"])
    figure3 = json.loads((tmp_path / "figure3.json").read_text())
    assert "importance sampling" in figure3["estimator"]
    assert {(r["train_size"], r["method"], r["split"]) for r in figure3["records"]} == {
        (size, method, split) for size in (200, 400) for method in ("aevb-meanfield", "wake-sleep")
        for split in ("train", "test")}
    for name in ("aevb_vs_wake_sleep.png", "figure3.png", "aevb_vs_wake_sleep.md"):
        assert (tmp_path / name).stat().st_size > 0


def test_pilot_keeps_the_best_final_training_bound_and_refuses_total_divergence(benchmark):
    network = benchmark.Network("frey-face", "frey-face", 2, 200, 1765, None)

    def result(method, lr, final, error=None):
        job = benchmark.Job("pilot", network, method, {"lr": lr}, 0.0)
        return {"job": job, "history": [{"train_elbo": final}], "error": error}

    results = [result("rws", 0.01, 10.0), result("rws", 0.02, 30.0), result("rws", 0.1, float("nan")),
               result("wake-sleep", 0.01, 5.0), result("wake-sleep", 0.1, 50.0, error="diverged")]
    chosen, scores = benchmark.choose_learning_rates(results)
    assert chosen == {("frey-face", "rws"): 0.02, ("frey-face", "wake-sleep"): 0.01}
    assert scores[("frey-face", "rws")][0.1] == -math.inf
    with pytest.raises(benchmark.TrainingError, match="every step size"):
        benchmark.choose_learning_rates([result("rws", 0.01, float("nan"))])


@pytest.mark.parametrize("argv, message", [(["--workers", "-1", "--device", "cpu"], "--workers must be positive"),
                                           (["--preset", "nope"], "invalid choice")])
def test_bad_arguments_end_with_one_line(benchmark, capsys, argv, message):
    try:
        status = benchmark.main(argv)
    except SystemExit as exit_:  # argparse refuses unknown choices itself
        status = exit_.code
    assert status == 2
    assert message in capsys.readouterr().err
