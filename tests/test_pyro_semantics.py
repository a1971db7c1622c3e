"""Every importance-weighted objective and the evaluation score sites as Pyro does, across a matrix
of what models do (in the manner of Pyro's tests/infer/test_gradient.py): ``poutine.mask`` on an
observed site, ``poutine.scale`` on a latent (a beta), subsampling, a global latent. Pyro is the
oracle: Trace_ELBO and RenyiELBO on the same seed (so the same draws), and site ``log_prob`` sums
of Pyro's own traces. What an estimator cannot mean is refused in one line naming the site.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_vae import ConfigError, evaluation
from pyro_vae.estimators import (DoublyReparameterizedELBO, ImportanceWeightedELBO, ParticleELBO,
                                 StickingTheLandingELBO)
from pyro_vae.importance import importance_traces
from pyro_vae.objectives import OBJECTIVES, check_objective, suitable

#: The objectives that compute importance weights, from the registry.
WEIGHTED = [name for name, record in OBJECTIVES.items()
            if isinstance(record.factory(record.least_particles, 1), ParticleELBO)]
#: Those that weigh K > 1 particles against each other (log-mean-exp, ranks, normalised weights).
WEIGHING = [name for name in WEIGHTED if name != "stl"]
B, N, SEED = 4, 10, 3
X = torch.tensor([[0.5, -1.0], [1.5, 0.0], [-0.4, 0.8], [2.0, 1.1]], dtype=torch.float64)
OBSERVED = torch.tensor([True, False, True, True])  # datapoint 1's x is missing


def case(name):
    """``(model, guide, data plate scale, global sites)``: a latent z per datapoint, x ~ N(z + w, 1);
    ``name`` is one of :data:`CASES`, or ``"plain"`` for none of them."""
    beta = 0.25 if name == "beta" else 1.0
    size = N if name in ("subsample", "global") else B

    def plate(x):
        return pyro.plate("data", size, subsample=torch.arange(len(x)))

    def model(x):
        w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0)) if name == "global" else 0.0
        with plate(x):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            with poutine.mask(mask=OBSERVED if name == "mask" else True):
                pyro.sample("x", dist.Normal((z + w).unsqueeze(-1) + x.new_zeros(x.shape[-1]), 1.0).to_event(1),
                            obs=x)

    def guide(x):
        w = pyro.sample("w", dist.Normal(x.new_tensor(0.3), 0.8)) if name == "global" else 0.0
        with plate(x), poutine.scale(scale=beta):
            pyro.sample("z", dist.Normal(0.4 * x.mean(-1) - 0.2 * w, 0.7))

    return model, guide, size / B, ("w",) if name == "global" else ()


CASES = ["mask", "beta", "subsample", "global"]


def objective(name, num_particles):
    """The objective ``name`` with ``num_particles`` (1 too, for those whose record needs more)."""
    record = OBJECTIVES[name]
    built = record.factory(max(num_particles, record.least_particles), 1)
    built.num_particles = num_particles
    return built


def seeded(fn, *args, **kwargs):
    pyro.set_rng_seed(SEED)
    return fn(*args, **kwargs)


def assert_one_line_refusal(fn, site):
    with pytest.raises(ConfigError, match=f"site '{site}'") as error:
        fn()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("which", CASES)
def test_one_particle_is_trace_elbo_on_the_same_draws(which, name):
    """K = 1: every importance-weighted objective's value is Trace_ELBO's (mask, beta and subsample
    scale applied, a global counted once), or a one-line refusal of the global site."""
    model, guide, _, global_sites = case(which)
    loss = objective(name, 1).loss
    if global_sites and not OBJECTIVES[name].handles_global_latents:
        return assert_one_line_refusal(lambda: loss(model, guide, X), "w")
    expected = seeded(Trace_ELBO(max_plate_nesting=1).loss, model, guide, X)
    assert seeded(loss, model, guide, X) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("which", CASES)
def test_stl_is_trace_elbo_with_k_particles(which):
    """STL with K particles is Trace_ELBO's vectorized K-particle ELBO, beta and global included."""
    model, guide, _, _ = case(which)
    expected = seeded(Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1).loss, model, guide, X)
    assert seeded(StickingTheLandingELBO(3).loss, model, guide, X) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", WEIGHING)
def test_a_beta_is_refused_where_particles_are_weighed(name):
    model, guide, _, _ = case("beta")
    assert_one_line_refusal(lambda: objective(name, 3).loss(model, guide, X), "z")


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_masked_bound_is_pyros_renyi_elbo(alpha):
    """Without subsampling, Pyro's RenyiELBO keeps datapoints apart too: the same per-datapoint bound."""
    model, guide, _, _ = case("mask")
    expected = seeded(RenyiELBO(alpha, num_particles=3, vectorize_particles=True, max_plate_nesting=1).loss, model, guide, X)
    for estimator in [ImportanceWeightedELBO(3, alpha=alpha)] + ([DoublyReparameterizedELBO(3)] if alpha == 0 else []):
        assert seeded(estimator.loss, model, guide, X) == pytest.approx(expected, rel=1e-12)


def pyro_sites(trace, names, scale=1.0):
    """Pyro's own ``log_prob`` of the named sites, summed over the plates nested in the data plate, over ``scale``."""
    trace.compute_log_prob()
    return sum(trace.nodes[name]["log_prob"] for name in names) / scale


@pytest.mark.parametrize("which", ["subsample", "global"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_subsampled_bound_scales_the_sum_and_counts_a_global_once(which, alpha):
    """The IWAE family: global sites once, outside the per-datapoint log-mean-exp, one draw shared by
    the particles; the plate's scale multiplies the sum of the bounds (Pyro's site log_probs as oracle)."""
    model, guide, scale, global_sites = case(which)
    model_trace, guide_trace = seeded(importance_traces, model, guide, 5, X, shared_globals=True)
    local = pyro_sites(model_trace, ["z", "x"], scale) - pyro_sites(guide_trace, ["z"], scale)
    bound = (torch.logsumexp((1 - alpha) * local, 0) - math.log(5)) / (1 - alpha)
    expected = scale * bound.sum()
    if global_sites:
        assert guide_trace.nodes["w"]["value"].shape == ()  # one draw, shared
        expected = expected + pyro_sites(model_trace, global_sites) - pyro_sites(guide_trace, global_sites)
    estimators = [ImportanceWeightedELBO(5, alpha=alpha)] + ([DoublyReparameterizedELBO(5)] if alpha == 0 else [])
    for estimator in estimators:
        assert seeded(estimator.loss, model, guide, X) == pytest.approx(-expected.item(), rel=1e-12)


def test_dreg_runs_backward_with_a_global_latent():
    """The hook weighs the per-datapoint samples only (it once failed on the global's shape)."""
    model, guide, _, _ = case("global")
    loc = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def learnt_guide(x):
        w = pyro.sample("w", dist.Normal(loc, 0.8))
        with pyro.plate("data", N, subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(0.4 * x.mean(-1) - 0.2 * w, 0.7))

    DoublyReparameterizedELBO(5).differentiable_loss(model, learnt_guide, X).backward()
    assert torch.isfinite(loc.grad)


@pytest.mark.parametrize("which", ["mask", "beta", "subsample"])
def test_evaluation_elbo_is_trace_elbo_per_datapoint_of_the_model_without_its_beta(which):
    """Masks and the subsample scale as Trace_ELBO applies them; a beta is the objective's, not the
    model's: the figure is Trace_ELBO's of the same model without it, on the same draws."""
    model, guide, scale, _ = case(which)
    unscaled, unscaled_guide, _, _ = case("plain" if which == "beta" else which)
    estimate = seeded(evaluation.elbo, model, guide, X)
    expected = seeded(Trace_ELBO(max_plate_nesting=1).loss, unscaled, unscaled_guide, X)
    assert (scale * estimate.values.sum()).item() == pytest.approx(-expected, rel=1e-12)
    assert estimate.scoring == evaluation.SCORING and "poutine.scale besides the plates' left out" in estimate.scoring


def test_evaluation_log_likelihood_divides_out_the_subsample_scale():
    """log p(x) per datapoint: the same on a subsampled plate as on the full one, which is Pyro's RenyiELBO."""
    subsampled, subsampled_guide, _, _ = case("subsample")
    full, guide, _, _ = case("plain")
    values = seeded(evaluation.log_likelihood, subsampled, subsampled_guide, X, 6).values
    expected = seeded(RenyiELBO(0.0, num_particles=6, vectorize_particles=True, max_plate_nesting=1).loss,
                      full, guide, X)
    assert values.sum().item() == pytest.approx(-expected, rel=1e-12)


@pytest.mark.parametrize("which", ["mask", "beta"])
def test_evaluation_log_likelihood_is_pyros_renyi_bound_of_the_model_without_its_beta(which):
    model, guide, _, _ = case(which)
    unscaled, unscaled_guide, _, _ = case("plain" if which == "beta" else which)
    values = seeded(evaluation.log_likelihood, model, guide, X, 6).values
    expected = seeded(RenyiELBO(0.0, num_particles=6, vectorize_particles=True, max_plate_nesting=1).loss,
                      unscaled, unscaled_guide, X)
    assert values.sum().item() == pytest.approx(-expected, rel=1e-12)


def test_evaluation_of_a_global_latent_is_the_posterior_predictive():
    """Global sites are drawn from the guide, once per particle, and not scored: each datapoint's
    figure is its own sites' (Pyro's site log_probs over the plate's scale)."""
    model, guide, scale, _ = case("global")
    values = seeded(evaluation.elbo, model, guide, X).values
    pyro.set_rng_seed(SEED)
    model_trace, guide_trace = importance_traces(model, guide, 1, X)
    expected = pyro_sites(model_trace, ["z", "x"], scale) - pyro_sites(guide_trace, ["z"], scale)
    torch.testing.assert_close(values, expected[0], rtol=1e-12, atol=0)


# Bayesian linear regression: a global w outside the data plate, y ~ N(X w, sigma^2), w ~ N(0, I).
FEATURES, SIGMA = 3, 0.5


def regression_data():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(40, FEATURES, generator=generator)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5]) + SIGMA * torch.randn(40, generator=generator)
    covariance = torch.linalg.inv(torch.eye(FEATURES) + inputs.T @ inputs / SIGMA**2)
    return inputs, targets, covariance @ inputs.T @ targets / SIGMA**2


def regression_model(inputs, targets):
    w = pyro.sample("w", dist.Normal(inputs.new_zeros(FEATURES), 1.0).to_event(1))
    with pyro.plate("data", len(inputs)):
        pyro.sample("y", dist.Normal((inputs * w).sum(-1), SIGMA), obs=targets)


def regression_guide(inputs, targets):
    loc = pyro.param("loc", inputs.new_zeros(FEATURES))
    scale = pyro.param("scale", 0.3 * inputs.new_ones(FEATURES), constraint=dist.constraints.positive)
    pyro.sample("w", dist.Normal(loc, scale).to_event(1))


@pytest.mark.parametrize("name", ["stl", "iwae", "dreg", "renyi-0.5"])
def test_bayesian_regression_reaches_the_exact_posterior_mean_in_plain_svi(name):
    inputs, targets, posterior_mean = regression_data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(regression_model, regression_guide, ClippedAdam({"lr": 0.05, "lrd": 0.995}),
              OBJECTIVES[name].factory(OBJECTIVES[name].default_particles, 1))
    for _ in range(600):
        svi.step(inputs, targets)
    assert (pyro.param("loc") - posterior_mean).abs().max() < 0.03


@pytest.mark.parametrize("name", [name for name in WEIGHTED if not OBJECTIVES[name].handles_global_latents])
def test_bayesian_regression_is_refused_in_one_line_by_the_others(name):
    inputs, targets, _ = regression_data()
    pyro.clear_param_store()
    assert_one_line_refusal(
        lambda: objective(name, 2).loss(regression_model, regression_guide, inputs, targets), "w")


@pytest.mark.parametrize("mean_field", [True, False])
@pytest.mark.parametrize("reparameterized", [True, False])
def test_a_refusal_suggests_only_objectives_that_accept_the_model(mean_field, reparameterized):
    class Declared:
        model = guide = staticmethod(regression_model)

    Declared.mean_field_guide, Declared.reparameterized_guide = mean_field, reparameterized
    for name in OBJECTIVES:
        try:
            check_objective(name, Declared())
        except ConfigError as error:
            suggested = str(error).split("use --objective ")[1].split(" or ")
            for other in suggested:
                check_objective(other, Declared())
    assert all(OBJECTIVES[name].handles_global_latents for name in suitable(Declared(), global_latents=True))
