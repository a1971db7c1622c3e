"""Checks that close the gaps a mutation pass over the core numerics found: each one
against something computed independently (by hand, by Python's statistics module, or in closed form)."""

import math
import statistics

import pyro
import pyro.distributions as dist
import pytest
import torch

from linear_gaussian import D, L, SIGMA, LinearEncoder, LinearGaussianLikelihood
from pyro_vae import VAE, evaluation
from pyro_vae.importance import importance_traces, trace_log_weights
from pyro_vae.step import TrainingStep
from pyro_vae.wake_sleep import ReweightedWakeSleep


def test_log_weights_sum_the_plates_nested_in_the_data_plate():
    """A data plate at dim -2 and a pixel plate inside it: log w_k(x) = log N(z; 0, 1)
    + sum_d log N(x_d; z, 1) - log N(z; mean(x), 0.5^2), written out with math.log."""
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, 0.3]], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", len(x), dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 1, dtype=x.dtype), 1.0))
            with pyro.plate("pixels", x.shape[1], dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x), dim=-2):
            pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True), 0.5))

    model_trace, guide_trace = importance_traces(model, guide, 4, x, max_plate_nesting=2)
    weights = trace_log_weights(model_trace, guide_trace)
    log_weight, scale = weights.local, weights.scale
    z = guide_trace.nodes["z"]["value"].squeeze(-1)  # (K, B)
    assert log_weight.shape == (4, 2) and scale == 1.0

    def log_normal(value, loc, sd):
        return -0.5 * ((value - loc) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)

    for k in range(4):
        for b in range(2):
            zk = z[k, b].item()
            expected = (log_normal(zk, 0.0, 1.0) + sum(log_normal(v, zk, 1.0) for v in x[b].tolist())
                        - log_normal(zk, x[b].mean().item(), 0.5))
            assert log_weight[k, b].item() == pytest.approx(expected, rel=1e-10)


def exact_linear_gaussian(num_data=30):
    """A linear-Gaussian VAE whose encoder is the exact posterior, data from it, and log p(x) per datapoint."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64))
    weight = q[:, :L] * torch.tensor([2.0, 0.7], dtype=torch.float64)
    bias = torch.randn(D, generator=generator, dtype=torch.float64)
    marginal = dist.MultivariateNormal(bias, weight @ weight.T + SIGMA**2 * torch.eye(D, dtype=torch.float64))
    x = marginal.sample((num_data,))
    covariance = torch.linalg.inv(torch.eye(L, dtype=torch.float64) + weight.T @ weight / SIGMA**2)
    matrix = covariance @ weight.T / SIGMA**2
    encoder = LinearEncoder(matrix, -matrix @ bias, torch.diagonal(covariance).sqrt())
    return VAE(encoder, LinearGaussianLikelihood(weight, bias), L), x, marginal.log_prob(x)


@pytest.mark.parametrize("num_particles, chunk_size", [(10, 4), (7, 3), (5, 20)])
def test_chunked_log_likelihood_draws_exactly_k_particles(num_particles, chunk_size):
    """At the exact posterior every weight is p(x), so log (1/K) sum of n weights is log p(x) + log(n/K):
    exact only if the chunks over particles draw K in all, the last one included."""
    vae, x, exact = exact_linear_gaussian()
    estimate = evaluation.log_likelihood(vae.model, vae.guide, x, num_particles, chunk_size=chunk_size)
    torch.testing.assert_close(estimate.values, exact, rtol=0, atol=1e-9)


def test_standard_error_is_the_sample_deviation_over_root_n(monkeypatch):
    values = [3.0, -1.0, 4.0, 1.5, -5.0, 9.0, 2.0]
    monkeypatch.setattr(evaluation, "log_importance_weights",
                        lambda model, guide, k, rows, **options: (rows.T.repeat(k, 1), 1.0))
    estimate = evaluation.elbo(None, None, torch.tensor(values, dtype=torch.float64)[:, None], num_particles=1)
    assert estimate.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert estimate.stderr == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)), rel=1e-12)


def test_accuracy_is_the_fraction_predicted_right_across_chunks():
    class Stub:
        def classify(self, rows):
            return rows[:, 0].long()

    predictions = torch.tensor([0, 1, 2, 2, 1, 0, 1], dtype=torch.float64)[:, None]
    labels = torch.tensor([0, 1, 1, 2, 0, 0, 2])  # right at 0, 1, 3, 5: four of seven
    assert evaluation.accuracy(Stub(), predictions, labels, chunk_size=3) == 4 / 7


def test_insomnia_mixes_the_q_wake_and_sleep_gradients_of_phi(monkeypatch):
    """insomnia = 0.3: the phi gradient is 0.3 * (q-wake gradient) + 0.7 * (sleep gradient), each
    computed on its own from the phase's loss with the same draws; theta gets the wake gradient."""
    torch.set_default_dtype(torch.float64)
    try:
        vae, x, _ = exact_linear_gaussian(6)
        with torch.no_grad():
            vae.encoder.offset.add_(0.3)  # off the posterior: the two phi gradients differ
        phi = [vae.encoder.matrix, vae.encoder.offset, vae.encoder.log_scale]
        theta = [vae.likelihood.weight, vae.likelihood.bias]
        objective = ReweightedWakeSleep(num_particles=4, insomnia=0.3)
        pyro.set_rng_seed(3)
        loss = objective.differentiable_loss(vae.model, vae.guide, x, num_data=60)
        mixed_phi = torch.autograd.grad(loss, phi, retain_graph=True)
        mixed_theta = torch.autograd.grad(loss, theta)
        pyro.set_rng_seed(3)  # the same draws: the wake phase's particles, then the sleep phase's dreams
        theta_loss, q_wake = objective.wake(vae.model, vae.guide, x, num_data=60)
        sleep = objective.sleep(vae.model, vae.guide, x, num_data=60)
        for m, a, b in zip(mixed_phi, torch.autograd.grad(q_wake, phi), torch.autograd.grad(sleep, phi)):
            torch.testing.assert_close(m, 0.3 * a + 0.7 * b, rtol=1e-10, atol=1e-12)
            assert not torch.allclose(a, b, rtol=0.1)
        for m, a in zip(mixed_theta, torch.autograd.grad(theta_loss, theta)):
            torch.testing.assert_close(m, a, rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def test_compiled_step_averages_the_gradients_of_the_processes(monkeypatch):
    """With two processes holding the same gradient g, the all-reduced sum is 2 g and the average g."""
    import torch.distributed as torch_dist

    def all_reduce(tensor):
        tensor.mul_(2)  # the sum over two processes with equal gradients

    monkeypatch.setattr(torch_dist, "all_reduce", all_reduce)
    monkeypatch.setattr(torch_dist, "get_world_size", lambda: 2)
    grads = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0], [0.5]])]
    expected = [g.clone() for g in grads]
    TrainingStep._all_reduce(grads)
    for g, e in zip(grads, expected):
        assert torch.equal(g, e)
