"""A VAE with two stochastic layers: the architecture of the IWAE paper (Burda et al. 2016, section 5).

::

    model:  h2 ~ N(0, I),   h1 ~ p(h1|h2) = N(mu(h2), diag sigma^2(h2)),   x ~ p(x|h1)
    guide:  h1 ~ q(h1|x) = N(mu(x), diag sigma^2(x)),   h2 ~ q(h2|h1) = N(mu(h1), diag sigma^2(h1))

Burda et al. use ``x -> 200-200 -> h1 (100) -> 100-100 -> h2 (50)`` with a Bernoulli output:
``build_hierarchical_vae(784, 100, [200, 200])``. The upper networks have half the units of the
lower ones at every level and h2 has half the dimensions of h1, as in their paper.

It is :class:`~pyro_vae.models.VAE` plus one latent variable: two networks for h2 (its
conditional in the guide, and h1's conditional in the model), one ``pyro.sample`` statement in
``model`` and one in ``guide``. Everything else (the data plate, the encoder of h1, the
likelihood, reconstructions) is inherited.

The guide is not mean-field with respect to the model: h2 is h1's parent in the model and its
descendant in the guide, so Pyro's analytic-KL :class:`~pyro.infer.TraceMeanField_ELBO` would be
biased (see its docstring) and is refused, as are the path-derivative objectives (``stl``,
``dreg``), whose detached guide parameters would cut the path from h1 to h2.
"""

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn

from ..errors import ConfigError
from ..likelihoods import make_likelihood
from ..networks import GaussianEncoder, init_normal_
from .vae import VAE


class HierarchicalVAE(VAE):
    """Two Gaussian latent layers h1 (``lower_dim``) and h2 (``latent_dim``, the top of the hierarchy).

    :param encoder: q(h1|x), as in :class:`VAE`.
    :param upper_encoder: q(h2|h1), a Gaussian network on h1.
    :param upper_decoder: p(h1|h2), a Gaussian network on h2.
    :param likelihood: p(x|h1).
    """

    mean_field_guide = False

    def __init__(self, encoder: nn.Module, upper_encoder: GaussianEncoder, upper_decoder: GaussianEncoder,
                 likelihood: nn.Module):
        super().__init__(encoder, likelihood, upper_encoder.latent_dim)
        self.upper_encoder = upper_encoder
        self.upper_decoder = upper_decoder
        self.lower_dim = encoder.latent_dim

    @pyro_method
    def model(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        with self.data_plate(x, num_data):
            h2 = pyro.sample("h2", self.prior(x))
            h1 = pyro.sample("h1", dist.Normal(*self.upper_decoder(h2)).to_event(1))
            pyro.sample("x", self.likelihood(h1), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        with self.data_plate(x, num_data):
            h1 = pyro.sample("h1", dist.Normal(*self.encoder(x)).to_event(1))
            pyro.sample("h2", dist.Normal(*self.upper_encoder(h1)).to_event(1))

    @torch.no_grad()
    def decode(self, h2: torch.Tensor) -> torch.Tensor:
        """Decoder means E[x|h1] at the means h1 = E[h1|h2] of the given top-layer codes."""
        h1, _ = self.upper_decoder(h2)
        return self.likelihood.mean(h1)


def build_hierarchical_vae(data_dim: int, latent_dim: int, hidden_dims: Sequence[int],
                           likelihood: str = "bernoulli", activation: str = "tanh",
                           init_std: Optional[float] = None) -> HierarchicalVAE:
    """Burda et al.'s two-layer network: h1 of ``latent_dim`` units behind ``hidden_dims``, and h2
    of half as many units behind hidden layers of half the width.

    ``build_hierarchical_vae(784, 100, [200, 200])`` is the paper's MNIST network.
    """
    if int(latent_dim) < 2:
        raise ConfigError(f"the hierarchical model halves the latent dimension for its top layer: "
                          f"pass --latent-dim 2 or more, got {latent_dim}")
    if not hidden_dims or any(int(h) < 2 for h in hidden_dims):
        raise ConfigError(f"the hierarchical model halves its hidden sizes for the top layer: "
                          f"pass hidden sizes of 2 or more, got {list(hidden_dims)}")
    upper_dim, upper_hidden = latent_dim // 2, [h // 2 for h in hidden_dims]
    vae = HierarchicalVAE(
        encoder=GaussianEncoder(data_dim, hidden_dims, latent_dim, activation),
        upper_encoder=GaussianEncoder(latent_dim, upper_hidden, upper_dim, activation),
        upper_decoder=GaussianEncoder(upper_dim, upper_hidden, latent_dim, activation),
        likelihood=make_likelihood(likelihood, latent_dim, hidden_dims, data_dim, activation))
    if init_std is not None:
        init_normal_(vae, init_std)
    return vae
