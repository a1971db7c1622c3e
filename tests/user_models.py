"""Models written as a user would, outside pyro_vae: importable as ``user_models:<factory>`` with
``tests/`` on the path, as the engine's tests and the command line use them."""

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam, pyro_method
from torch import nn

from pyro_vae import VAE, build_vae


class MixturePriorVAE(VAE):
    """A VAE whose prior p(z) is a learned mixture of ``components`` diagonal Gaussians."""

    def __init__(self, vae: VAE, components: int):
        super().__init__(vae.encoder, vae.likelihood, vae.latent_dim)
        self.logits = PyroParam(torch.zeros(components))
        self.locs = PyroParam(torch.randn(components, vae.latent_dim))
        self.scales = PyroParam(torch.ones(components, vae.latent_dim), constraint=dist.constraints.positive)

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits),
                                      dist.Normal(self.locs, self.scales).to_event(1))


def mixture_vae(data_dim: int, latent_dim: int = 2, hidden_dims=(16,), components: int = 3) -> MixturePriorVAE:
    return MixturePriorVAE(build_vae(data_dim, latent_dim, list(hidden_dims), "gaussian", "tanh"), components)


class PlainVAE(PyroModule):
    """A VAE written from scratch as one PyroModule: nothing of pyro_vae but the contract."""

    def __init__(self, data_dim: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 16), nn.Tanh(), nn.Linear(16, data_dim))
        self.encoder = nn.Sequential(nn.Linear(data_dim, 16), nn.Tanh(), nn.Linear(16, 2 * latent_dim))

    @pyro_method
    def model(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            loc = torch.sigmoid(self.decoder(z))
            pyro.sample("x", dist.Normal(loc, 0.1).to_event(1), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            loc, raw = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def plain_vae(data_dim: int, latent_dim: int = 2) -> PlainVAE:
    return PlainVAE(data_dim, latent_dim)


class ParamSiteVAE(nn.Module):
    """A VAE whose prior scale and guide's scale floor are ``pyro.param`` sites, as in Pyro's tutorials."""

    def __init__(self, data_dim: int, latent_dim: int = 2):
        super().__init__()
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 16), nn.Tanh(), nn.Linear(16, data_dim))
        self.encoder = nn.Sequential(nn.Linear(data_dim, 16), nn.Tanh(), nn.Linear(16, 2 * latent_dim))

    def model(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        pyro.module("decoder", self.decoder)
        prior_scale = pyro.param("prior_scale", torch.ones(self.latent_dim), constraint=dist.constraints.positive)
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), prior_scale).to_event(1))
            pyro.sample("x", dist.Normal(torch.sigmoid(self.decoder(z)), 0.1).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        pyro.module("encoder", self.encoder)
        floor = pyro.param("guide.scale_floor", torch.tensor(0.05), constraint=dist.constraints.interval(0.0, 0.5))
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            loc, raw = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + floor).to_event(1))


def param_site_vae(data_dim: int, latent_dim: int = 2) -> ParamSiteVAE:
    return ParamSiteVAE(data_dim, latent_dim)


class TabularVAE(nn.Module):
    """Rows (x, t, y): real features x, a binary treatment t, a real outcome y, explained by a latent z
    (in the spirit of Pyro's CEVAE), taking the data as three tensors."""

    def __init__(self, data_dim: int, latent_dim: int = 2):
        super().__init__()
        self.latent_dim = latent_dim
        self.x_nn = nn.Linear(latent_dim, data_dim)
        self.y_nn = nn.Linear(latent_dim + 1, 1)
        self.z_nn = nn.Sequential(nn.Linear(data_dim + 2, 16), nn.Tanh(), nn.Linear(16, 2 * latent_dim))

    def model(self, x, t, y, num_data: Optional[int] = None) -> None:
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.x_nn(z), 0.5).to_event(1), obs=x)
            zt = torch.cat([z, t.unsqueeze(-1).expand(*z.shape[:-1], 1)], -1)
            pyro.sample("y", dist.Normal(self.y_nn(zt).squeeze(-1), 0.5), obs=y)

    def guide(self, x, t, y, num_data: Optional[int] = None) -> None:
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            loc, raw = self.z_nn(torch.cat([x, t.unsqueeze(-1), y.unsqueeze(-1)], -1)).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def tabular_vae(data_dim: int, latent_dim: int = 2) -> TabularVAE:
    return TabularVAE(data_dim, latent_dim)
