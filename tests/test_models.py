import pyro
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_vae import VAE, ConfigError, build_vae
from pyro_vae.likelihoods import GaussianLikelihood


def traces(vae, x, num_data=None):
    guide_trace = poutine.trace(vae.guide).get_trace(x, num_data)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, num_data)
    return model_trace, guide_trace


def sample_sites(trace):
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_sites_shapes_and_plate(likelihood):
    vae = build_vae(data_dim=12, latent_dim=3, hidden_dims=[7, 5], likelihood=likelihood)
    x = torch.rand(4, 12).round()
    model_trace, guide_trace = traces(vae, x)
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    assert list(model_sites) == ["z", "x"] and list(guide_sites) == ["z"]
    assert model_sites["x"]["is_observed"] and torch.equal(model_sites["x"]["value"], x)
    assert model_sites["z"]["fn"].event_shape == (3,) and model_sites["x"]["fn"].event_shape == (12,)
    for site in [*model_sites.values(), *guide_sites.values()]:
        assert site["fn"].batch_shape == (4,)
        assert [frame.name for frame in site["cond_indep_stack"]] == ["data"]
    assert guide_sites["z"]["value"].shape == (4, 3)


def test_minibatch_scale_is_data_size_over_batch_size():
    vae = build_vae(data_dim=6, latent_dim=2, hidden_dims=[4])
    x = torch.rand(5, 6).round()
    model_trace, guide_trace = traces(vae, x, num_data=1000)
    for site in [*sample_sites(model_trace).values(), *sample_sites(guide_trace).values()]:
        assert site["scale"] == pytest.approx(1000 / 5)
    unscaled, _ = traces(vae, x)
    assert all(site["scale"] == 1.0 for site in sample_sites(unscaled).values())


def test_prior_is_standard_normal():
    vae = build_vae(data_dim=6, latent_dim=2, hidden_dims=[4])
    prior = vae.prior(torch.zeros(1, 6))
    assert torch.equal(prior.base_dist.loc, torch.zeros(2)) and torch.equal(prior.base_dist.scale, torch.ones(2))


def test_gaussian_likelihood_mean_in_unit_interval_and_scale_floor():
    likelihood = GaussianLikelihood(2, [8], 5, min_scale=0.01)
    with torch.no_grad():
        likelihood.net[-1].bias.fill_(-50.0)  # pushes raw scales (and means) far negative
    d = likelihood(torch.randn(3, 2))
    assert torch.all(d.base_dist.scale >= 0.01)
    assert torch.all((d.base_dist.loc >= 0) & (d.base_dist.loc <= 1))
    # the floor bounds the per-pixel log-density: -log(min_scale) - log(2 pi)/2
    bound = 5 * (-torch.log(torch.tensor(0.01)) - 0.5 * torch.log(torch.tensor(2 * torch.pi)))
    assert torch.all(d.log_prob(d.base_dist.loc) <= bound + 1e-4)


def test_paper_initialisation():
    vae = build_vae(data_dim=50, latent_dim=3, hidden_dims=[200], init_std=0.01)
    values = torch.cat([p.detach().flatten() for p in vae.parameters()])
    assert values.std().item() == pytest.approx(0.01, rel=0.05) and abs(values.mean().item()) < 1e-3


@pytest.mark.parametrize("kwargs", [dict(latent_dim=0), dict(latent_dim=-2), dict(hidden_dims=[]),
                                    dict(hidden_dims=[0]), dict(likelihood="poisson"), dict(init_std=-1.0)])
def test_impossible_configurations_are_refused(kwargs):
    arguments = dict(data_dim=6, latent_dim=2, hidden_dims=[4]) | kwargs
    with pytest.raises(ConfigError):
        build_vae(**arguments)


def test_helpers_shapes():
    vae = build_vae(data_dim=6, latent_dim=2, hidden_dims=[4])
    assert vae.reconstruct(torch.rand(3, 6)).shape == (3, 6)
    assert vae.generate(4).shape == (4, 6)
    assert vae.decode(torch.zeros(7, 2)).shape == (7, 6)


def test_classic_svi_trains_the_vae():
    """Model and guide are ordinary Pyro programs: SVI with Pyro's optimizer trains them."""
    torch.manual_seed(0)
    x = (torch.rand(64, 20) < torch.linspace(0.05, 0.95, 20)).float()
    vae = build_vae(data_dim=20, latent_dim=2, hidden_dims=[16])
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(300)]
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 2.0
    assert any(name.startswith("encoder") for name in pyro.get_param_store())


class ShiftedPrior(VAE):
    """A VAE whose prior is N(5, 1): generate must draw from it."""

    def prior(self, x):
        return pyro.distributions.Normal(x.new_full((self.latent_dim,), 5.0), 1.0).to_event(1)


def shifted_vae():
    vae = build_vae(data_dim=6, latent_dim=2, hidden_dims=[4])
    vae.__class__ = ShiftedPrior
    return vae


def test_generate_draws_from_an_overridden_prior():
    vae = shifted_vae()
    z = vae.sample_prior(4000)
    assert z.shape == (4000, 2)
    assert torch.allclose(z.mean(0), torch.full((2,), 5.0), atol=0.1)
    assert torch.allclose(z.std(0), torch.ones(2), atol=0.1)
    codes = []
    vae.decode = lambda z: codes.append(z) or z
    vae.generate(500)
    assert torch.allclose(codes[0].mean(0), torch.full((2,), 5.0), atol=0.2)


def test_a_generator_makes_prior_draws_reproducible_and_leaves_the_global_rng_alone():
    vae = build_vae(data_dim=6, latent_dim=2, hidden_dims=[4])
    state = torch.get_rng_state()
    first = vae.generate(5, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, vae.generate(5, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, vae.generate(5, torch.Generator().manual_seed(4)))
    z = vae.sample_prior(4000, torch.Generator().manual_seed(0))
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1.0) < 0.1  # N(0, I)
    assert abs(shifted_vae().sample_prior(4000, torch.Generator().manual_seed(0)).mean().item() - 5.0) < 0.1


def test_a_prior_of_the_wrong_shape_is_refused_in_one_line():
    class WrongPrior(VAE):
        def prior(self, x):
            return pyro.distributions.Normal(x.new_zeros(self.latent_dim + 1), 1.0).to_event(1)

    vae = build_vae(data_dim=6, latent_dim=2, hidden_dims=[4])
    vae.__class__ = WrongPrior
    with pytest.raises(ConfigError, match=r"draws z of shape \(3, 3\), not \(3, 2\): return a distribution"):
        vae.generate(3)
