"""Runs lose nothing: folders that hold a run are refused, one run writes a folder at a time, a
stopped run (SIGTERM, SIGINT, a crash after ``checkpoint_every`` steps) resumes exactly, a full
disk keeps the previous checkpoint, and bad options are refused before any data is loaded."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torchvision.datasets import MNIST

from pyro_vae import (CheckpointError, ConfigError, RunLockError, TrainConfig, TrainingInterrupted, load_run, resume,
                      train)
from pyro_vae import checkpoint as checkpoint_module
from pyro_vae.cli import _parser, main
from pyro_vae.rundir import LOCK_NAME, RunLock
from pyro_vae.step import TrainingStep

from test_cli import one_line_error, run_cli

TINY = ["--latent-dim", "2", "--hidden-dim", "8", "--eval-particles", "2", "--device", "cpu", "--quiet"]


def tiny(out, **overrides):
    values = dict(dataset="frey-face", latent_dim=2, hidden_dims=[8], epochs=2, batch_size=50, eval_particles=2,
                  device="cpu", out=str(out))
    return TrainConfig(**(values | overrides))


def parameters(model):
    return {name: value.clone() for name, value in model.state_dict().items()}


def assert_same_run(a, b):
    assert parameters(a.model).keys() == parameters(b.model).keys()
    for name, value in parameters(a.model).items():
        assert torch.equal(value, parameters(b.model)[name]), name
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(a.history) == strip(b.history)


# ---- folders that hold a run ---------------------------------------------------------------------------

def test_a_folder_that_holds_a_run_is_refused_and_left_as_it_was(tmp_path, capsys):
    train(tiny(tmp_path / "run", epochs=1), progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ConfigError, match="holds a run already"):
        train(tiny(tmp_path / "run", epochs=1), progress=False)
    one_line_error(capsys, ["train", "--epochs", "1", "--out", str(tmp_path / "run"), *TINY],
                   "holds a run already", "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_overwrite_deletes_the_old_runs_files_first(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, epochs=1), progress=False)  # a 2-D latent space draws manifold.png
    assert (out / "manifold.png").exists()
    (out / "notes.txt").write_text("the user's own file")
    assert main(["train", "--epochs", "1", "--out", str(out), "--overwrite", *TINY, "--latent-dim", "3"]) == 0
    assert not (out / "manifold.png").exists()
    assert json.loads((out / "config.json").read_text())["config"]["latent_dim"] == 3
    assert (out / "notes.txt").read_text() == "the user's own file"


def test_without_out_every_run_gets_a_fresh_folder_and_is_told_which(tmp_path):
    folders = []
    for _ in range(2):
        result = run_cli("train", "--epochs", "1", *TINY, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "writing the run to runs/frey-face-vae-" in result.stderr
        folders.append(result.stderr.split("writing the run to ")[1].split()[0])
    assert folders[0] != folders[1]
    assert all((tmp_path / folder / "checkpoint.pt").is_file() for folder in folders)


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "file"), *TINY], "is a file, not a folder")


# ---- one writer per folder -----------------------------------------------------------------------------

def test_a_second_training_into_a_folder_being_written_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):  # held by this (live) process, as by a run in progress
        with pytest.raises(RunLockError, match=f"being written by process {os.getpid()}"):
            train(tiny(out, epochs=1), progress=False)
        assert not (out / "config.json").exists()
        assert not issubclass(RunLockError, ConfigError)  # nothing is wrong with the configuration
        one_line_error(capsys, ["train", "--epochs", "1", "--out", str(out), *TINY], "being written by process")
    train(tiny(out, epochs=1), progress=False)
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_a_lock_left_by_a_crashed_run_does_not_block_the_folder(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{os.uname().nodename} {dead_pid}\n")
    train(tiny(out, epochs=1), progress=False)
    assert (out / "metrics.json").exists() and not (out / LOCK_NAME).exists()


# ---- stopping and resuming exactly ---------------------------------------------------------------------

def stop_at_step(monkeypatch, step, action):
    """Make the training step call ``action()`` right after its ``step``-th call."""
    calls = {"n": 0}
    original = TrainingStep.__call__

    def counted(self, batches):
        result = original(self, batches)
        calls["n"] += 1
        if calls["n"] == step:
            action()
        return result

    monkeypatch.setattr(TrainingStep, "__call__", counted)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_mid_epoch_with_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch, signal_number):
    config = dict(epochs=3, batch_size=20, eval_every=1)  # 89 steps per epoch
    whole = train(tiny(tmp_path / "whole", **config), progress=False)
    stop_at_step(monkeypatch, 89 + 30, lambda: os.kill(os.getpid(), signal_number))
    with pytest.raises(TrainingInterrupted, match="epoch 2, after step 30 of 89") as stopped:
        train(tiny(tmp_path / "stopped", **config), progress=False)
    assert stopped.value.signal_number == signal_number
    monkeypatch.undo()
    checkpoint = checkpoint_module.load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert checkpoint["epoch"] == 1 and checkpoint["position"]["step"] == 30
    assert checkpoint["samples_seen"] == 1765 + 30 * 20
    assert_same_run(resume(tmp_path / "stopped", progress=False), whole)


def test_a_crash_resumes_exactly_from_the_last_step_checkpoint(tmp_path, monkeypatch):
    config = dict(epochs=2, batch_size=20, eval_every=2, checkpoint_every=25)
    whole = train(tiny(tmp_path / "whole", **config), progress=False)

    def crash():
        raise RuntimeError("the machine went away")

    stop_at_step(monkeypatch, 89 + 60, crash)
    with pytest.raises(RuntimeError, match="went away"):
        train(tiny(tmp_path / "crashed", **config), progress=False)
    monkeypatch.undo()
    checkpoint = checkpoint_module.load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")
    assert (checkpoint["epoch"], checkpoint["position"]["step"]) == (1, 50)
    assert_same_run(resume(tmp_path / "crashed", progress=False), whole)


def test_sigterm_at_the_command_line_exits_with_its_own_status(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", "--epochs", "10000", "--batch-size", "5",
                                "--out", str(out), *TINY], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # into the training loop
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert len(stderr.strip().splitlines()) == 1 and "stopped by SIGTERM" in stderr and "--resume" in stderr
    checkpoint = checkpoint_module.load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["samples_seen"] > 0


# ---- a full disk ---------------------------------------------------------------------------------------

def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    saves = {"n": 0}
    fsync = os.fsync

    def full_disk_on_the_second_checkpoint(descriptor):
        if os.readlink(f"/proc/self/fd/{descriptor}").split("/")[-1].startswith(".checkpoint.pt."):
            saves["n"] += 1
            if saves["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(descriptor)

    monkeypatch.setattr(checkpoint_module.os, "fsync", full_disk_on_the_second_checkpoint)
    one_line_error(capsys, ["train", "--epochs", "3", "--out", str(out), *TINY],
                   "No space left on device", "previous checkpoint.pt is kept")
    assert checkpoint_module.load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


def test_an_unwritable_folder_says_what_happened(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointError, match="Permission denied.*no config.json was written"):
        train(tiny(tmp_path / "run", epochs=1), progress=False)


# ---- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, text, value", [
    ("--weight-decay", "0.00", 0.0), ("--weight-decay", "0e0", 0.0), ("--seed", "00", 0), ("--particles", "00", 0),
    ("--lr", "1e-3", 1e-3), ("--seed", "007", 7),
])
def test_numbers_are_parsed_before_they_are_checked(option, text, value):
    args = _parser().parse_args(["train", option, text])
    assert getattr(args, option[2:].replace("-", "_")) == value


@pytest.mark.parametrize("option, text, fragment", [
    ("--weight-decay", "-0.1", "zero or a positive number"), ("--weight-decay", "nan", "zero or a positive number"),
    ("--lr", "0.0", "positive number"), ("--lr", "inf", "positive number"), ("--seed", "-1", "zero or a positive"),
    ("--epochs", "00", "positive integer"), ("--seed", "1.5", "not an integer"),
])
def test_impossible_numbers_are_refused(capsys, option, text, fragment):
    one_line_error(capsys, ["train", option, text], option, fragment)


def test_a_data_dir_that_is_a_file_is_called_one(tmp_path, capsys):
    (tmp_path / "data").write_text("")
    one_line_error(capsys, ["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r")],
                   "is a file, not a folder")


def test_a_missing_m1_is_refused_before_any_data_is_loaded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "no-data"))
    loaded = []
    monkeypatch.setattr(MNIST, "__init__", lambda *args, **kwargs: loaded.append(args))
    one_line_error(capsys, ["train", "--dataset", "mnist", "--model", "m1m2", "--m1", str(tmp_path / "missing"),
                            "--out", str(tmp_path / "r")], "--m1", "no checkpoint.pt there")
    assert loaded == []


def test_an_m1m2_run_outlives_the_folder_of_its_m1(tmp_path, data_dir):
    import shutil

    common = dict(dataset="mnist", data_dir=str(data_dir), train_size=600, epochs=1, eval_particles=2, device="cpu")
    train(TrainConfig(latent_dim=4, hidden_dims=[16], out=str(tmp_path / "m1"), **common), progress=False)
    stacked = train(TrainConfig(model="m1m2", model_args={"m1": str(tmp_path / "m1"), "labels_per_class": 3},
                                latent_dim=3, hidden_dims=[8], out=str(tmp_path / "m1m2"), **common), progress=False)
    shutil.rmtree(tmp_path / "m1")
    model, _, _ = load_run(tmp_path / "m1m2")
    test = stacked.data.test[:50]
    assert torch.equal(model.classify(test), stacked.model.classify(test))
    assert main(["evaluate", str(tmp_path / "m1m2"), "--particles", "2", "--quiet"]) == 0
    assert len(resume(tmp_path / "m1m2", epochs=2, progress=False).history) == 2
