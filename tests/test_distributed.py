"""Data-parallel training with torch.distributed: two CPU processes on the gloo backend."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae import TrainConfig, train
from pyro_vae.checkpoint import load_checkpoint

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def run(command, **env):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent), **env}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


def test_gradients_are_averaged_across_processes():
    result = run(TORCHRUN + [str(Path(__file__).parent / "distributed" / "gradient_check.py")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "largest difference" in result.stdout


def test_two_processes_train_like_one(data_dir, tmp_path):
    """The distributed run's test ELBO lies within the spread of single-process runs of the same
    configuration with different seeds: the same distribution of results."""
    options = dict(dataset="mnist", train_size=2000, epochs=4, latent_dim=5, hidden_dims=[64], batch_size=100,
                   eval_particles=10, device="cpu")
    result = run(TORCHRUN + ["-m", "pyro_vae", "train", "--dataset", "mnist", "--data-dir", str(data_dir), "--train-size", "2000",
                             "--epochs", "4", "--latent-dim", "5", "--hidden-dim", "64", "--eval-particles", "10",
                             "--device", "cpu", "--out", str(tmp_path / "ddp"), "--quiet"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("test ELBO") == 1  # only rank 0 reports
    distributed = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert distributed["samples_seen"] == 4 * 2000
    single = [train(TrainConfig(data_dir=str(data_dir), seed=seed, out=str(tmp_path / f"single{seed}"), **options),
                    progress=False).metrics["test_elbo"] for seed in range(3)]
    spread = max(single) - min(single)
    assert min(single) - max(spread, 1.0) <= distributed["test_elbo"] <= max(single) + max(spread, 1.0), (
        distributed["test_elbo"], single)


@pytest.mark.parametrize("batch_size", [1])
def test_a_batch_smaller_than_the_processes_is_refused(data_dir, tmp_path, batch_size):
    result = run(TORCHRUN + ["-m", "pyro_vae", "train", "--data-dir", str(data_dir), "--dataset", "mnist",
                             "--batch-size", str(batch_size), "--device", "cpu", "--out", str(tmp_path), "--quiet"])
    assert result.returncode != 0
    assert "batch-size 1 is smaller than the 2 processes" in result.stderr


def test_a_two_process_run_stopped_by_sigterm_resumes_exactly(tmp_path):
    """Every process's random streams and the epoch's position are restored: the resumed run ends with
    the parameters, bit for bit, of an uninterrupted run."""
    # a user's model, defined outside pyro_vae and rebuilt from its import path when resumed
    command = TORCHRUN + ["-m", "pyro_vae", "train", "--model", "user_models:mixture_vae", "--objective", "trace",
                          "--epochs", "6", "--latent-dim", "2", "--hidden-dim", "8", "--batch-size", "20",
                          "--eval-particles", "2", "--device", "cpu", "--quiet", "--out"]
    whole = run(command + [str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr
    stopped_dir = tmp_path / "stopped"
    process = subprocess.Popen(command + [str(stopped_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)})
    deadline = time.monotonic() + 300
    while not (stopped_dir / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0, "the run ended before it was stopped: lengthen it"
    assert "stopped by SIGTERM" in stderr
    stopped = load_checkpoint(stopped_dir / "checkpoint.pt")
    assert stopped["epoch"] < 6 and len(stopped["rng"]["ranks"]) == 2
    resumed = run(TORCHRUN + ["-m", "pyro_vae", "train", "--resume", str(stopped_dir), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = (load_checkpoint(folder / "checkpoint.pt")["model"] for folder in (tmp_path / "whole", stopped_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_a_callbacks_stop_between_syncs_is_kept_until_the_next_sync(tmp_path):
    """Distributed, a stop is agreed on at the syncs (every 50 steps, and at the end of an epoch): a callback's
    stop at step 3 of 9 ends the run at the epoch's end, with its checkpoint, on every process."""
    result = run(TORCHRUN + [str(Path(__file__).parent / "distributed" / "callback_stop.py"), str(tmp_path / "r")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped early True at step None" in result.stdout  # stopped after epoch 1's checkpoint, not epoch 2
    assert len(json.loads((tmp_path / "r" / "history.json").read_text())) == 1
