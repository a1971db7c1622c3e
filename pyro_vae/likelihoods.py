"""Likelihoods p(x|z): a decoder network and the distribution it parameterises.

A likelihood is a :class:`torch.nn.Module` mapping a latent code ``z`` of shape
``batch_shape + (in_dim,)`` to a Pyro distribution over flattened data of shape
``batch_shape + (data_dim,)`` with ``event_dim = 1``. Any code can be decoded: the latent z of
the single-layer VAE, the lower layer h1 of a hierarchy, or ``[z, y]`` of a conditional model.

* :class:`BernoulliLikelihood` — binary images (MNIST), parameterised by logits.
* :class:`GaussianLikelihood` — continuous images in [0, 1] (Frey Face), appendix C of the AEVB
  paper: the mean is squashed to (0, 1) by a sigmoid and the per-pixel variance is learned.
"""

from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from .errors import ConfigError
from .networks import MLP


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d | sigmoid(f(z)_d)), with f an :class:`MLP` outputting logits."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], data_dim: int, activation: str = "tanh"):
        super().__init__()
        self.data_dim = int(data_dim)
        self.net = MLP(in_dim, hidden_dims, self.data_dim, activation)

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.net(z)).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder mean E[x|z], used for reconstructions, samples and manifolds."""
        return torch.sigmoid(self.net(z))

    @staticmethod
    def check_support(x: torch.Tensor, what: str = "data") -> None:
        """Refuse data that a Bernoulli cannot score (anything but 0 and 1)."""
        if not torch.all((x == 0) | (x == 1)):
            raise ConfigError(
                f"{what} is not binary but the likelihood is Bernoulli: binarize it "
                "(--binarize dynamic or static) or use --likelihood gaussian"
            )


class GaussianLikelihood(nn.Module):
    """p(x|z) = prod_d N(x_d | sigmoid(m(z)_d), s(z)_d^2), with mean and scale from one :class:`MLP`.

    A Gaussian with a learned variance can put unbounded density on a pixel by shrinking its
    variance towards zero, which makes the ELBO diverge to +infinity (the classic degeneracy of
    maximum likelihood for continuous densities). We guard against it by a floor on the standard
    deviation: ``scale = softplus(raw) + min_scale``. The default floor, 1/256, is the width of one
    grey level of 8-bit images: resolving the data more finely than it was quantised is
    meaningless, and with the floor each pixel's log-density is bounded above by
    ``-log(min_scale) - log(2 pi)/2`` (about 4.6 nats).
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], data_dim: int,
                 activation: str = "tanh", min_scale: float = 1.0 / 256):
        super().__init__()
        if not min_scale > 0:
            raise ConfigError(f"the Gaussian likelihood's min_scale must be positive, got {min_scale}")
        self.data_dim = int(data_dim)
        self.min_scale = float(min_scale)
        self.net = MLP(in_dim, hidden_dims, 2 * self.data_dim, activation)

    def _loc_scale(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_loc, raw_scale = self.net(z).split(self.data_dim, dim=-1)
        return torch.sigmoid(raw_loc), nn.functional.softplus(raw_scale) + self.min_scale

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self._loc_scale(z)
        return dist.Normal(loc, scale).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self._loc_scale(z)[0]

    @staticmethod
    def check_support(x: torch.Tensor, what: str = "data") -> None:
        """Any finite value is in a Gaussian's support."""
        if not torch.isfinite(x).all():
            raise ConfigError(f"{what} contains NaN or infinite values: clean the data first")


LIKELIHOODS = {"bernoulli": BernoulliLikelihood, "gaussian": GaussianLikelihood}


def make_likelihood(name: str, in_dim: int, hidden_dims: Sequence[int], data_dim: int,
                    activation: str = "tanh") -> nn.Module:
    """The likelihood called ``name`` (``bernoulli`` or ``gaussian``) decoding ``in_dim`` features."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {name!r}: choose one of {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name](in_dim, hidden_dims, data_dim, activation)
