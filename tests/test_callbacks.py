"""Callbacks (pyro_vae.callbacks): when they are called, stopping and resuming, a model attribute
changed between steps under the default compiled step, the trainer's schedules, and one path for
fit and train (the same resolver, the same history)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae import ImageData, TrainConfig, VAE, build_vae, fit, load_dataset, resume, train
from pyro_vae.callbacks import Callback, State
from pyro_vae.callbacks.schedules import EarlyStopping, LearningRateSchedule, iwae_factor

FREY = load_dataset("frey-face")
SMALL = ImageData("small-frey", FREY.train[:200], FREY.test[:40], FREY.image_shape)
QUICK = dict(epochs=2, batch_size=40, eval_particles=2, device="cpu")


def strip(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, state):
        self.calls.append(("start", state.step))

    def on_step_end(self, state):
        self.calls.append(("step", state.step))

    def on_evaluation(self, state, record):
        self.calls.append(("evaluation", state.step, record["epoch"]))

    def on_fit_end(self, state):
        self.calls.append(("end", state.step, "test_log_likelihood" in state.metrics))


def test_hooks_are_called_in_order_and_as_often_as_documented(tmp_path):
    recorder = Recorder()
    fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / "r", progress=False, callbacks=[recorder],
        **QUICK)
    steps = [("step", n) for n in range(1, 11)]
    assert recorder.calls == [("start", 0), *steps[:5], ("evaluation", 5, 1), *steps[5:], ("evaluation", 10, 2),
                              ("end", 10, True)]


class Beta(VAE):
    """A VAE whose KL term is weighted by a beta that outside code sets (poutine.scale on z)."""

    def model(self, x, num_data=None):
        with self.data_plate(x, num_data):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x, num_data=None):
        with self.data_plate(x, num_data), poutine.scale(scale=self.beta):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class Anneal(Callback):
    """Sets the model's beta after every step, or at the end of every epoch."""

    def __init__(self, per_epoch):
        self.per_epoch = per_epoch

    def on_fit_start(self, state):
        state.model.beta = 0.1

    def on_step_end(self, state):
        if not self.per_epoch or state.step % state.steps_per_epoch == 0:
            state.model.beta = min(1.0, 0.1 + state.step / 300)


def beta_vae():
    vae = build_vae(560, 2, [8], "gaussian", "tanh")
    model = Beta(vae.encoder, vae.likelihood, vae.latent_dim)
    model.beta = 1.0
    return model


@pytest.mark.parametrize("per_epoch, step", [(True, "replay+update"), (False, "eager")],
                         ids=["changed every 100 steps: traced again", "changed every step: eager, said once"])
def test_a_callback_changing_a_model_attribute_gives_the_eager_runs_history(tmp_path, per_epoch, step):
    runs = {}
    for compile in ("eager", "auto"):
        pyro.set_rng_seed(0)
        runs[compile] = fit(beta_vae(), SMALL, out=tmp_path / compile, progress=False, callbacks=[Anneal(per_epoch)],
                            compile=compile, objective="meanfield", **{**QUICK, "batch_size": 2})
    assert runs["auto"].metrics["environment"]["training_step"] == step
    assert [r["test_elbo"] for r in runs["auto"].history] == pytest.approx(
        [r["test_elbo"] for r in runs["eager"].history], rel=1e-6)


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        state.should_stop = state.should_stop or state.step == self.step


@pytest.mark.parametrize("step", [3, 5], ids=["inside an epoch", "at its end"])
def test_should_stop_leaves_a_checkpoint_that_resume_continues_exactly(tmp_path, step):
    pyro.set_rng_seed(0)
    whole = fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / "whole", progress=False, **QUICK)
    pyro.set_rng_seed(0)
    stopped = fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / "part", progress=False,
                  callbacks=[StopAt(step)], **QUICK)
    assert stopped.metrics["stopped_early"] and len(stopped.history) == step // 5
    resumed = resume(tmp_path / "part", data=SMALL, model=build_vae(560, 2, [8], "gaussian", "tanh"), progress=False)
    assert strip(resumed.history) == strip(whole.history)
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_fit_and_train_share_one_resolver_and_give_the_same_history(tmp_path):
    settings = dict(train_size=200, test_size=40, epochs=2, batch_size=40, eval_particles=2, device="cpu",
                    hidden_dims=[8])
    by_fit = fit("vae", "frey-face", out=tmp_path / "fit", progress=False, **settings)
    by_train = train(TrainConfig(dataset="frey-face", model="vae", out=str(tmp_path / "train"), **settings),
                     progress=False)
    assert (by_fit.config.latent_dim, by_fit.config.likelihood) == (2, "gaussian")  # Frey Face's defaults
    assert strip(by_fit.history) == strip(by_train.history)
    assert by_fit.metrics["config"]["test_size"] == 40 and by_fit.test_log_likelihood.num_data == 40


def test_the_iwae_schedule_is_burda_et_als():
    # 3^i passes at 10^-3 * 10^(-i/7): 1 pass, then 3, then 9, ...
    assert [iwae_factor(e) for e in (0, 1, 3, 4, 12, 13, 3279)] == pytest.approx(
        [1, 10 ** (-1 / 7), 10 ** (-1 / 7), 10 ** (-2 / 7), 10 ** (-2 / 7), 10 ** (-3 / 7), 10 ** (-1)])


class LearningRates(Callback):
    def __init__(self):
        self.rates = []

    def on_evaluation(self, state, record):
        self.rates.append(state.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("schedule, expected", [
    ("cosine", [0.01 * (1 + math.cos(math.pi / 3)) / 2, 0.01 * (1 + math.cos(2 * math.pi / 3)) / 2, 0.0]),
    (lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5), [0.005, 0.0025, 0.00125]),
], ids=["cosine", "any torch scheduler"])
def test_learning_rate_schedules_step_once_per_epoch(tmp_path, schedule, expected):
    rates = LearningRates()
    callbacks = [rates] if isinstance(schedule, str) else [LearningRateSchedule(schedule), rates]
    settings = {**QUICK, "epochs": 3, "lr": 0.01, **({"lr_schedule": schedule} if isinstance(schedule, str) else {})}
    fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / "r", progress=False, callbacks=callbacks,
        **settings)
    assert rates.rates == pytest.approx(expected)


def test_early_stopping_stops_after_patience_evaluations_and_keeps_the_best(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"epoch 1")
    state = State(None, None, None, tmp_path, 5)
    stopping = EarlyStopping(2)
    for epoch, test_elbo in enumerate([-10.0, -9.0, -9.5, -9.2], start=1):
        (tmp_path / "checkpoint.pt").write_bytes(f"epoch {epoch}".encode())
        stopping.on_evaluation(state, {"test_elbo": test_elbo})
        assert state.should_stop == (epoch == 4)
    assert (tmp_path / "best_checkpoint.pt").read_bytes() == b"epoch 2"


def test_early_stopping_from_the_settings_ends_the_run(tmp_path):
    run = fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / "r", progress=False,
              early_stopping=1, **{**QUICK, "epochs": 6, "lr": 0.5})  # a rate that makes the bound worse
    assert (tmp_path / "r" / "best_checkpoint.pt").is_file()
    assert run.metrics["stopped_early"] == (len(run.history) < 6)


class Betas(Callback):
    def __init__(self):
        self.betas = []

    def on_step_end(self, state):
        self.betas.append(state.scored.beta.item())


def test_kl_warmup_raises_beta_linearly_and_the_compiled_step_follows_it(tmp_path):
    runs, betas = {}, Betas()
    for compile in ("eager", "auto"):
        pyro.set_rng_seed(0)
        runs[compile] = fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / compile,
                            progress=False, kl_warmup=1, compile=compile, callbacks=[betas], **QUICK)
    assert betas.betas[:10] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1, 1, 1])
    assert [r["test_elbo"] for r in runs["auto"].history] == pytest.approx(
        [r["test_elbo"] for r in runs["eager"].history], rel=1e-6)
    pyro.set_rng_seed(0)
    plain = fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / "plain", progress=False, **QUICK)
    assert runs["eager"].history[0]["test_elbo"] != plain.history[0]["test_elbo"]  # the warm-up changed training


def test_a_kl_warmup_with_an_objective_that_weighs_particles_is_refused_before_training(tmp_path):
    from pyro_vae import ConfigError

    with pytest.raises(ConfigError, match="site 'z' has a scale besides its plates'"):
        fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / "r", progress=False, kl_warmup=1,
            objective="iwae", **QUICK)
    assert not (tmp_path / "r" / "config.json").exists()  # refused before the run began


def test_a_schedule_and_early_stopping_continue_where_they_stopped(tmp_path):
    """Their states travel in the checkpoint: stopped at step 7 of 15 and resumed, the run is the whole run."""
    settings = {**QUICK, "epochs": 3, "lr_schedule": "cosine", "early_stopping": 5}
    pyro.set_rng_seed(0)
    whole = fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / "whole", progress=False, **settings)
    pyro.set_rng_seed(0)
    fit(build_vae(560, 2, [8], "gaussian", "tanh"), SMALL, out=tmp_path / "part", progress=False,
        callbacks=[StopAt(7)], **settings)
    resumed = resume(tmp_path / "part", data=SMALL, model=build_vae(560, 2, [8], "gaussian", "tanh"), progress=False)
    assert strip(resumed.history) == strip(whole.history)
