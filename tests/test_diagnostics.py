import math

import pyro
import pytest
import torch
from pyro.nn import PyroParam
from torch import nn
from torch.distributions import constraints

from pyro_vae import VAE, ConfigError, build_vae, make_objective
from pyro_vae.models import build_hierarchical_vae
from pyro_vae.diagnostics import bound_gap, gradient_statistics, parameter_groups, seconds_per_step
from test_estimators import linear_gaussian_vae


class NoisyLinearLoss:
    """A stand-in estimator whose gradient per datapoint is known: d/dtheta_i = m_i + s_i * eps_i.

    Its "model" argument is the parameter theta itself.
    """

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def differentiable_loss(self, model, guide, x, **kwargs):
        theta = model
        noise = self.mean + self.std * torch.randn(len(x), *self.mean.shape, dtype=self.mean.dtype)
        return (theta * noise).sum()


def test_gradient_statistics_recover_a_known_mean_and_variance():
    torch.manual_seed(0)
    mean = torch.tensor([1.0, -2.0, 0.0, 0.5], dtype=torch.float64)
    std = torch.tensor([1.0, 4.0, 2.0, 0.1], dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    other = nn.Parameter(torch.zeros(3, dtype=torch.float64))  # unused by the loss: a zero gradient
    x = torch.zeros(10, 1)  # the gradient of loss / len(x) averages 10 draws: variance std^2 / 10
    stats = gradient_statistics(theta, None, NoisyLinearLoss(mean, std), x, {"a": [theta], "b": [other]},
                                num_draws=4000)
    a = stats["a"]
    assert a.num_draws == 4000 and a.mean.shape == (4,)
    assert torch.allclose(a.mean, mean, atol=4 * (std / math.sqrt(10 * 4000)).max().item())
    assert torch.allclose(a.variance, std**2 / 10, rtol=0.1)
    expected_snr = mean.abs() / (std / math.sqrt(10))
    assert torch.allclose(a.snr, expected_snr, atol=0.1)
    assert a.mean_snr == pytest.approx(a.snr.mean().item())
    assert a.total_variance == pytest.approx(a.variance.sum().item())
    assert math.isnan(stats["b"].mean_snr) and stats["b"].total_variance == 0.0  # no variance: SNR undefined
    assert set(a.summary()) >= {"mean_snr", "median_snr", "total_variance", "squared_norm_of_mean", "num_draws"}


def test_welford_accumulation_matches_the_two_pass_formulas():
    draws = torch.randn(50, 6, dtype=torch.float64) * 3 + 100  # a large mean tests numerical stability
    sequence = iter(draws)

    class Replay(NoisyLinearLoss):
        def differentiable_loss(self, model, guide, x, **kwargs):
            return (model * next(sequence)).sum() * len(x)

    theta = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    stats = gradient_statistics(theta, None, Replay(None, None), torch.zeros(3, 1), {"all": [theta]}, num_draws=50)
    assert torch.allclose(stats["all"].mean, draws.mean(0), rtol=1e-12)
    assert torch.allclose(stats["all"].variance, draws.var(0), rtol=1e-9)


def test_gradient_statistics_need_two_draws():
    vae, x = linear_gaussian_vae(exact=False)
    with pytest.raises(ConfigError, match="at least 2 draws"):
        gradient_statistics(vae.model, vae.guide, make_objective("trace"), x, parameter_groups(vae), num_draws=1)


def test_parameter_groups_split_a_vae_into_encoder_and_decoder():
    vae = build_vae(10, 3, [8])
    groups = parameter_groups(vae)
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert ids["encoder"].isdisjoint(ids["decoder"])
    assert ids["encoder"] | ids["decoder"] == {id(p) for p in vae.parameters()}


def test_bound_gap_vanishes_at_the_exact_posterior_and_shrinks_with_importance_weighting():
    vae, x = linear_gaussian_vae(exact=True)
    # with q = p(z|x) each weight is p(x): Monte-Carlo KL is exact (analytic KL leaves the noise of log p(x|z))
    exact = bound_gap(vae.model, vae.guide, make_objective("trace"), x, log_likelihood_particles=10, chunk_size=7)
    assert exact.gap.mean == pytest.approx(0.0, abs=1e-8)
    assert exact.bound.num_data == len(x) and exact.log_likelihood.num_particles == 10
    assert exact.chunk_sizes.tolist() == [7, 7, 6]

    vae, x = linear_gaussian_vae(exact=False)
    repeated = x.repeat(20, 1)  # 20 passes over the data, one per chunk: only Monte-Carlo noise
    elbo = bound_gap(vae.model, vae.guide, make_objective("meanfield"), repeated, 200, chunk_size=len(x))
    iwae = bound_gap(vae.model, vae.guide, make_objective("iwae", 50), repeated, 200, chunk_size=len(x))
    assert iwae.difference(elbo).mean == pytest.approx(0.0, abs=4 * iwae.difference(elbo).stderr + 1e-3)
    assert 0 < iwae.gap.mean < elbo.gap.mean
    assert elbo.gap.mean > 10 * elbo.gap.stderr
    assert set(iwae.summary()) >= {"bound", "log_likelihood", "gap", "gap_stderr"}
    with pytest.raises(ConfigError, match="same data"):
        iwae.difference(exact)


def test_chunk_means_weigh_chunks_by_size():
    from pyro_vae.diagnostics import _chunk_mean

    mean, stderr = _chunk_mean(torch.tensor([1.0, 4.0], dtype=torch.float64), torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert mean == pytest.approx(1.75)
    equal_mean, equal_stderr = _chunk_mean(torch.tensor([1.0, 2.0, 6.0]), torch.ones(3))
    assert equal_mean == pytest.approx(3.0) and equal_stderr == pytest.approx(torch.tensor([1.0, 2.0, 6.0]).std().item() / math.sqrt(3))


def test_seconds_per_step_leaves_the_parameters_alone():
    vae, x = linear_gaussian_vae(exact=False)
    before = [p.detach().clone() for p in vae.parameters()]
    seconds = seconds_per_step(vae.model, vae.guide, make_objective("iwae", 5), x, vae.parameters(), num_steps=3)
    assert 0 < seconds < 10
    assert all(p.grad is None for p in vae.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))


class LearnedPrior(VAE):
    """A VAE with a learned prior location (an ``nn.Parameter``) and scale (a ``PyroParam``)."""

    def prior(self, x):
        return pyro.distributions.Normal(self.prior_loc, self.prior_scale).to_event(1)


def test_parameter_groups_hold_every_trainable_parameter_of_a_learned_prior():
    vae = build_vae(10, 3, [8])
    vae.__class__ = LearnedPrior
    vae.prior_loc = nn.Parameter(torch.zeros(3))
    vae.prior_scale = PyroParam(torch.ones(3), constraint=constraints.positive)
    vae.frozen = nn.Linear(2, 2).requires_grad_(False)
    groups = parameter_groups(vae)
    assert set(groups) == {"encoder", "decoder", "prior_loc", "prior_scale"}
    members = [id(p) for params in groups.values() for p in params]
    assert len(members) == len(set(members))  # disjoint
    assert set(members) == {id(p) for p in vae.parameters() if p.requires_grad}
    assert groups["prior_loc"] == [vae.prior_loc]
    x = torch.rand(6, 10).round()
    stats = gradient_statistics(vae.model, vae.guide, make_objective("meanfield"), x, groups, num_draws=3)
    assert stats["prior_loc"].mean.abs().sum() > 0 and stats["prior_scale"].mean.abs().sum() > 0


def test_parameter_groups_name_a_models_own_networks():
    model = build_hierarchical_vae(10, 4, [8])
    groups = parameter_groups(model)
    assert list(groups) == ["encoder", "decoder", "upper_encoder", "upper_decoder"]
    assert sum(p.numel() for params in groups.values() for p in params) == sum(p.numel() for p in model.parameters())
