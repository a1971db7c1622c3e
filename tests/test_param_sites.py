"""``pyro.param`` sites of a user's model are trained by fit as SVI trains them (Pyro's gradient as
the oracle), with their constraints, saved in the checkpoint, restored by resume and load_run, and
left in Pyro's param store (pyro_vae.param_sites)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.distributions import constraints, transform_to

from pyro_vae import CheckpointError, ImageData, build_vae, fit, load_dataset, load_run, resume
from pyro_vae.param_sites import adopt, constraint_data, constraint_from_data, served
from pyro_vae.step import ObjectiveLoss

from user_models import ParamSiteVAE, PlainVAE, mixture_vae

FREY = load_dataset("frey-face")
SMALL = ImageData("small-frey", FREY.train[:200], FREY.test[:40], FREY.image_shape)
QUICK = dict(epochs=2, batch_size=50, eval_particles=2, device="cpu")
SITES = ("prior_scale", "guide.scale_floor")


def test_the_gradient_of_each_param_site_is_pyros():
    """One step's gradient with respect to each site's unconstrained value: the engine's loss against
    Pyro's Trace_ELBO on the same draws, with Pyro's own param store."""
    model, x = ParamSiteVAE(560), SMALL.train[:8]
    adopt(model, (x,), {"num_data": 200})
    assert sorted(model.pyro_params.names) == sorted(SITES)
    pyro.set_rng_seed(1)
    ObjectiveLoss(served(model), Trace_ELBO())([((x,), 200)]).backward()
    pyro.clear_param_store()
    for name in SITES:  # Pyro starts from the same values
        pyro.param(name, model.pyro_params.constrained(name).detach(), constraint=model.pyro_params.constraints[name])
    pyro.set_rng_seed(1)
    Trace_ELBO().loss_and_grads(model.model, model.guide, x, num_data=200)
    for name in SITES:
        expected = pyro.get_param_store().named_parameters()
        torch.testing.assert_close(model.pyro_params.unconstrained(name).grad, dict(expected)[name].grad)


@pytest.mark.parametrize("make", [lambda: PlainVAE(560, 2), lambda: build_vae(560, 2, [8], "gaussian", "tanh"),
                                  lambda: mixture_vae(560)], ids=["nn.Module", "VAE", "PyroParam"])
def test_module_parameters_are_not_taken_for_param_sites(make):
    model = make()
    adopt(model, (SMALL.train[:2],), {"num_data": 200})
    assert not hasattr(model, "pyro_params") and served(model) is model


@pytest.mark.parametrize("compile", ["eager", "replay"])
def test_fit_trains_them_within_their_constraints_and_leaves_them_in_the_param_store(tmp_path, compile):
    run = fit(ParamSiteVAE(560), SMALL, out=tmp_path / "r", progress=False, compile=compile, **QUICK)
    sites = run.model.pyro_params
    assert not torch.allclose(sites.constrained("prior_scale"), torch.ones(2))  # trained
    assert sites.constrained("guide.scale_floor").item() != pytest.approx(0.05)
    assert 0 < sites.constrained("guide.scale_floor").item() < 0.5
    for name in SITES:
        assert torch.equal(pyro.param(name), sites.constrained(name))


def test_the_traced_step_trains_them_as_the_eager_step(tmp_path):
    runs = {}
    for compile in ("eager", "replay"):
        pyro.set_rng_seed(3)  # the same initial weights
        runs[compile] = fit(ParamSiteVAE(560), SMALL, out=tmp_path / compile, progress=False, compile=compile, seed=3,
                            **QUICK)
    eager, traced = runs["eager"], runs["replay"]
    assert traced.metrics["environment"]["training_step"].startswith("replay")
    for name in SITES:
        torch.testing.assert_close(traced.model.pyro_params.constrained(name),
                                   eager.model.pyro_params.constrained(name))


def test_load_run_and_resume_restore_them(tmp_path):
    pyro.set_rng_seed(0)  # the same initial weights
    whole = fit(ParamSiteVAE(560), SMALL, out=tmp_path / "whole", progress=False, **QUICK)
    pyro.set_rng_seed(0)
    half = fit(ParamSiteVAE(560), SMALL, out=tmp_path / "half", progress=False, **{**QUICK, "epochs": 1})
    pyro.clear_param_store()
    resumed = resume(tmp_path / "half", epochs=2, data=SMALL, model=ParamSiteVAE(560), progress=False)
    pyro.clear_param_store()
    loaded, _, _ = load_run(tmp_path / "whole", model=ParamSiteVAE(560))
    for name in SITES:
        assert torch.equal(resumed.model.pyro_params.constrained(name), whole.model.pyro_params.constrained(name))
        assert torch.equal(loaded.pyro_params.constrained(name), whole.model.pyro_params.constrained(name))
        assert torch.equal(pyro.param(name), whole.model.pyro_params.constrained(name))


CONSTRAINTS = [constraints.real, constraints.positive, constraints.unit_interval, constraints.interval(-1.0, 3.0),
               constraints.greater_than(torch.tensor([1.0, 2.0])), constraints.independent(constraints.positive, 1),
               constraints.simplex, dist.constraints.softplus_positive, dist.constraints.positive_ordered_vector]


@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=lambda c: type(c).__name__)
def test_constraints_are_saved_as_data_and_rebuilt(constraint):
    value = torch.randn(2)
    rebuilt = constraint_from_data(constraint_data(constraint))
    assert type(rebuilt) is type(constraint)
    torch.testing.assert_close(transform_to(rebuilt)(value), transform_to(constraint)(value))


def test_a_checkpoint_cannot_name_another_class_as_a_constraint():
    with pytest.raises(CheckpointError, match="'Popen'"):
        constraint_from_data({"constraint": "Popen", "attributes": {}})
