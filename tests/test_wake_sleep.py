"""Wake-sleep and reweighted wake-sleep gradients against closed forms, on a linear-Gaussian model.

    p(z) = N(0, I_L),  p(x|z) = N(W z + b, sigma^2 I_D)       generative parameters theta = (W, b)
    q(z|x) = N(A x + c, diag s^2)                              recognition parameters phi = (A, c, log s)

Every expectation a phase's gradient estimates is Gaussian here, so each has a closed form that
autograd differentiates exactly:

* wake (theta):   E_q(z|x)[log p(x, z)]
* sleep (phi):    E_p(z, x)[log q(z|x)]
* RWS wake, K -> infinity: theta: log p(x) = log N(x; b, W W^T + sigma^2 I);
  phi (q-wake): E_p(z|x)[log q(z|x)] with the exact Gaussian posterior p(z|x).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from linear_gaussian import D, L, SIGMA, LinearEncoder, LinearGaussianLikelihood, exact_posterior
from pyro_vae import VAE, ConfigError, TrainConfig, elbo, make_objective, train
from pyro_vae.wake_sleep import ReweightedWakeSleep, WakeSleep

@pytest.fixture
def problem():
    """A model, data drawn from it, and an encoder near (not at) the exact posterior."""
    torch.set_default_dtype(torch.float64)  # gradients compared to 1e-2 relative: keep round-off out
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(D, L, generator=generator)
    bias = torch.randn(D, generator=generator)
    marginal = dist.MultivariateNormal(bias, weight @ weight.T + SIGMA**2 * torch.eye(D))
    x = marginal.sample((6,))
    _, covariance = exact_posterior(weight, bias, x)
    matrix = covariance @ weight.T / SIGMA**2
    encoder = LinearEncoder(1.1 * matrix, -matrix @ bias + 0.2, torch.diagonal(covariance).sqrt() * math.exp(0.15))
    vae = VAE(encoder, LinearGaussianLikelihood(weight, bias), L)
    yield vae, x
    torch.set_default_dtype(torch.float32)


def generative(vae):
    return [vae.likelihood.weight, vae.likelihood.bias]


def recognition(vae):
    return [vae.encoder.matrix, vae.encoder.offset, vae.encoder.log_scale]


def grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_close(estimate, exact, rel):
    for e, x in zip(estimate, exact):
        assert (e - x).norm() <= rel * x.norm() + 1e-6, (e, x)


def expected_log_joint(vae, x):
    """E_q(z|x)[log p(x, z)] summed over x, as a function of theta (q held fixed)."""
    with torch.no_grad():
        loc, scale = vae.encoder(x)
    weight, bias = vae.likelihood.weight, vae.likelihood.bias
    residual = x - loc @ weight.T - bias
    spread = (weight**2 * scale.pow(2)[:, None, :]).sum(-1)  # diag of W diag(s^2) W^T, per datapoint
    log_lik = -D * math.log(SIGMA) - D / 2 * math.log(2 * math.pi) - (residual**2 + spread).sum(-1) / (2 * SIGMA**2)
    return log_lik.sum()  # E[log p(z)] does not depend on theta


def expected_log_recognition(vae):
    """E_p(z, x)[log q(z|x)] per dream, as a function of phi (p held fixed)."""
    weight, bias = vae.likelihood.weight.detach(), vae.likelihood.bias.detach()
    matrix, offset, log_scale = vae.encoder.matrix, vae.encoder.offset, vae.encoder.log_scale
    # r = z - (A x + c) with x = W z + b + sigma eps: r = (I - A W) z - sigma A eps - (A b + c)
    mix = torch.eye(L) - matrix @ weight
    second_moment = mix @ mix.T + SIGMA**2 * matrix @ matrix.T + torch.outer(matrix @ bias + offset, matrix @ bias + offset)
    return (-log_scale - 0.5 * math.log(2 * math.pi) - torch.diagonal(second_moment) / (2 * log_scale.exp() ** 2)).sum()


def test_wake_phase_gradient_matches_closed_form_and_touches_only_theta(problem):
    vae, x = problem
    repeats = 20_000
    theta_loss, q_wake_loss = WakeSleep().wake(vae.model, vae.guide, x.repeat(repeats, 1))
    assert all(g is None for g in grads(theta_loss, recognition(vae)))
    estimate = [-g / repeats for g in grads(theta_loss, generative(vae))]
    assert_close(estimate, grads(expected_log_joint(vae, x), generative(vae)), rel=0.02)
    assert all(g is None for g in grads(q_wake_loss, generative(vae)))


def test_sleep_phase_gradient_matches_closed_form_and_touches_only_phi(problem):
    vae, _ = problem
    dreams = 100_000
    sleep_loss = WakeSleep().sleep(vae.model, vae.guide, torch.zeros(dreams, D))  # x gives the batch size only
    assert all(g is None for g in grads(sleep_loss, generative(vae)))
    estimate = [-g / dreams for g in grads(sleep_loss, recognition(vae))]
    assert_close(estimate, grads(expected_log_recognition(vae), recognition(vae)), rel=0.02)


def test_wake_sleep_loss_is_the_elbo_with_the_two_phase_gradients(problem):
    """One backward pass gives theta the wake gradient and phi the sleep gradient; the value is -ELBO."""
    vae, x = problem
    repeats, objective = 20_000, WakeSleep()
    batch = x.repeat(repeats, 1)
    loss = objective.differentiable_loss(vae.model, vae.guide, batch)
    theta_grads, phi_grads = grads(loss, generative(vae)), grads(loss, recognition(vae))
    assert_close([-g / repeats for g in theta_grads], grads(expected_log_joint(vae, x), generative(vae)), rel=0.02)
    assert_close([-g / len(batch) for g in phi_grads], grads(expected_log_recognition(vae), recognition(vae)), rel=0.03)
    with torch.no_grad():
        exact_elbo = elbo(vae.model, vae.guide, x, num_particles=20_000).mean * len(x)
    assert -loss.item() / repeats == pytest.approx(exact_elbo, abs=0.05 * len(x))


def test_rws_gradients_tend_to_the_marginal_likelihood_and_posterior_fit(problem):
    """With many particles the wake-theta gradient is grad log p(x), the q-wake one grad E_p(z|x) log q."""
    vae, x = problem
    theta_loss, q_wake_loss = ReweightedWakeSleep(num_particles=200_000).wake(vae.model, vae.guide, x)
    weight, bias = generative(vae)
    log_marginal = dist.MultivariateNormal(bias, weight @ weight.T + SIGMA**2 * torch.eye(D)).log_prob(x).sum()
    assert_close([-g for g in grads(theta_loss, generative(vae))], grads(log_marginal, generative(vae)), rel=0.02)
    mean, covariance = exact_posterior(weight.detach(), bias.detach(), x)
    loc, scale = vae.encoder(x)
    fit = (-scale.log() - 0.5 * math.log(2 * math.pi)
           - ((mean - loc) ** 2 + torch.diagonal(covariance)) / (2 * scale**2)).sum()
    assert_close([-g for g in grads(q_wake_loss, recognition(vae))], grads(fit, recognition(vae)), rel=0.02)
    assert all(g is None for g in grads(theta_loss, recognition(vae)))
    assert all(g is None for g in grads(q_wake_loss, generative(vae)))


def test_rws_weights_are_normalised_per_datapoint(problem):
    """The loss's gradient equals an independent computation with a softmax over each datapoint's particles."""
    vae, x = problem
    num_data, particles = 60, 7
    recorder = poutine.trace(vae.guide)
    loss = ReweightedWakeSleep(num_particles=particles).differentiable_loss(vae.model, recorder, x, num_data=num_data)
    z = recorder.msngr.trace.nodes["z"]["value"].detach()  # (K, B, L), the draws the loss used
    assert z.shape == (particles, len(x), L)
    loc, scale = vae.encoder(x)
    log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
    log_p = (dist.Normal(vae.likelihood.mean(z), SIGMA).log_prob(x).sum(-1) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1))
    weights = torch.softmax((log_p - log_q).detach(), 0)  # dim 0: the particles of one datapoint
    reference = -num_data / len(x) * (weights * (log_p + log_q)).sum()
    params = generative(vae) + recognition(vae)
    assert_close(grads(loss, params), grads(reference, params), rel=1e-8)
    bound = torch.logsumexp(log_p - log_q, 0) - math.log(particles)
    assert loss.item() == pytest.approx(-num_data / len(x) * bound.sum().item(), rel=1e-10)


def test_rws_gradient_of_a_datapoint_ignores_the_rest_of_the_batch(problem):
    """Changing datapoint 0 changes the gradient by the same amount whatever the other datapoints are
    (with batch-wide weights, as in Pyro's ReweightedWakeSleep, it would not)."""
    vae, x = problem
    params = generative(vae) + recognition(vae)

    def gradient(batch):
        pyro.set_rng_seed(1)  # the same draws for the same positions
        return grads(ReweightedWakeSleep(num_particles=5).differentiable_loss(vae.model, vae.guide, batch), params)

    other = x[:1] + 1.0
    rest_a, rest_b = x[1:], torch.flip(x[1:], [0]) * 2.0
    change_a = [g1 - g0 for g1, g0 in zip(gradient(torch.cat([other, rest_a])), gradient(torch.cat([x[:1], rest_a])))]
    change_b = [g1 - g0 for g1, g0 in zip(gradient(torch.cat([other, rest_b])), gradient(torch.cat([x[:1], rest_b])))]
    assert_close(change_a, change_b, rel=1e-8)


@pytest.mark.parametrize("objective", [WakeSleep(), ReweightedWakeSleep(num_particles=5)], ids=["wake-sleep", "rws"])
def test_svi_training_improves_the_bound(problem, objective):
    vae, x = problem
    data = dist.MultivariateNormal(vae.likelihood.bias.detach(), torch.eye(D)).sample((500,))
    with torch.no_grad():
        for p in generative(vae) + recognition(vae):
            p.mul_(0.1)
    before = elbo(vae.model, vae.guide, data, num_particles=10).mean
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.02}), objective)
    for _ in range(300):
        loss = svi.step(data[torch.randint(len(data), (50,))], num_data=len(data))
    after = elbo(vae.model, vae.guide, data, num_particles=10).mean
    assert math.isfinite(loss)
    assert after > before + 1.0


def test_wake_sleep_trains_a_vae_through_the_training_loop(tmp_path):
    config = TrainConfig(dataset="frey-face", hidden_dims=[50], latent_dim=2, epochs=4, objective="wake-sleep",
                         optimizer="adagrad", lr=0.02, init_std=0.01, eval_every=1, eval_particles=1,
                         device="cpu", out=str(tmp_path))
    history = train(config, progress=False).history
    assert history[-1]["train_elbo"] > history[0]["train_elbo"] + 50


def test_objectives_by_name_and_bad_input():
    assert isinstance(make_objective("wake-sleep"), WakeSleep)
    assert make_objective("wake-sleep").num_particles == 1
    rws = make_objective("rws")
    assert isinstance(rws, ReweightedWakeSleep) and rws.num_particles == 5 and rws.insomnia == 1.0
    with pytest.raises(ConfigError, match="at least 2 particles"):
        make_objective("rws", 1)
    with pytest.raises(ConfigError, match="insomnia"):
        ReweightedWakeSleep(insomnia=1.5)


def test_sleep_phase_needs_the_data_as_first_argument():
    def model(size):
        with pyro.plate("data", size):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(size):
        with pyro.plate("data", size):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ConfigError, match="one observed site"):
        WakeSleep().differentiable_loss(model, guide, 3)
