"""Neural networks used by encoders and likelihoods.

The AEVB paper (Kingma & Welling 2013, appendix C) uses multi-layer perceptrons with one hidden
layer of tanh units; :class:`MLP` generalises this to any number of hidden layers and any
activation, and :func:`init_normal_` draws every weight and bias from N(0, std^2): the paper's
"initialised by random sampling from N(0, 0.01)" writes a Gaussian as N(mean, variance), as it does
throughout, so its setting is std = 0.1 (``docs/wake_sleep_frey_face.md`` measures both readings).
"""

from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Sequential):
    """A fully connected network ``in_dim -> hidden_dims... -> out_dim``.

    The activation follows every hidden layer; the output layer is linear, so that the module
    using the network (an encoder or a likelihood) decides how to constrain its outputs. Outputs
    come in the input's dtype: under bfloat16 autocast (:mod:`pyro_vae.precision`) the products
    run in bfloat16 and what follows the network, log-densities included, stays float32.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "tanh"):
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {activation!r}: choose one of {', '.join(sorted(ACTIVATIONS))}"
            )
        sizes = [in_dim, *hidden_dims, out_dim]
        if any(int(size) < 1 for size in sizes):
            raise ConfigError(f"network sizes must be positive integers, got {sizes}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(x.dtype)


class GaussianEncoder(nn.Module):
    """Amortized diagonal Gaussian: ``x -> (loc, scale)`` of q(z|x) = N(loc, diag scale^2).

    The paper's encoder outputs ``log sigma^2``; we output an unconstrained value mapped through
    softplus (plus a small floor), which has the same range but cannot overflow when a large
    step sizes pushes the pre-activation far out (``exp`` of it would).
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], latent_dim: int,
                 activation: str = "tanh", min_scale: float = 1e-4):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        self.net = MLP(in_dim, hidden_dims, 2 * self.latent_dim, activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x).split(self.latent_dim, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + self.min_scale


def concat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate features (last dim) after broadcasting the batch dims.

    A network of several inputs, such as q(z|x, y) or p(x|z, y), sees ``[x, y]``. Under Pyro's
    enumeration or a plate of particles the inputs have different batch shapes (``y`` of shape
    ``(10, 1, 10)`` against ``x`` of shape ``(B, 784)``), which this broadcasts first.
    """
    batch_shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*batch_shape, t.shape[-1]) for t in tensors], dim=-1)


def init_normal_(module: nn.Module, std: float) -> nn.Module:
    """Draw every parameter of ``module`` from N(0, std^2), in place (the paper: std = 0.1)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, std)
    return module
