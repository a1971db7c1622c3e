"""Two models of one's own for pyro-vae, each a small subclass of pyro_vae.VAE.

* VampPriorVAE: a learned prior, the VampPrior of Tomczak & Welling (2018),
  p(z) = (1/K) sum_k q(z | u_k), the encoder's Gaussians at K learned pseudo-inputs u_k.
* IAFVAE: a richer guide, q(z|x) = a Gaussian from the encoder followed by inverse autoregressive
  flows conditioned on the encoder's last hidden layer h(x) (Kingma et al. 2016).

Written by notebooks/05_your_own_model.ipynb (%%writefile); importable as your_models:vamp_vae and
your_models:iaf_vae from notebooks/ (pyro-vae train --model your_models:vamp_vae).
"""

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN, PyroParam, pyro_method
from torch import nn

from pyro_vae import VAE, build_vae
from pyro_vae.networks import ACTIVATIONS, MLP


class VampPriorVAE(VAE):
    """A VAE whose prior is a mixture of the encoder's posteriors at learned pseudo-inputs::

        z ~ p(z) = (1/K) sum_k N(z; mu(u_k), diag sigma^2(u_k))   # the VampPrior
        x ~ p(x|z)                                                 # the decoder, as in the plain VAE
        guide: z ~ q(z|x) = N(mu(x), diag sigma^2(x))

    The pseudo-inputs u_k are images (pixels in [0, 1]) trained with everything else.
    """

    def __init__(self, vae: VAE, data_dim: int, components: int, init_mean: float = 0.5, init_std: float = 0.05):
        super().__init__(vae.encoder, vae.likelihood, vae.latent_dim)
        init = (init_mean + init_std * torch.randn(components, data_dim)).clamp(0.01, 0.99)
        self.pseudo_inputs = PyroParam(init, constraint=dist.constraints.unit_interval)

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.encoder(self.pseudo_inputs)  # q(z | u_k) for every k: (K, latent_dim)
        uniform = dist.Categorical(logits=loc.new_zeros(len(loc)))
        return dist.MixtureSameFamily(uniform, dist.Normal(loc, scale).to_event(1))


def vamp_vae(data_dim: int, latent_dim: int = 32, hidden_dims: Sequence[int] = (300,), components: int = 200,
             activation: str = "tanh") -> VampPriorVAE:
    """A VampPrior VAE with a Bernoulli decoder; MLPs of ``hidden_dims`` in encoder and decoder."""
    vae = build_vae(data_dim, latent_dim, list(hidden_dims), "bernoulli", activation)
    return VampPriorVAE(vae, data_dim, components)


class FlowEncoder(nn.Module):
    """x -> features h(x) -> (mu(x), sigma(x)): the Gaussian q0(z0|x) and the context of the flows.

    The same MLP as the plain VAE's encoder, with its last hidden layer exposed as ``features``.
    """

    def __init__(self, data_dim: int, hidden_dims: Sequence[int], latent_dim: int, activation: str = "tanh"):
        super().__init__()
        self.latent_dim = latent_dim
        self.features = nn.Sequential(MLP(data_dim, hidden_dims[:-1], hidden_dims[-1], activation),
                                      ACTIVATIONS[activation]())
        self.gaussian_nn = nn.Linear(hidden_dims[-1], 2 * latent_dim)

    def gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.gaussian_nn(h).split(self.latent_dim, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gaussian(self.features(x))


class IAFVAE(VAE):
    """A VAE whose guide is a Gaussian followed by inverse autoregressive flows::

        z ~ p(z) = N(0, I),   x ~ p(x|z)                         # the plain VAE's model
        guide: z0 ~ N(mu(x), diag sigma^2(x)),  h = h(x)
               z = f_T(... f_1(z0; h) ...; h)                     # f_t(z) = s_t * z + (1 - s_t) * m_t,
                                                                  # (m_t, s_t) autoregressive in z, given h
    The density of z is q0(z0|x) / |det df/dz0|, which Pyro's TransformedDistribution computes
    from the flows' cached log-scales.
    """

    def __init__(self, encoder: FlowEncoder, likelihood: nn.Module, latent_dim: int, flows: int,
                 flow_hidden: int):
        super().__init__(encoder, likelihood, latent_dim)
        context_dim = encoder.gaussian_nn.in_features
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(latent_dim, context_dim, [flow_hidden]),
                                            stable=True)
            for _ in range(flows))

    def z_dist(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x): the encoder's Gaussian pushed through the flows, each conditioned on h(x)."""
        h = self.encoder.features(x)
        loc, scale = self.encoder.gaussian(h)
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1),
                                            [flow.condition(h) for flow in self.flows])

    @pyro_method
    def guide(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        with self.data_plate(x, num_data):
            pyro.sample("z", self.z_dist(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *args) -> torch.Tensor:
        """Decoder means at the flows' image of the encoder's mean."""
        h = self.encoder.features(x)
        z, _ = self.encoder.gaussian(h)
        for flow in self.flows:
            z = flow.condition(h)(z)
        return self.likelihood.mean(z)


def iaf_vae(data_dim: int, latent_dim: int = 32, hidden_dims: Sequence[int] = (300,), flows: int = 2,
            flow_hidden: Optional[int] = None, activation: str = "tanh") -> IAFVAE:
    """An IAF VAE with a Bernoulli decoder; ``flows`` IAF steps, each an autoregressive MLP of one
    hidden layer of ``flow_hidden`` units (default: 2 * latent_dim)."""
    hidden_dims = list(hidden_dims)
    likelihood = build_vae(data_dim, latent_dim, hidden_dims, "bernoulli", activation).likelihood
    encoder = FlowEncoder(data_dim, hidden_dims, latent_dim, activation)
    return IAFVAE(encoder, likelihood, latent_dim, flows, flow_hidden or 2 * latent_dim)
