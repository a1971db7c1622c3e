"""Evaluation against closed forms, on a linear-Gaussian model where log p(x) is known.

    z ~ N(0, I_L),  x | z ~ N(W z + b, sigma^2 I_D)   =>   x ~ N(b, W W^T + sigma^2 I_D)

With orthogonal columns of W the exact posterior is a diagonal Gaussian,
q*(z|x) = N(S W^T (x - b) / sigma^2, S), S = (I + W^T W / sigma^2)^-1, which an encoder can
represent: with it every importance weight equals p(x), so ELBO = log p(x) exactly.
"""

import math

import pyro.distributions as dist
import pytest
import torch

from linear_gaussian import D, L, SIGMA, LinearEncoder, LinearGaussianLikelihood
from pyro_vae import VAE, elbo, evaluation, log_likelihood


@pytest.fixture
def problem():
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64))
    weight = (q[:, :L] * torch.tensor([2.0, 0.7], dtype=torch.float64)).float()
    bias = torch.randn(D, generator=generator)
    marginal = dist.MultivariateNormal(bias, weight @ weight.T + SIGMA**2 * torch.eye(D))
    x = marginal.sample((200,))
    posterior_cov = torch.linalg.inv(torch.eye(L) + weight.T @ weight / SIGMA**2)
    assert torch.allclose(posterior_cov, torch.diag(torch.diagonal(posterior_cov)), atol=1e-5)
    matrix = posterior_cov @ weight.T / SIGMA**2
    exact_encoder = LinearEncoder(matrix, -matrix @ bias, torch.diagonal(posterior_cov).sqrt())
    return weight, bias, x, marginal.log_prob(x).mean().item(), exact_encoder


def test_exact_posterior_makes_the_elbo_tight(problem):
    weight, bias, x, exact, encoder = problem
    vae = VAE(encoder, LinearGaussianLikelihood(weight, bias), L)
    assert elbo(vae.model, vae.guide, x, num_particles=10).mean == pytest.approx(exact, abs=1e-3)
    assert log_likelihood(vae.model, vae.guide, x, num_particles=10).mean == pytest.approx(exact, abs=1e-3)


def test_elbo_below_and_importance_sampling_converges_to_log_likelihood(problem):
    weight, bias, x, exact, encoder = problem
    poor = LinearEncoder(encoder.matrix * 0.7, encoder.offset + 0.3, encoder.scale * 1.8)
    vae = VAE(poor, LinearGaussianLikelihood(weight, bias), L)
    bound = elbo(vae.model, vae.guide, x, num_particles=100)
    assert bound.mean < exact - 0.1
    estimates = [log_likelihood(vae.model, vae.guide, x, num_particles=k, chunk_size=3000).mean
                 for k in (1, 10, 100, 3000)]
    assert estimates == sorted(estimates)  # tightens with K ...
    assert estimates[-1] == pytest.approx(exact, abs=0.02)  # ... to log p(x)
    assert estimates[-1] <= exact + 0.01


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 30, 10_000])
def test_chunks_over_particles_and_datapoints_combine_exactly(monkeypatch, chunk_size):
    """However the work is split, the estimate is the log-mean-exp of all K weights."""
    num_particles, table = 12, torch.randn(12, 5, dtype=torch.float64)
    used = {}

    def preset_weights(model, guide, k, rows, **options):
        index = rows[:, 0].long()
        start = used.get(tuple(index.tolist()), 0)
        used[tuple(index.tolist())] = start + k
        return table[start:start + k, index], 1.0

    monkeypatch.setattr(evaluation, "log_importance_weights", preset_weights)
    monkeypatch.setattr(evaluation._LogWeights, "MIN_CHUNKS_TO_TRACE", 10**9)  # the table is read in Python
    x = torch.arange(5, dtype=torch.float64)[:, None]
    estimate = evaluation.log_likelihood(None, None, x, num_particles, chunk_size=chunk_size)
    expected = (torch.logsumexp(table, 0) - math.log(num_particles)).mean().item()
    assert estimate.mean == pytest.approx(expected, abs=1e-12)
    used.clear()
    assert evaluation.elbo(None, None, x, num_particles, chunk_size=chunk_size).mean == pytest.approx(
        table.mean().item(), abs=1e-12)


def test_paired_difference_needs_estimates_of_the_same_datapoints():
    a = evaluation.Estimate(1.0, 0.1, 5, 3, torch.tensor([1.0, 2.0, 0.0]))
    b = evaluation.Estimate(0.5, 0.1, 7, 3, torch.tensor([0.5, 1.5, -0.5]))
    difference = evaluation.paired_difference(a, b)
    assert (difference.mean, difference.stderr, difference.num_particles) == (0.5, 0.0, 5)
    with pytest.raises(evaluation.ConfigError, match="same datapoints"):
        evaluation.paired_difference(a, evaluation.Estimate(0.5, 0.1, 5, 2, torch.tensor([0.5, 1.5])))
    assert "values" not in a.as_dict()
