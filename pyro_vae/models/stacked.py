"""M1 + M2: the semi-supervised model stacked on a trained VAE (Kingma et al. 2014, section 3.2).

::

    model:  y ~ Cat(1/C),  z ~ N(0, I),  z1 ~ p(z1|y, z) = N(mu(y, z), diag sigma^2(y, z)),  x ~ p(x|z1)
    guide:  z1 ~ q(z1|x),  y ~ q(y|z1)  (only where y is not observed),  z ~ q(z|z1, y)

M1 is a trained :class:`~pyro_vae.models.VAE` (``pyro-vae train --model vae``): its encoder
q(z1|x) and likelihood p(x|z1) are kept fixed. M2 (:mod:`pyro_vae.models.semisupervised`) then
generates M1's code z1 instead of the image: its decoder is a Gaussian over z1, its classifier
and encoder read z1. Kingma et al. train M2 on draws of z1 from q(z1|x), which is what this
program does, written as one Pyro program over x with three latent variables: with M1's
parameters frozen, the gradient of its ELBO is the gradient of M2's ELBO on those draws, while
its value (and the importance-sampled log-likelihood) is in nats per image, comparable with
every other model here. Kingma et al. report 96.67% test accuracy with 100 labels for M1 + M2
against 88.03% for M2 on pixels.

Classes are predicted from M1's encoder mean, ``q(y | z1 = mu(x))``.
"""

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch

from ..errors import ConfigError
from ..networks import MLP, GaussianEncoder, init_normal_
from .semisupervised import SemiSupervisedVAE
from .vae import VAE


class StackedSemiSupervisedVAE(SemiSupervisedVAE):
    """M2 over the codes z1 of a fixed, trained VAE ``m1``.

    :param m1: the trained VAE; its parameters are frozen (``requires_grad = False``).
    :param encoder: q(z|z1, y), a Gaussian network on ``[z1, onehot(y)]``.
    :param conditional: p(z1|y, z), a Gaussian network on ``[z, onehot(y)]``.
    :param classifier: an MLP from z1 to the logits of q(y|z1).
    """

    def __init__(self, m1: VAE, encoder: GaussianEncoder, conditional: GaussianEncoder, classifier: torch.nn.Module,
                 num_classes: int, aux_weight: float = 0.0):
        super().__init__(encoder, conditional, classifier, num_classes, aux_weight)
        self.m1 = m1.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "StackedSemiSupervisedVAE":
        """Train M2's networks; M1 stays fixed, in evaluation mode."""
        super().train(mode)
        self.m1.eval()
        return self

    def generate_data(self, code: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z1 = pyro.sample("z1", dist.Normal(*self.likelihood(code)).to_event(1))
        pyro.sample("x", self.m1.likelihood(z1), obs=x)
        return z1

    def infer_data(self, x: torch.Tensor) -> torch.Tensor:
        return pyro.sample("z1", dist.Normal(*self.m1.encoder(x)).to_event(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.m1.encoder(x)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image means E[x|z1] at the means z1 = E[z1|z, y]; ``y`` defaults to class 0."""
        z1, _ = self.likelihood(self.code(z, y))
        return self.m1.likelihood.mean(z1)


def build_stacked_vae(m1: VAE, latent_dim: int, hidden_dims: Sequence[int], num_classes: int,
                      activation: str = "softplus", init_std: Optional[float] = None,
                      aux_weight: float = 0.0) -> StackedSemiSupervisedVAE:
    """M2's networks, each with ``hidden_dims`` units, over the codes of the trained VAE ``m1``.

    Kingma et al. stack M2 (500 softplus units, z of 50) on an M1 with a 50-dimensional code.
    """
    if type(m1) is not VAE:
        raise ConfigError(f"M1 + M2 stacks M2 on a trained 'vae' model, got a {type(m1).__name__}: "
                          "train one with 'pyro-vae train --model vae' and pass its run directory")
    if int(num_classes) < 2:
        raise ConfigError(f"a class variable needs at least 2 classes, got {num_classes}")
    code_dim = m1.latent_dim
    model = StackedSemiSupervisedVAE(
        m1,
        encoder=GaussianEncoder(code_dim + num_classes, hidden_dims, latent_dim, activation),
        conditional=GaussianEncoder(latent_dim + num_classes, hidden_dims, code_dim, activation),
        classifier=MLP(code_dim, hidden_dims, num_classes, activation),
        num_classes=num_classes, aux_weight=aux_weight)
    if init_std is not None:
        for network in (model.encoder, model.likelihood, model.classifier):
            init_normal_(network, init_std)
    return model
