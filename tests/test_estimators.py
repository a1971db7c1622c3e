"""The estimators of pyro_vae.estimators against theory, on a linear-Gaussian VAE.

    z ~ N(0, I_L),  x | z ~ N(W z + b, sigma^2 I_D)

With orthogonal columns of W the exact posterior is a diagonal Gaussian that a linear encoder
can represent (see linear_gaussian.py). Encoder and decoder parameters are trainable and here in
float64, so that gradient means can be compared to within their Monte-Carlo standard errors.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from linear_gaussian import D, L, SIGMA, LinearEncoder, LinearGaussianLikelihood
from pyro_vae import VAE, ConfigError, make_objective
from pyro_vae.diagnostics import gradient_statistics, parameter_groups
from pyro_vae.estimators import (DoublyReparameterizedELBO, ImportanceWeightedELBO, StickingTheLandingELBO,
                                 TailAdaptiveELBO)
from pyro_vae.importance import log_importance_weights

def linear_gaussian_vae(exact: bool) -> tuple[VAE, torch.Tensor]:
    """The VAE and 20 datapoints; with ``exact`` the encoder is the exact posterior."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64))
    weight = q[:, :L] * torch.tensor([2.0, 0.7], dtype=torch.float64)
    bias = torch.randn(D, generator=generator, dtype=torch.float64)
    x = dist.MultivariateNormal(bias, weight @ weight.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)).sample((20,))
    posterior_cov = torch.linalg.inv(torch.eye(L, dtype=torch.float64) + weight.T @ weight / SIGMA**2)
    matrix = posterior_cov @ weight.T / SIGMA**2
    offset, scale = -matrix @ bias, torch.diagonal(posterior_cov).sqrt()
    if not exact:
        matrix, offset, scale = matrix * 0.7, offset + 0.3, scale * 1.8
    return VAE(LinearEncoder(matrix, offset, scale), LinearGaussianLikelihood(weight, bias), L), x


def statistics(objective, vae, x, draws, copies=1):
    """Gradient statistics over ``draws`` draws on ``copies`` copies of ``x``: each draw's gradient
    (of the batch's mean bound) then averages ``copies`` independent draws per datapoint, at the
    cost of one vectorized pass."""
    return gradient_statistics(vae.model, vae.guide, objective, x.repeat(copies, 1), parameter_groups(vae),
                               num_draws=draws)


def assert_same_mean(first, second, tolerance=4.5):
    """Every coordinate's difference of means within ``tolerance`` standard errors."""
    for group in first:
        a, b = first[group], second[group]
        stderr = (a.variance / a.num_draws + b.variance / b.num_draws).sqrt()
        z = (a.mean - b.mean).abs() / stderr
        assert z.max() < tolerance, (group, z.max().item())


def test_stl_is_unbiased_for_the_elbo_gradient():
    """STL drops a zero-mean score term: same expected gradient as the analytic-KL ELBO's."""
    vae, x = linear_gaussian_vae(exact=False)
    stl = statistics(make_objective("stl"), vae, x, 200, copies=50)
    meanfield = statistics(make_objective("meanfield"), vae, x, 200, copies=50)
    assert_same_mean(stl, meanfield)
    assert (stl["decoder"].mean.abs() > 0).all()


def test_stl_encoder_gradient_is_zero_at_the_exact_posterior():
    """With q = p(z|x), log p(x,z) - log q(z|x) = log p(x) for every z: no path gradient, no variance."""
    vae, x = linear_gaussian_vae(exact=True)
    stl = statistics(make_objective("stl"), vae, x, 20)
    assert stl["encoder"].mean.abs().max() < 1e-10 and stl["encoder"].variance.max() < 1e-20
    trace = statistics(make_objective("trace"), vae, x, 20)
    assert trace["encoder"].variance.min() > 1e-6  # the score term's noise, which STL removes


def test_dreg_is_unbiased_for_the_iwae_gradient():
    vae, x = linear_gaussian_vae(exact=False)
    dreg = statistics(make_objective("dreg", 5), vae, x, 200, copies=50)
    iwae = statistics(make_objective("iwae", 5), vae, x, 200, copies=50)
    assert_same_mean(dreg, iwae)
    assert dreg["encoder"].total_variance < iwae["encoder"].total_variance


def test_dreg_changes_only_the_encoder_gradient():
    """On the same draws, DReG's decoder gradient is IWAE's; its encoder gradient is not."""
    vae, x = linear_gaussian_vae(exact=False)
    groups = parameter_groups(vae)
    grads = {}
    for name in ("iwae", "dreg"):
        pyro.set_rng_seed(7)
        loss = make_objective(name, 5).differentiable_loss(vae.model, vae.guide, x)
        grads[name] = {group: torch.autograd.grad(loss, params, retain_graph=True) for group, params in groups.items()}
        grads[name]["loss"] = loss.item()
    assert grads["iwae"]["loss"] == pytest.approx(grads["dreg"]["loss"], rel=1e-12)
    for a, b in zip(grads["iwae"]["decoder"], grads["dreg"]["decoder"]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert not all(torch.allclose(a, b) for a, b in zip(grads["iwae"]["encoder"], grads["dreg"]["encoder"]))


def test_dreg_encoder_gradient_is_zero_at_the_exact_posterior():
    vae, x = linear_gaussian_vae(exact=True)
    dreg = statistics(make_objective("dreg", 5), vae, x, 20)
    assert dreg["encoder"].mean.abs().max() < 1e-10 and dreg["encoder"].variance.max() < 1e-20


def test_dreg_with_one_particle_is_stl():
    vae, x = linear_gaussian_vae(exact=False)
    losses = []
    for objective in (DoublyReparameterizedELBO(1), StickingTheLandingELBO(1)):
        pyro.set_rng_seed(3)
        loss = objective.differentiable_loss(vae.model, vae.guide, x)
        losses.append((loss.item(), torch.autograd.grad(loss, list(vae.parameters()))))
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-12)
    for a, b in zip(losses[0][1], losses[1][1]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["iwae", "dreg", "renyi-0.5", "stl", "tail-adaptive"])
def test_bounds_are_per_datapoint(name):
    """The value is the sum over datapoints of each one's bound from its own K weights."""
    vae, x = linear_gaussian_vae(exact=False)
    objective = make_objective(name, 5)
    pyro.set_rng_seed(11)
    loss = objective.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(11)
    log_weight, _ = log_importance_weights(vae.model, vae.guide, 5, x)
    assert log_weight.shape == (5, len(x))
    alpha = {"iwae": 0.0, "dreg": 0.0, "renyi-0.5": 0.5}.get(name)
    if alpha is None:  # the ELBO
        expected = log_weight.mean(0)
    else:
        expected = (torch.logsumexp((1 - alpha) * log_weight, 0) - math.log(5)) / (1 - alpha)
    assert loss == pytest.approx(-expected.sum().item(), rel=1e-10)


def test_renyi_bound_lies_between_the_elbo_and_the_iwae_bound():
    """On the same weights, (1/(1-a)) log mean w^(1-a) increases from the ELBO (a -> 1) to IWAE (a = 0)."""
    vae, x = linear_gaussian_vae(exact=False)
    values = []
    for objective in (ImportanceWeightedELBO(10, alpha=0.999), ImportanceWeightedELBO(10, alpha=0.5),
                      ImportanceWeightedELBO(10, alpha=0.0)):
        pyro.set_rng_seed(5)
        values.append(-objective.loss(vae.model, vae.guide, x))
    assert values[0] < values[1] < values[2]


def test_tail_adaptive_weights_follow_the_tail_probability():
    """gamma_k proportional to (#{j: w_j >= w_k} / K)^beta: with beta = -1 the largest weight weighs most."""
    log_weight = torch.tensor([[0.0, 5.0], [2.0, 5.0], [1.0, -1.0]])  # two datapoints, K = 3
    gamma = TailAdaptiveELBO(3, beta=-1.0).particle_weights(log_weight)
    expected_first = torch.tensor([3 / 3, 3 / 1, 3 / 2]) / (1 + 3 + 1.5)  # tail probabilities 1, 1/3, 2/3
    assert torch.allclose(gamma[:, 0], expected_first)
    assert torch.allclose(gamma[:, 1], torch.tensor([1.5, 1.5, 1.0]) / 4)  # ties share the rank 2/3
    assert torch.allclose(TailAdaptiveELBO(3, beta=0.0).particle_weights(log_weight), torch.full((3, 2), 1 / 3))


def test_tail_adaptive_with_beta_zero_is_the_elbo_gradient():
    vae, x = linear_gaussian_vae(exact=False)
    pyro.set_rng_seed(2)
    loss = TailAdaptiveELBO(4, beta=0.0).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    log_weight, _ = log_importance_weights(vae.model, vae.guide, 4, x)
    expected = -log_weight.mean(0).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(loss, list(vae.parameters())), torch.autograd.grad(expected, list(vae.parameters()))):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_tracegraph_equals_trace_for_a_reparameterized_guide():
    vae, x = linear_gaussian_vae(exact=False)
    results = []
    for name in ("tracegraph", "trace"):
        pyro.set_rng_seed(4)
        loss = make_objective(name, 3).differentiable_loss(vae.model, vae.guide, x, num_data=200)
        results.append((loss.item(), torch.autograd.grad(loss, list(vae.parameters()))))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-10)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_pyro_renyi_elbo_is_not_the_scaled_bound_under_subsampling():
    """Why ``iwae`` is not pyro.infer.RenyiELBO: without subsampling both are the per-datapoint
    bound, but under subsampling (scale N/B) Pyro's is not N/B times it, as it scales each log
    weight inside the log-sum-exp; ours scales exactly."""
    vae, x = linear_gaussian_vae(exact=False)
    ours, pyros = ImportanceWeightedELBO(5), pyro.infer.RenyiELBO(alpha=0.0, num_particles=5, max_plate_nesting=1,
                                                                  vectorize_particles=True)
    for objective in (ours, pyros):
        objective.values = []
        for num_data in (None, 200):
            pyro.set_rng_seed(9)
            objective.values.append(objective.loss(vae.model, vae.guide, x, num_data=num_data))
    assert ours.values[1] == pytest.approx(10 * ours.values[0], rel=1e-10)
    assert pyros.values[1] != pytest.approx(10 * pyros.values[0], rel=1e-3)
    assert pyros.values[0] == pytest.approx(ours.values[0], rel=1e-10)


def test_path_derivatives_need_a_reparameterized_guide():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(torch.full_like(x, 0.3)))

    x = torch.randn(5)
    for name in ("stl", "dreg"):
        with pytest.raises(ConfigError, match="reparameterized"):
            make_objective(name).loss(model, guide, x)


@pytest.mark.parametrize("name", ["iwae", "dreg", "renyi-0.5", "tail-adaptive"])
def test_multi_particle_objectives_refuse_one_particle(name):
    assert make_objective(name).num_particles == 5
    assert make_objective(name, 50).num_particles == 50
    with pytest.raises(ConfigError, match="at least 2 particles"):
        make_objective(name, 1)
