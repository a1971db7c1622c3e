"""Model-side enumeration: a discrete site marked ``infer={"enumerate": "parallel"}`` in the model and
absent from the guide is summed out as Pyro's TraceEnum_ELBO sums it out. Pyro is the oracle: the
evaluation's ELBO and the importance-weighted objectives with one particle are TraceEnum_ELBO's value
(and gradient) on the same draws; log p(x) is a mixture of Gaussians in closed form. The contract
refuses the objectives that would draw the site from its prior, and ``fit`` trains it with ``enum``.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import nn

from pyro_vae import ConfigError, ImageData, check_model, evaluation, fit, make_objective
from pyro_vae.estimators import ImportanceWeightedELBO, ParticleELBO
from pyro_vae.importance import importance_traces, log_importance_weights
from pyro_vae.objectives import OBJECTIVES

B, SEED = 4, 3
X = torch.tensor([[0.5, -1.0], [1.5, 0.0], [-0.4, 0.8], [2.0, 1.1]], dtype=torch.float64)
PI = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
MU = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
#: The objectives built on importance weights whose record says they sum model enumeration out.
SUMMING = [name for name, record in OBJECTIVES.items() if record.handles_model_enumeration
           and isinstance(record.factory(record.least_particles, 1), ParticleELBO)]


def mixture(num_data=B, dummy_z=False, where="data"):
    """``(model, guide)``: y ~ Categorical(PI) enumerated in the model, z ~ N(MU_y, 1), x ~ N(z, I_2)
    per datapoint (``dummy_z``: z ~ N(0, 1) unused, x ~ N(MU_y, I_2), and the guide is the prior, so
    every weight is log p(x)); ``where`` puts y in the data plate, outside it, or in a nested plate."""
    mu = MU.clone().requires_grad_()

    def model(x):
        if where == "global":
            y = pyro.sample("y", dist.Categorical(PI), infer={"enumerate": "parallel"})
        with pyro.plate("data", num_data, subsample=torch.arange(len(x))):
            if where == "nested":
                with pyro.plate("pair", 2, dim=-2):
                    pyro.sample("y", dist.Categorical(PI), infer={"enumerate": "parallel"})
                y = torch.tensor(0)
            elif where == "data":
                y = pyro.sample("y", dist.Categorical(PI), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(torch.zeros(()) if dummy_z else mu[y], 1.0))
            loc = mu[y] if dummy_z else z
            pyro.sample("x", dist.Normal(loc.unsqueeze(-1).expand(loc.shape + (2,)), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", num_data, subsample=torch.arange(len(x))):
            if dummy_z:
                pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            else:
                pyro.sample("z", dist.Normal(x.sum(-1) / 3 + guide.shift, 0.8))

    guide.shift = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    model.mu = mu
    return model, guide


def seeded(fn, *args, **kwargs):
    pyro.set_rng_seed(SEED)
    return fn(*args, **kwargs)


def closed_form_log_px(x):
    """log p(x) = log sum_y PI_y N(x; MU_y 1, I + 1 1^T) for the linear-Gaussian mixture."""
    covariance = torch.eye(2, dtype=x.dtype) + 1.0
    components = dist.MultivariateNormal(MU.unsqueeze(-1).expand(3, 2), covariance)
    return torch.logsumexp(PI.log() + components.log_prob(x.unsqueeze(-2)), -1)


@pytest.mark.parametrize("num_data", [B, 10], ids=["full", "subsample"])
def test_the_reported_elbo_is_trace_enum_elbo(num_data):
    model, guide = mixture(num_data)
    expected = seeded(TraceEnum_ELBO(max_plate_nesting=1).loss, model, guide, X)
    values = seeded(evaluation.elbo, model, guide, X, compile="eager").values
    assert -values.sum().item() * num_data / B == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", SUMMING)
def test_one_particle_objectives_are_trace_enum_elbo_in_value_and_gradient(name):
    """K = 1: every importance-weighted objective's value is TraceEnum_ELBO's on the same draws; those
    with the reparameterized gradient (iwae, renyi, tail-adaptive) have its gradient too."""
    model, guide = mixture(10)
    record = OBJECTIVES[name]
    objective = record.factory(record.least_particles, 1)
    objective.num_particles = 1
    expected = seeded(TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss, model, guide, X)
    loss = seeded(objective.differentiable_loss, model, guide, X)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    if name in ("iwae", "renyi-0.5", "tail-adaptive"):
        for parameter in (model.mu, guide.shift):
            assert torch.allclose(torch.autograd.grad(loss, parameter, retain_graph=True)[0],
                                  torch.autograd.grad(expected, parameter, retain_graph=True)[0], rtol=1e-10)


def test_the_iwae_bound_sums_y_out_of_each_weight():
    """K = 5: the bound is the log-mean-exp of log sum_y p(x, z_k, y) - log q(z_k|x), by hand."""
    model, guide = mixture()
    _, guide_trace = seeded(importance_traces, model, guide, 5, X, shared_globals=True)
    z = guide_trace.nodes["z"]["value"]  # (5, B)
    log_joint = (PI.log() + dist.Normal(MU, 1.0).log_prob(z.unsqueeze(-1))).logsumexp(-1)
    log_joint = log_joint + dist.Normal(z.unsqueeze(-1), 1.0).log_prob(X).sum(-1)
    log_weight = log_joint - dist.Normal(X.sum(-1) / 3 + 0.1, 0.8).log_prob(z)
    expected = (torch.logsumexp(log_weight, 0) - math.log(5)).sum()
    assert seeded(ImportanceWeightedELBO(5).loss, model, guide, X) == pytest.approx(-expected.item(), rel=1e-12)


def test_log_likelihood_sums_y_out_exactly():
    """With the prior as guide of a z that x ignores, every weight is log p(x): the closed form, for any K."""
    model, guide = mixture(dummy_z=True)
    estimate = evaluation.log_likelihood(model, guide, X, 7, compile="eager")
    expected = torch.logsumexp(PI.log() + dist.Normal(MU.unsqueeze(-1), 1.0).log_prob(X.unsqueeze(-2)).sum(-1), -1)
    assert torch.allclose(estimate.values, expected, rtol=1e-12)


def test_log_likelihood_of_the_linear_gaussian_mixture_tends_to_its_closed_form():
    model, guide = mixture()
    estimate = seeded(evaluation.log_likelihood, model, guide, X, 4000, compile="eager")
    assert torch.allclose(estimate.values, closed_form_log_px(X), atol=0.02)


@pytest.mark.parametrize("where, message", [("global", "outside the data plate"),
                                            ("nested", "inside a plate nested in the data plate")])
def test_a_site_enumerated_where_no_weight_can_sum_it_out_is_refused(where, message):
    model, guide = mixture(where=where)
    with pytest.raises(ConfigError, match=f"site 'y' is enumerated in the model {message}") as error:
        log_importance_weights(model, guide, 3, X, max_plate_nesting=2 if where == "nested" else 1)
    assert "\n" not in str(error.value)


def test_a_scale_on_a_site_that_depends_on_an_enumerated_one_is_refused():
    model, guide = mixture()
    with pytest.raises(ConfigError, match="site 'y' enters the sum over enumerated values with a scale"):
        log_importance_weights(poutine.scale(model, 0.5), guide, 3, X)
    log_importance_weights(poutine.scale(model, 0.5), guide, 3, X, site_scales=False)  # the model's own density


class MixtureVAE(nn.Module):
    """y ~ Categorical(pi), enumerated in the model; z ~ N(mu_y, I); x ~ N(f(z), 0.3) per datapoint."""

    def __init__(self, data_dim=16, classes=3):
        super().__init__()
        self.logits, self.means = nn.Parameter(torch.zeros(classes)), nn.Parameter(torch.randn(classes, 2))
        self.decoder, self.encoder = nn.Linear(2, data_dim), nn.Linear(data_dim, 4)

    def model(self, x, num_data=None):
        pyro.module("vae", self)
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            y = pyro.sample("y", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(self.means[y], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(torch.sigmoid(self.decoder(z)), 0.3).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        pyro.module("vae", self)
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_the_contract_accepts_model_enumeration_only_with_an_objective_that_sums_it_out(name):
    module, x = MixtureVAE(), torch.rand(2, 16)
    check = lambda: check_model(module, (x,), name, make_objective(name), 40, eval_particles=3)  # noqa: E731
    if OBJECTIVES[name].handles_model_enumeration:
        return check()
    with pytest.raises(ConfigError) as error:
        check()
    assert str(error.value) == (f"site 'y' of MixtureVAE.model is enumerated there (not in the guide), which the "
                                f"{name} objective cannot sum out: use --objective enum")


def test_fit_trains_model_enumeration_with_enum(tmp_path):
    torch.manual_seed(0)
    data = ImageData("small", torch.rand(40, 16), torch.rand(10, 16), (4, 4))
    run = fit(MixtureVAE(), data, objective="enum", compile="eager", epochs=1, batch_size=10, eval_particles=5,
              device="cpu", out=tmp_path / "r", progress=False)
    assert math.isfinite(run.history[-1]["test_elbo"]) and math.isfinite(run.metrics["test_log_likelihood"])
    assert run.metrics["test_log_likelihood"] >= run.history[-1]["test_elbo"] - 1.0
