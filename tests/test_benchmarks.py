"""The AEVB-vs-wake-sleep benchmark: its smoke preset end to end, where results go, continuing a
stopped benchmark, its step-size pilot, its errors; where the latent-structure benchmark writes."""

import dataclasses
import hashlib
import json
import math
import shutil
import signal
import subprocess
import types
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from conftest import REPO, load_benchmark, shared_data_dir
from pyro_vae.checkpoint import load_checkpoint

RESULTS = REPO / "benchmarks" / "results"


@pytest.fixture(scope="module")
def benchmark():
    return load_benchmark("aevb_vs_wake_sleep")


def committed_files() -> dict:
    """The bytes of every committed result file, by path (run directories aside)."""
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(RESULTS.rglob("*"))
            if path.is_file() and "runs" not in path.relative_to(RESULTS).parts}


@pytest.fixture(scope="module")
def smoke(benchmark, tmp_path_factory):
    """The smoke preset run once as a user would, from another working directory and without
    --out: its output folder, and the committed results before and after."""
    data = shared_data_dir()
    if not (data / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"no MNIST copy under {data}: set PYRO_VAE_DATA")
    cwd = tmp_path_factory.mktemp("elsewhere")
    before = committed_files()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        torch.set_num_threads(1)
        assert benchmark.main(["--preset", "smoke", "--data-dir", str(data), "--workers", "1"]) == 0
    return types.SimpleNamespace(out=cwd / "runs" / "benchmarks" / "smoke", before=before, after=committed_files())


def bounds(out) -> tuple:
    """Every bound and log p(x) of a benchmark's results, wall times left out."""
    figure2 = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((out / "aevb_vs_wake_sleep.json").read_text())]
    figure3 = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((out / "figure3.json").read_text())["records"]]
    return figure2, figure3


def test_smoke_preset_writes_results_and_figures(benchmark, smoke):
    records = json.loads((smoke.out / "aevb_vs_wake_sleep.json").read_text())
    required = {"dataset", "latent_dim", "method", "samples_seen", "train_bound", "test_bound", "seconds"}
    assert records and all(required <= set(record) for record in records)
    grid = benchmark.PRESETS["smoke"].grids
    expected = {(dataset, nz, method) for dataset, g in grid.items() for nz in g.latent_dims for method in benchmark.METHODS}
    assert {(r["dataset"], r["latent_dim"], r["method"]) for r in records} == expected
    assert all(math.isfinite(r["train_bound"]) and math.isfinite(r["test_bound"]) for r in records)
    summary = json.loads((smoke.out / "aevb_vs_wake_sleep_summary.json").read_text())
    assert summary["command"].startswith("python benchmarks/aevb_vs_wake_sleep.py --preset smoke")
    assert set(summary["learning_rates"].values()) <= set(benchmark.LEARNING_RATES)
    assert len(summary["final"]) == len(expected) and not any(r["error"] for r in summary["final"])
    figure3 = json.loads((smoke.out / "figure3.json").read_text())
    assert "importance sampling" in figure3["estimator"]
    assert {(r["train_size"], r["method"], r["split"]) for r in figure3["records"]} == {
        (size, method, split) for size in (200, 400) for method in ("aevb-meanfield", "wake-sleep")
        for split in ("train", "test")}
    for name in benchmark.OUTPUTS:
        assert (smoke.out / name).stat().st_size > 0


def test_a_preset_without_figure3_writes_figure2_alone(benchmark, tmp_path, monkeypatch):
    data = shared_data_dir()
    if not (data / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"no MNIST copy under {data}: set PYRO_VAE_DATA")
    smoke = benchmark.PRESETS["smoke"]
    monkeypatch.setitem(benchmark.PRESETS, "smoke", dataclasses.replace(
        smoke, figure3=benchmark.Figure3(train_sizes=()), methods=("aevb-meanfield",)))
    torch.set_num_threads(1)
    assert benchmark.main(["--preset", "smoke", "--data-dir", str(data), "--workers", "1", "--out", str(tmp_path)]) == 0
    assert {r["method"] for r in json.loads((tmp_path / "aevb_vs_wake_sleep.json").read_text())} == {"aevb-meanfield"}
    assert json.loads((tmp_path / "figure3.json").read_text())["records"] == []
    assert not (tmp_path / "figure3.png").exists() and (tmp_path / "aevb_vs_wake_sleep.png").exists()
    assert sorted(path.name for path in (tmp_path / "runs" / "smoke").iterdir() if path.name.startswith("pilot-")) == [
        f"pilot-frey-face-2-aevb-meanfield-{lr}" for lr in sorted(benchmark.LEARNING_RATES)]


def test_smoke_preset_leaves_the_committed_results_alone(smoke):
    assert smoke.before and smoke.after == smoke.before


@pytest.fixture
def no_training(benchmark, monkeypatch):
    """Training fails the test: a refusal must come before any run starts."""
    def fail(*args, **kwargs):
        raise AssertionError("trained although the results folder should have been refused")
    monkeypatch.setattr(benchmark, "train", fail)
    monkeypatch.setattr(benchmark, "resume", fail, raising=False)


@pytest.mark.parametrize("argv", [["--preset", "cpu"], ["--preset", "smoke", "--out", str(RESULTS)]])
def test_committed_results_are_replaced_only_with_overwrite(benchmark, no_training, capsys, argv):
    before = committed_files()
    assert benchmark.main(argv + ["--device", "cpu", "--workers", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "committed results" in error and "pass --overwrite" in error
    assert committed_files() == before


def test_committed_presets_keep_their_run_records_in_the_repository(benchmark):
    """A committed preset writes to its folder of benchmarks/results/, where git keeps each run's
    records (so a fresh clone continues the benchmark) but not its checkpoints, plots, lock or data."""
    assert benchmark.output_folder("figure2", None) == RESULTS / "figure2"
    assert benchmark.output_folder("cpu", None) == RESULTS
    assert benchmark.output_folder("smoke", None) == Path("runs") / "benchmarks" / "smoke"
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    runs = Path("benchmarks", "results", "figure2", "runs", "figure2")
    kept = [runs / "invocations.json"] + [runs / "figure2-mnist-3-rws-0.01" / name for name in
                                          ("config.json", "history.json", "metrics.json", benchmark.OUTCOME)]
    left_out = [runs / "figure2-mnist-3-rws-0.01" / name for name in ("checkpoint.pt", "samples.png", ".lock")]
    left_out += [runs / "mnist-1000" / "MNIST" / "raw" / "train-images-idx3-ubyte", Path("runs", "benchmarks", "x")]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(map(str, kept + left_out)),
                             capture_output=True, text=True, cwd=REPO).stdout.split()
    assert sorted(ignored) == sorted(map(str, left_out))


def test_a_stopped_benchmark_continues_where_it_stopped(benchmark, smoke, tmp_path, monkeypatch, capsys):
    """Killed while writing the second checkpoint of its first Figure 2 run, then stopped by SIGTERM
    in its first Figure 3 run, each time given the same command again: finished runs are read back,
    stopped ones continue from their checkpoints, and the results equal the uninterrupted run's."""
    argv = ["--preset", "smoke", "--data-dir", str(shared_data_dir()), "--out", str(tmp_path), "--workers", "1"]
    runs = tmp_path / "runs" / "smoke"
    save = torch.save

    def stop_at(kind: str, stop):
        """torch.save that calls ``stop`` at the epoch-2 checkpoint of the first run of ``kind``."""
        def hooked(state, *args, **kwargs):
            if isinstance(state, dict) and state.get("epoch") == 2 and f"{kind}-" in Path(state["config"]["out"]).name:
                stop()
            return save(state, *args, **kwargs)
        return hooked

    def kill():
        raise KeyboardInterrupt  # as SIGKILL would: no checkpoint, no clean-up

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", stop_at("figure2", kill))
        with pytest.raises(KeyboardInterrupt):
            benchmark.main(argv)
    written = {path: path.stat().st_mtime_ns for path in runs.glob("*/checkpoint.pt")}
    assert len([path for path in written if path.parent.name.startswith("pilot-")]) == 18
    stopped = [path.parent for path in written if path.parent.name.startswith("figure2-")]
    assert len(stopped) == 1 and load_checkpoint(stopped[0] / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "aevb_vs_wake_sleep.json").exists()

    # Other settings for the same run directories are refused, before anything is trained.
    capsys.readouterr()
    assert benchmark.main(argv + ["--seed", "1"]) == 2
    assert "holds a run with other settings (seed 0, now 1)" in capsys.readouterr().err

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", stop_at("figure3", lambda: signal.raise_signal(signal.SIGTERM)))
        assert benchmark.main(argv) == 128 + signal.SIGTERM
    output = capsys.readouterr()
    assert "18 pilot runs: 18 over already, 0 to continue from a checkpoint, 0 to start" in output.out
    assert "8 figure2/figure3 runs: 0 over already, 1 to continue from a checkpoint, 7 to start" in output.out
    assert "stopped by SIGTERM: give the same command to continue" in output.err

    assert benchmark.main(argv) == 0
    output = capsys.readouterr().out
    assert "8 figure2/figure3 runs: 4 over already, 1 to continue from a checkpoint, 3 to start" in output
    assert "26 runs done, 0 running, 0 left" in output
    for path, mtime in written.items():
        assert (path.stat().st_mtime_ns == mtime) == path.parent.name.startswith("pilot-"), path
    assert bounds(tmp_path) == bounds(smoke.out)
    # Every invocation is logged with its length and how it ended; the summary adds them up.
    invocations = json.loads((runs / "invocations.json").read_text())
    assert [entry["ended"] for entry in invocations] == ["failed", "failed", "stopped by SIGTERM", "complete"]
    summary = json.loads((tmp_path / "aevb_vs_wake_sleep_summary.json").read_text())
    assert summary["invocations_without_length"] == 0 and summary["invocations"][:3] == invocations[:3]
    assert summary["total_wall_seconds"] == pytest.approx(summary["wall_seconds"] + sum(
        entry["seconds"] for entry in invocations[:3]))
    assert summary["wall_seconds"] <= invocations[-1]["seconds"]


def test_a_time_limit_starts_only_the_runs_that_end_within_it(benchmark, tmp_path, monkeypatch, capsys):
    """With a deadline, runs whose estimated time (1.1 x the rate measured so far) would pass it are
    not started: shorter ones fill the time, and the benchmark stops with the rest left."""
    clock = [0.0]

    class Clock(benchmark.Progress):
        def now(self):
            return clock[0]

    started = []

    def run_job(job):  # one second per unit of cost, on the fake clock
        started.append(job.cost)
        clock[0] += job.cost
        history = [{"seconds": job.cost, "train_elbo": -1.0, "test_elbo": -1.0, "samples_seen": 1}]
        return {"job": job, "history": history, "error": None, "log_likelihood": None, "state": "new",
                "stopped": None, "seconds": job.cost, "trained_cost": job.cost}

    monkeypatch.setattr(benchmark, "run_job", run_job)
    network = benchmark.Network("mnist", "mnist", 3, 500, 60_000, None)
    jobs = [benchmark.Job("figure2", network, "rws", {"lr": cost, "epochs": 1, "out": str(tmp_path / str(cost))}, cost)
            for cost in (30.0, 100.0, 10.0, 60.0)]
    with pytest.raises(benchmark.OutOfTime) as stop:
        benchmark.run_jobs(jobs, 1, Clock(1, 0.0), deadline=150.0)
    # 100 (no estimate yet) ends at 100; 60 would end at 166 > 150; 30 ends at 130; 10 at 140.
    assert started == [100.0, 30.0, 10.0] and stop.value.runs_left == 1
    assert "3 runs done, 1 running, 0 left; about 1.0 min left" in capsys.readouterr().out  # the 60 s run
    started.clear()
    assert len(benchmark.run_jobs(jobs, 1, Clock(1, 0.0))) == 4 and started == [100.0, 60.0, 30.0, 10.0]


def test_run_times_are_estimated_per_network_and_method(benchmark, tmp_path):
    """A small network's seconds per unit of cost are its own: a Figure 3 run (100 hidden units) is
    not timed by the 500-unit runs of the same data set and method."""
    progress = benchmark.Progress(1, 0.0)
    large, small = (benchmark.Network(group, "mnist", 3, hidden, 60_000, None)
                    for group, hidden in (("mnist", 500), ("figure3-1000", 100)))
    jobs = [benchmark.Job(kind, network, "aevb-meanfield", {"lr": 0.01, "epochs": 1, "out": str(tmp_path / kind)}, 100.0)
            for kind, network in (("figure2", large), ("figure3", small), ("pilot", small))]
    progress.plan(jobs, [("new", 0), ("new", 0), ("over", 0)], [])

    def result(job, seconds, trained):
        return {"job": job, "history": [{"seconds": seconds}], "trained_cost": job.cost if trained else 0.0,
                "seconds": seconds}

    progress.finished(result(jobs[2], 500.0, trained=False))  # read back: 5 s per unit
    progress.finished(result(jobs[0], 100.0, trained=True))  # trained here: 1 s per unit
    assert progress.seconds(jobs[1], 10.0) == 50.0 and progress.seconds(jobs[0], 10.0) == 10.0


def test_runs_on_another_machine_are_timed_by_their_pilots_scaled_to_this_one(benchmark, tmp_path):
    """The pilots ran on one machine, the runs read back perhaps on several: once a network and
    method is trained here, the others are timed by their pilots' rate times this machine's ratio
    to the pilots' machine."""
    progress = benchmark.Progress(1, 0.0)
    mnist, frey = (benchmark.Network(dataset, dataset, 3, hidden, size, None)
                   for dataset, hidden, size in (("mnist", 500, 60_000), ("frey-face", 200, 1765)))
    jobs = [benchmark.Job(kind, network, "wake-sleep", {"lr": 0.01, "epochs": 1, "out": str(tmp_path / name)}, 100.0)
            for kind, network, name in (("pilot", mnist, "a"), ("pilot", frey, "b"), ("figure2", mnist, "c"),
                                        ("figure2", mnist, "d"), ("figure2", frey, "e"))]
    progress.plan(jobs, [("over", 0), ("over", 0), ("over", 0), ("new", 0), ("new", 0)], [])
    for job, seconds in ((jobs[0], 600.0), (jobs[1], 300.0), (jobs[2], 200.0)):  # read back: 6, 3 and 2 s per unit
        progress.finished({"job": job, "history": [{"seconds": seconds}], "trained_cost": 0.0, "seconds": 0.0})
    assert progress.machine_factor() is None and progress.seconds(jobs[4], 10.0) == 30.0
    progress.finished({"job": jobs[3], "history": [{"seconds": 200.0}], "trained_cost": 100.0, "seconds": 200.0})
    assert progress.machine_factor() == pytest.approx(1 / 3)  # 2 s per unit here against the pilot's 6
    assert progress.seconds(jobs[4], 10.0) == pytest.approx(10.0)


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


def test_the_final_table_puts_each_run_beside_the_papers_curve(benchmark):
    """Ours at 10^6 and 10^7 samples, interpolated on a log axis between evaluations, beside the
    paper's curve of the same panel, method and split; methods the paper lacks get no row."""
    records = [{"dataset": "mnist", "latent_dim": 20, "method": method, "samples_seen": n,
                "train_bound": -200.0 + 10 * math.log10(n), "test_bound": -201.0 + 10 * math.log10(n)}
               for method in ("aevb-meanfield", "rws") for n in (10**8, 10**6 * 0.9, 10**5, 1.2 * 10**6)]
    paper = {("figure2", ("mnist", 20), "aevb", "train"): [[10**6, -126.3], [10**7, -104.2]]}
    [row] = benchmark.paper_comparison(records, paper)
    assert row["method"] == "aevb-meanfield"
    assert row["at"][10**6]["train"] == pytest.approx(-140.0) and row["at"][10**7]["test"] == pytest.approx(-131.0)
    assert row["at"][10**6]["paper_train"] == -126.3 and row["at"][10**6]["paper_test"] is None
    summary = {"preset": "figure2", "command": "c", "wall_seconds": 60.0, "machine": {"device": "cpu"}, "workers": 2,
               "load_average_start": [0.0], "load_average_end": [0.0], "final": [], "paper": [row]}
    assert "| MNIST | 20 | aevb-meanfield | -140.0 / -126.3 | -141.0 / – | -130.0 / -104.2 | -131.0 / – |" in (
        benchmark.markdown(summary, []))
    committed = benchmark.paper_curves()
    assert len([key for key in committed if key[0] == "figure2"]) == 9 * 2 * 2


def test_a_panel_shows_the_leaders_last_decade_and_the_curves_that_end_near_it(benchmark):
    leader = [(10**5, -200.0), (10**6, -130.0), (10**7, -100.0)]  # 30 nats over its last decade
    close = [(10**5, -300.0), (10**7, -180.0)]  # ends within 3 x 30 nats of the top: shown
    far = [(10**5, -500.0), (10**7, -450.0)]  # ends far below: below the panel
    low, high = benchmark.panel_limits([leader, far, close])
    assert low == pytest.approx(-180.0 - 1.5) and high == pytest.approx(-100.0 + 1.5)
    assert benchmark.panel_limits([leader, far]) == pytest.approx((-131.5, -98.5))
    assert benchmark.panel_limits([[(10**5, math.nan)]]) is None


def test_the_wall_time_adds_up_every_invocation_and_says_which_it_lacks(benchmark):
    invocations = [{"started": "a"}, {"started": "b", "seconds": 5400.0}, {"started": "c", "seconds": 1.0}]
    total, unrecorded = benchmark.total_wall_seconds(invocations, 1800.0)  # the last one's own clock
    assert (total, unrecorded) == (7200.0, 1)
    summary = {"preset": "figure2", "command": "c", "wall_seconds": 1800.0, "total_wall_seconds": total,
               "invocations_without_length": unrecorded, "invocations": invocations, "machine": {"device": "cpu"},
               "workers": 2, "load_average_start": [0.0], "load_average_end": [0.0], "final": []}
    assert ("30.0 min wall time in the last of 3 invocations of this command, 2.0 h in all but 1 whose length was "
            "not recorded") in benchmark.markdown(summary, [])


def test_figure2_preset_is_the_papers_grid(benchmark):
    preset = benchmark.PRESETS["figure2"]
    assert {dataset: (grid.latent_dims, grid.hidden_dim) for dataset, grid in preset.grids.items()} == {
        "mnist": ((3, 5, 10, 20, 200), 500), "frey-face": ((2, 5, 10, 20), 200)}
    assert all(grid.samples >= 10**7 for grid in preset.grids.values()) and preset.figure3.samples >= 10**7
    assert set(preset.methods) == {"aevb-meanfield", "aevb-trace", "wake-sleep", "rws"}
    assert preset.init_std == benchmark.PAPER_INIT_STD and benchmark.PRESETS["cpu"].init_std == 0.01


def test_the_small_init_preset_runs_mnist_again_from_std_0_01_for_aevb_and_wake_sleep(benchmark, tmp_path):
    preset = benchmark.PRESETS["figure2-small-init"]
    setting = benchmark.Setting("cpu", None, 0, tmp_path)
    figure3 = benchmark.figure3_networks(preset.figure3, setting)
    pilots = benchmark.pilot_jobs(preset, figure3, setting)
    jobs = benchmark.experiment_jobs(preset, figure3, defaultdict(lambda: 0.01), setting)
    assert figure3 == [] and len(pilots) == 2 * len(benchmark.LEARNING_RATES)
    assert sorted((job.network.latent_dim, job.method) for job in jobs) == sorted(
        (nz, method) for nz in (3, 5, 10, 20, 200) for method in ("aevb-meanfield", "wake-sleep"))
    assert {job.config["init_std"] for job in pilots + jobs} == {0.01}
    assert {job.config["epochs"] for job in jobs} == {167} and {job.kind for job in jobs} == {"figure2"}
    assert benchmark.output_folder("figure2-small-init", None) == RESULTS / "figure2_small_init"


@pytest.mark.parametrize("argv, message", [(["--workers", "-1", "--device", "cpu", "--out", "{tmp}"],
                                            "--workers must be positive"),
                                           (["--hours", "0", "--device", "cpu", "--out", "{tmp}"],
                                            "--hours must be positive"),
                                           (["--preset", "nope"], "invalid choice")])
def test_bad_arguments_end_with_one_line(benchmark, capsys, tmp_path, argv, message):
    try:
        status = benchmark.main([word.format(tmp=tmp_path) for word in argv])
    except SystemExit as exit_:  # argparse refuses unknown choices itself
        status = exit_.code
    assert status == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def latent_structure(monkeypatch):
    """The latent-structure benchmark with a stand-in for training that returns fixed metrics."""
    module = load_benchmark("latent_structure")
    metrics = {"test_log_likelihood": -90.0, "test_log_likelihood_stderr": 0.1, "test_log_likelihood_particles": 10,
               "test_elbo": -95.0, "train_elbo": -94.0, "seconds": 60.0, "samples_seen": 600, "test_accuracy": 0.9}
    monkeypatch.setattr(module, "train", lambda config: types.SimpleNamespace(metrics=metrics))
    return module


def test_latent_structure_writes_to_a_scratch_folder_by_default(latent_structure, tmp_path, monkeypatch):
    before = committed_files()
    monkeypatch.chdir(tmp_path)
    assert latent_structure.main(["--only", "m2"]) == 0
    written = json.loads((tmp_path / "runs" / "benchmarks" / "latent_structure" / "latent_structure.json").read_text())
    assert list(written) == ["m2"] and written["m2"]["test_accuracy"] == 0.9
    assert committed_files() == before


def test_latent_structure_replaces_committed_results_only_with_overwrite(latent_structure, tmp_path, capsys):
    before = committed_files()
    argv = ["--only", "m2", "--runs", str(tmp_path), "--out", str(RESULTS / "latent_structure.json")]
    assert latent_structure.main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert committed_files() == before
