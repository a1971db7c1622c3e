"""Exact resume after a kill, numerical faults, and fuzzed inputs."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pyro
import pytest
import scipy.io
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import ConfigError, DataError, TrainConfig, resume, train
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.datasets import load_mnist, read_frey_face
from pyro_vae.models import build_vae
from pyro_vae.objectives import make_objective
from pyro_vae.step import ObjectiveLoss, TrainingStep

SMALL = ["--latent-dim", "2", "--hidden-dim", "16", "--lr", "3e-3", "--eval-particles", "10", "--quiet"]


def cli(*args):
    # One thread each: two runs side by side on a small machine must not fight over cores.
    return subprocess.Popen([sys.executable, "-m", "pyro_vae", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def without_times(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    common = ["train", *SMALL, "--epochs", "40", "--eval-every", "4"]
    whole = cli(*common, "--out", str(tmp_path / "whole"))
    killed = cli(*common, "--out", str(tmp_path / "killed"))
    history = tmp_path / "killed" / "history.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and len(json.loads(history.read_text())) >= 2):
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside a later epoch
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert whole.wait() == 0, whole.stderr.read()
    interrupted_at = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"]
    assert 8 <= interrupted_at < 40, "the kill must land mid-run"
    resumed = cli("train", "--resume", str(tmp_path / "killed"), "--quiet")
    assert resumed.wait() == 0, resumed.stderr.read()
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert without_times(a["history"]) == without_times(b["history"])
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("whole", "killed")]
    for key in ("train_elbo", "test_elbo", "test_log_likelihood", "samples_seen"):
        assert metrics[0][key] == metrics[1][key], key


def test_resume_in_process_extends_a_finished_run(tmp_path):
    config = TrainConfig(latent_dim=2, hidden_dims=[16], epochs=4, eval_every=2, eval_particles=10,
                         out=str(tmp_path / "a"), device="cpu")
    straight = train(TrainConfig(**{**config.__dict__, "epochs": 6, "out": str(tmp_path / "b")}), progress=False)
    train(config, progress=False)
    extended = resume(tmp_path / "a", epochs=6, progress=False)
    assert without_times(extended.history) == without_times(straight.history)
    with pytest.raises(ConfigError, match="already trained 6 epochs"):
        resume(tmp_path / "a", epochs=3, progress=False)


def test_resume_refuses_other_options(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(["train", "--resume", str(tmp_path), "--lr", "0.1"]))
    assert exit_info.value.code == 2
    assert "drop --lr" in capsys.readouterr().err


def sgd_step(clip_of_norm):
    """One TrainingStep with plain SGD (lr 0.5) on a small VAE, clipping at ``clip_of_norm`` times
    the gradient's norm; returns (parameters before, after, the unclipped gradient, clip value).
    The gradient comes from the same loss with the same seed, by autograd, outside the step."""
    torch.manual_seed(0)
    model = build_vae(12, 3, [16], "bernoulli", "tanh")
    loss = ObjectiveLoss(model, make_objective("meanfield"))
    batches = [((torch.bernoulli(torch.full((10, 12), 0.3), generator=torch.Generator().manual_seed(1)),), 600)]
    params = list(model.parameters())
    pyro.set_rng_seed(5)
    gradient = torch.autograd.grad(loss(batches), params)
    norm = torch.cat([g.reshape(-1) for g in gradient]).norm().item()  # the total 2-norm, by hand
    before = [p.detach().clone() for p in params]
    step = TrainingStep(loss, torch.optim.SGD(params, lr=0.5), clip_grad_norm=clip_of_norm * norm)
    pyro.set_rng_seed(5)
    _, finite = step(batches)
    assert bool(finite)
    return before, [p.detach().clone() for p in params], gradient, norm, clip_of_norm * norm


@pytest.mark.parametrize("clip_of_norm", [0.1, 0.5])
def test_gradient_clipping_rescales_the_step_to_the_clip_norm(clip_of_norm):
    """SGD moves theta by -lr * g * c / |g| when |g| > c: the step's length is lr * c, along -g."""
    before, after, gradient, norm, clip = sgd_step(clip_of_norm)
    assert norm > 1.0  # a gradient worth clipping
    moved = torch.cat([(a - b).reshape(-1) for a, b in zip(after, before)])
    expected = torch.cat([(-0.5 * g * clip / norm).reshape(-1) for g in gradient])
    torch.testing.assert_close(moved, expected, rtol=1e-4, atol=1e-7)
    assert moved.norm().item() == pytest.approx(0.5 * clip, rel=1e-4)


def test_a_gradient_below_the_clip_norm_is_left_alone():
    before, after, gradient, norm, clip = sgd_step(10.0)
    for a, b, g in zip(after, before, gradient):
        torch.testing.assert_close(a - b, -0.5 * g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("clip_grad_norm", [None, 1.0])
def test_a_non_finite_gradient_of_a_finite_loss_is_reported(clip_grad_norm):
    """sqrt(theta - stop(theta)) is 0 in value with an infinite gradient: the step must say so, with or
    without clipping (the step's docstring: "whether loss and gradient were finite")."""
    class InfiniteGradient(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.ones(3))

        def forward(self, batches):
            return (self.theta - self.theta.detach()).sqrt().sum()

    loss = InfiniteGradient()
    _, finite = TrainingStep(loss, torch.optim.SGD(loss.parameters(), lr=0.1), clip_grad_norm=clip_grad_norm)([])
    assert not bool(finite)


def test_the_training_loop_clips(tmp_path):
    """Clipped to norm 1e-12, an Adam step is at most lr * 1e-12 / eps = lr * 1e-4 per coordinate, so
    epochs 2 and 3 (six steps) move no parameter by 1e-4; unclipped they move some by over 1e-3."""
    def parameters(epochs, clip):
        config = TrainConfig(latent_dim=2, hidden_dims=[16], epochs=epochs, train_size=300, eval_particles=2,
                             lr=3e-3, clip_grad_norm=clip, out=str(tmp_path / f"{epochs}-{clip}"), device="cpu")
        return torch.cat([p.detach().reshape(-1) for p in train(config, progress=False).model.parameters()])

    clipped = (parameters(3, 1e-12) - parameters(1, 1e-12)).abs().max().item()
    unclipped = (parameters(3, None) - parameters(1, None)).abs().max().item()
    assert clipped < 1e-5 and unclipped > 1e-3, (clipped, unclipped)


# ---------------------------------------------------------------- fuzzing the readers

def idx(magic_type: int, dims, payload: bytes) -> bytes:
    return struct.pack(">HBB", 0, magic_type, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def valid_mnist_files(n_train=6, n_test=3):
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": idx(8, (n_train, 28, 28), rng.integers(0, 256, n_train * 784, dtype=np.uint8).tobytes()),
        "train-labels-idx1-ubyte": idx(8, (n_train,), rng.integers(0, 10, n_train, dtype=np.uint8).tobytes()),
        "t10k-images-idx3-ubyte": idx(8, (n_test, 28, 28), rng.integers(0, 256, n_test * 784, dtype=np.uint8).tobytes()),
        "t10k-labels-idx1-ubyte": idx(8, (n_test,), rng.integers(0, 10, n_test, dtype=np.uint8).tobytes()),
    }


def write_mnist(root, files):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (raw / name).write_bytes(content)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(target=st.sampled_from(sorted(valid_mnist_files())), cut=st.integers(0, 3000),
       flips=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 255)), max_size=4))
def test_fuzzed_idx_files_raise_data_error_or_load_consistently(tmp_path_factory, target, cut, flips):
    root = tmp_path_factory.mktemp("mnist")
    files = valid_mnist_files()
    content = bytearray(files[target][:cut] if cut < len(files[target]) else files[target])
    for position, value in flips:
        if position < len(content):
            content[position] = value
    files[target] = bytes(content)
    write_mnist(root, files)
    try:
        data = load_mnist(root, download=False)
    except DataError as error:
        assert "\n" not in str(error)
    else:  # whatever loads is well formed
        assert data.train.shape[1:] == (784,) and len(data.train_labels) == len(data.train) > 0
        assert 0.0 <= data.train.min() and data.train.max() <= 1.0


def test_empty_mnist_is_refused(tmp_path):
    files = valid_mnist_files()
    files["train-images-idx3-ubyte"] = idx(8, (0, 28, 28), b"")
    files["train-labels-idx1-ubyte"] = idx(8, (0,), b"")
    write_mnist(tmp_path, files)
    with pytest.raises(DataError, match="MNIST"):
        load_mnist(tmp_path, download=False)


@FUZZ
@given(array=st.one_of(
    st.builds(lambda r, c: np.zeros((r, c), dtype=np.uint8), st.integers(0, 600), st.integers(0, 5)),
    st.builds(lambda v: np.full((560, 3), v), st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda n: np.zeros(n), st.integers(0, 1000)),
))
def test_fuzzed_mat_files_raise_data_error_or_load(tmp_path_factory, array):
    path = tmp_path_factory.mktemp("frey") / "frey_rawface.mat"
    scipy.io.savemat(str(path), {"ff": array})
    try:
        frames = read_frey_face(path)
    except DataError as error:
        assert "\n" not in str(error)
    else:
        assert frames.shape[1:] == (28, 20) and frames.dtype == torch.uint8 and len(frames) > 0


@FUZZ
@given(raw=st.binary(max_size=400))
def test_random_bytes_as_mat_file(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("frey") / "frey_rawface.mat"
    path.write_bytes(raw)
    with pytest.raises(DataError):
        read_frey_face(path)


# ---------------------------------------------------------------- fuzzing the command line

OPTION_VALUES = st.sampled_from(["0", "-1", "1e999", "nan", "abc", "", "3.5", "-0", "99999999999", "mnist", "none"])
OPTIONS = st.sampled_from(["--latent-dim", "--hidden-dim", "--epochs", "--batch-size", "--lr", "--particles",
                           "--objective", "--dataset", "--binarize", "--likelihood", "--eval-every",
                           "--weight-decay", "--clip-grad-norm", "--init-std", "--device", "--optimizer"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(OPTIONS, OPTION_VALUES), min_size=1, max_size=3))
def test_fuzzed_arguments_fail_cleanly(capsys, tmp_path_factory, monkeypatch, pairs):
    """Every combination either is refused with one line and status 2, or would train; nothing
    else (no traceback, no hang). Valid combinations are stopped before training starts."""
    import pyro_vae.engine as engine

    class Accepted(Exception):
        pass

    def stop(*args, **kwargs):  # every option is checked before the data is loaded: training would start here
        raise Accepted

    monkeypatch.setattr(engine, "build", stop)  # loads the data and builds the model
    argv = ["train", "--out", str(tmp_path_factory.mktemp("run"))]
    for option, value in pairs:
        argv += [option, value]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    except Accepted:
        return
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
