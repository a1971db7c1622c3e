import dataclasses
import math
import re

import pyro
import pytest
import torch

from pyro_vae import VAE, ConfigError, OBJECTIVES, build_vae, make_objective, objectives
from pyro_vae.objectives import Objective, check_objective, register


@pytest.fixture
def setup():
    torch.manual_seed(1)
    vae = build_vae(data_dim=10, latent_dim=3, hidden_dims=[8])
    x = torch.rand(6, 10).round()
    return vae, x


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_gives_finite_loss_and_gradients(setup, name):
    vae, x = setup
    objective = make_objective(name)
    loss = objective.differentiable_loss(vae.model, vae.guide, x, num_data=60)
    loss.backward()
    assert torch.isfinite(loss)
    for module in (vae.encoder, vae.likelihood):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def loss_samples(name, vae, x, draws):
    objective = make_objective(name)
    with torch.no_grad():
        return torch.tensor([objective.differentiable_loss(vae.model, vae.guide, x).item() for _ in range(draws)])


def test_trace_and_meanfield_agree_in_expectation(setup):
    """Estimators A and B estimate the same ELBO; B (analytic KL) with less variance."""
    vae, x = setup
    trace, meanfield = loss_samples("trace", vae, x, 3000), loss_samples("meanfield", vae, x, 3000)
    stderr = math.sqrt(trace.var() / len(trace) + meanfield.var() / len(meanfield))
    assert abs(trace.mean() - meanfield.mean()) < 4 * stderr
    assert meanfield.var() < trace.var()


def test_iwae_bound_is_above_the_elbo(setup):
    vae, x = setup
    elbo, iwae = -loss_samples("meanfield", vae, x, 500).mean(), -loss_samples("iwae", vae, x, 500).mean()
    assert iwae > elbo


def test_minibatch_loss_scales_to_the_full_data_objective(setup):
    vae, x = setup
    for name in OBJECTIVES:
        objective = make_objective(name)
        torch.manual_seed(3)
        batch_loss = objective.loss(vae.model, vae.guide, x)
        torch.manual_seed(3)
        full_loss = objective.loss(vae.model, vae.guide, x, num_data=600)
        assert full_loss == pytest.approx(batch_loss * 100, rel=1e-5), name


def test_particles():
    assert make_objective("iwae").num_particles == 5
    assert make_objective("trace", 7).num_particles == 7
    with pytest.raises(ConfigError):
        make_objective("iwae", 1)
    with pytest.raises(ConfigError):
        make_objective("nope")


def test_estimators_by_name():
    """The issue's estimators: Monte-Carlo and analytic KL, TraceGraph, STL, IWAE, DReG, Renyi 0.5, tail-adaptive."""
    from pyro_vae import estimators

    expected = {"trace": (pyro.infer.Trace_ELBO, 1), "meanfield": (pyro.infer.TraceMeanField_ELBO, 1),
                "tracegraph": (estimators.ScoreFunctionELBO, 1), "stl": (estimators.StickingTheLandingELBO, 1),
                "iwae": (estimators.ImportanceWeightedELBO, 5), "dreg": (estimators.DoublyReparameterizedELBO, 5),
                "renyi-0.5": (estimators.ImportanceWeightedELBO, 5), "tail-adaptive": (estimators.TailAdaptiveELBO, 5)}
    for name, (cls, particles) in expected.items():
        objective = make_objective(name)
        assert isinstance(objective, cls) and objective.num_particles == particles, name
        assert make_objective(name, 50).num_particles == 50
    assert make_objective("renyi-0.5").alpha == 0.5 and make_objective("iwae").alpha == 0.0
    # particles are vectorized in a plate of their own: the model's plate count is unchanged
    assert all(make_objective(name, 5).max_plate_nesting == 1 for name in ("iwae", "dreg", "stl", "tail-adaptive"))


def docstring_table(doc):
    """``{name: K}`` from the rows of the first table of ``doc`` (rows start with a ``name``)."""
    rows = re.findall(r"^``([^`]+)``\s+(\d+)\s", doc, flags=re.MULTILINE)
    return {name: int(k) for name, k in rows}


def test_the_docstring_table_lists_every_registered_objective_with_its_default_k():
    from pyro_vae import objectives

    table = docstring_table(objectives.__doc__)
    assert list(table) == list(OBJECTIVES)
    assert table == {name: record.default_particles for name, record in OBJECTIVES.items()}


def test_each_objective_is_one_record_that_make_objective_reads():
    for name, record in OBJECTIVES.items():
        assert isinstance(record, Objective) and record.name == name and record.summary
        assert make_objective(name).num_particles == record.default_particles
        if record.least_particles > 1:
            with pytest.raises(ConfigError, match=f"at least {record.least_particles} particles"):
                make_objective(name, record.least_particles - 1)
    assert {n for n, r in OBJECTIVES.items() if r.handles_discrete} == {"trace", "tracegraph", "enum"}
    assert {n for n, r in OBJECTIVES.items() if r.analytic_kl} == {"meanfield", "jit-meanfield"}
    assert {n for n, r in OBJECTIVES.items() if r.needs_mean_field_guide} == {"meanfield", "jit-meanfield", "stl",
                                                                               "dreg"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        OBJECTIVES["iwae"].default_particles = 1


def test_register_adds_a_record_and_refuses_a_taken_name(monkeypatch):
    monkeypatch.setattr(objectives, "OBJECTIVES", dict(OBJECTIVES))
    record = register(Objective("double-trace", lambda k, n: pyro.infer.Trace_ELBO(num_particles=k), "test",
                                default_particles=3, least_particles=2))
    assert objectives.OBJECTIVES["double-trace"] is record
    assert make_objective("double-trace").num_particles == 3
    with pytest.raises(ConfigError, match="already registered"):
        register(Objective("trace", record.factory, "again"))
    with pytest.raises(ConfigError, match="least_particles"):
        Objective("bad", record.factory, "K below its least", default_particles=1, least_particles=2)


def plain_model(x):
    pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))


class OnlyModel:
    def model(self, x):
        pass


@pytest.mark.parametrize("thing, message", [
    (plain_model, "got the function plain_model: pass the object whose model and guide"),
    (OnlyModel(), "got a OnlyModel: pass the object whose model and guide"),
    (VAE, "got the class VAE: pass an instance of it"),
])
def test_check_objective_refuses_what_is_not_a_model_with_a_guide(thing, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_objective("dreg", thing)
    assert "\n" not in str(error.value)


def test_check_objective_refuses_an_unknown_name_and_reads_the_declarations():
    vae = build_vae(10, 3, [8])
    with pytest.raises(ConfigError, match="unknown objective 'nope': choose one of trace, meanfield"):
        check_objective("nope", vae)
    for name in OBJECTIVES:
        check_objective(name, vae)  # a VAE declares nothing against any of them

    class Undeclared:  # no attributes: both default to True
        model = guide = staticmethod(plain_model)

    check_objective("dreg", Undeclared())
    Undeclared.mean_field_guide = False
    with pytest.raises(ConfigError, match="assumes a mean-field guide"):
        check_objective("meanfield", Undeclared())
    check_objective("iwae", Undeclared())
    Undeclared.reparameterized_guide = False
    with pytest.raises(ConfigError, match="discrete latent variables.*use --objective enum or tracegraph or trace"):
        check_objective("iwae", Undeclared())
    check_objective("enum", Undeclared())


def test_models_follow_pyros_validation_switch():
    """No hard-coded ``validate_args=False``: with validation on a bad argument is caught where it is made."""
    vae = build_vae(10, 3, [8])
    with torch.no_grad():
        vae.encoder.net[0].weight.fill_(float("nan"))
    x = torch.rand(6, 10).round()
    with pyro.validation_enabled(True):
        assert pyro.infer.util.is_validation_enabled() and pyro.distributions.is_validation_enabled()
        with pytest.raises(ValueError, match="Normal"):
            make_objective("meanfield").differentiable_loss(vae.model, vae.guide, x)
    with pyro.validation_enabled(False):
        assert not pyro.infer.util.is_validation_enabled() and not pyro.distributions.is_validation_enabled()
        with pytest.warns(UserWarning, match="NaN"):  # Pyro's own NaN warning, which is not validation
            assert torch.isnan(make_objective("meanfield").differentiable_loss(vae.model, vae.guide, x))
