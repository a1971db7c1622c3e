"""Any data: a model over rows of several real-valued tensors (x, t, y) trains, stops and resumes
bit-exactly, evaluates and compares, from Python and from a .npz file on the command line
(pyro_vae.TensorData, pyro_vae.batches)."""

import json
import os
import signal

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae import DataError, TensorData, TrainingInterrupted, evaluate, fit, load_dataset, resume
from pyro_vae.callbacks import Callback
from pyro_vae.cli import main

from user_models import TabularVAE

QUICK = dict(epochs=2, batch_size=40, eval_particles=3, device="cpu")


def tabular(rows=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, generator=generator)
    t = (torch.rand(rows, generator=generator) < 0.5).float()
    y = x[:, 0] + 2 * t + 0.3 * torch.randn(rows, generator=generator)
    return x, t, y


DATA = TensorData(train=tabular(), test=tabular(60, seed=1), name="tabular")


def test_a_model_of_three_tensors_trains_and_is_evaluated(tmp_path):
    run = fit(TabularVAE(3), DATA, out=tmp_path / "r", progress=False, **QUICK)
    assert len(run.history) == 2 and run.history[-1]["test_elbo"] > run.history[0]["test_elbo"] - 5
    assert run.metrics["test_log_likelihood"] >= run.history[-1]["test_elbo"] - 1.0
    assert (tmp_path / "r" / "learning_curve.png").is_file()


class StopAfter(Callback):
    def __init__(self, steps):
        self.steps = steps

    def on_step_end(self, state):
        state.should_stop = state.should_stop or state.step == self.steps


def test_stopped_and_resumed_it_ends_as_an_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    whole = fit(TabularVAE(3), DATA, out=tmp_path / "whole", progress=False, **QUICK)
    torch.manual_seed(0)
    stopped = fit(TabularVAE(3), DATA, out=tmp_path / "part", progress=False, callbacks=[StopAfter(3)], **QUICK)
    assert stopped.history == [] and stopped.metrics["stopped_early"]  # stopped inside the first epoch of 5 steps
    resumed = resume(tmp_path / "part", data=DATA, model=TabularVAE(3), progress=False)
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)


def test_killed_by_sigterm_and_resumed_it_ends_as_an_uninterrupted_run(tmp_path, monkeypatch):
    from test_run_safety import stop_at_step

    torch.manual_seed(0)
    whole = fit(TabularVAE(3), DATA, out=tmp_path / "whole", progress=False, **QUICK)
    torch.manual_seed(0)
    stop_at_step(monkeypatch, 7, lambda: os.kill(os.getpid(), signal.SIGTERM))  # epoch 2, after step 2 of 5
    with pytest.raises(TrainingInterrupted, match="epoch 2, after step 2 of 5"):
        fit(TabularVAE(3), DATA, out=tmp_path / "killed", progress=False, **QUICK)
    monkeypatch.undo()
    resumed = resume(tmp_path / "killed", data=DATA, model=TabularVAE(3), progress=False)
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)


def test_evaluate_and_compare_from_python(tmp_path):
    torch.manual_seed(0)
    a = fit(TabularVAE(3), DATA, out=tmp_path / "a", progress=False, **QUICK)
    torch.manual_seed(1)
    b = fit(TabularVAE(3, latent_dim=1), DATA, out=tmp_path / "b", progress=False, **QUICK)
    result = evaluate(a, particles=4, compare=b)
    assert result["test_log_likelihood"].num_data == 60
    torch.testing.assert_close(result["difference"].values,
                               result["test_log_likelihood"].values - result["other_log_likelihood"].values)
    again = evaluate(tmp_path / "a", data=DATA, particles=4, model=TabularVAE(3), compare=None)
    assert again["test_log_likelihood"].mean == pytest.approx(result["test_log_likelihood"].mean, rel=1e-12)


def test_a_npz_of_named_tensors_is_read_as_tensor_data_and_trained_from_the_command_line(tmp_path):
    (x, t, y), (x_test, t_test, y_test) = tabular(), tabular(60, seed=1)
    np.savez(tmp_path / "rows.npz", train_x=x.numpy(), train_t=t.numpy(), train_y=y.numpy(), test_x=x_test.numpy(),
             test_t=t_test.numpy(), test_y=y_test.numpy())
    data = load_dataset(tmp_path / "rows.npz")
    assert isinstance(data, TensorData) and [len(t) for t in data.train] == [200, 200, 200]
    out = tmp_path / "run"
    assert main(["train", "--model", "user_models:tabular_vae", "--dataset", str(tmp_path / "rows.npz"),
                 "--epochs", "1", "--batch-size", "40", "--eval-particles", "2", "--test-size", "30",
                 "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert main(["evaluate", str(out), "--particles", "2", "--quiet"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["test_log_likelihood"]["num_data"] == 30
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0


def test_a_file_of_train_and_test_is_read_as_images_and_says_how_to_pass_other_data(tmp_path):
    np.savez(tmp_path / "real.npz", train=np.random.randn(10, 3), test=np.random.randn(4, 3))
    with pytest.raises(DataError, match="train_<name> and test_<name>"):
        load_dataset(tmp_path / "real.npz")


def test_tensors_of_different_lengths_are_refused_in_one_line():
    with pytest.raises(DataError, match="same number of rows"):
        TensorData(train=(torch.zeros(5, 2), torch.zeros(4)), test=torch.zeros(3, 2))
    with pytest.raises(DataError, match="same kind of rows"):
        TensorData(train=torch.zeros(5, 2), test=torch.zeros(3, 4))


class WithInputs(TabularVAE):
    """An image model taking its images twice over, through ``inputs``: the rows and their mean, as a
    model that conditions on a summary of x would."""

    def inputs(self, x, y=None):
        return x, x.mean(-1), x[:, 0]


def test_a_models_inputs_make_its_training_batches_too(tmp_path):
    frey = load_dataset("frey-face")
    small = pyro_vae.ImageData("small-frey", frey.train[:100], frey.test[:20], frey.image_shape)
    run = fit(WithInputs(560), small, out=tmp_path / "r", progress=False, **{**QUICK, "batch_size": 50})
    assert len(run.history) == 2
