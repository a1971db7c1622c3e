"""The linear-Gaussian VAE that the numerical tests check against closed forms.

    z ~ N(0, I_L),  x | z ~ N(W z + b, sigma^2 I_D)   =>   x ~ N(b, W W^T + sigma^2 I_D)
    q(z|x) = N(A x + c, diag s^2)

The exact posterior is Gaussian, p(z|x) = N(S W^T (x - b) / sigma^2, S) with
S = (I + W^T W / sigma^2)^-1; with orthogonal columns of W it is diagonal, so the linear encoder
can represent it. Every network weight is a trainable parameter, in the dtype it is given.
"""

import pyro.distributions as dist
import torch
from torch import nn

D, L, SIGMA = 4, 2, 0.5


class LinearGaussianLikelihood(nn.Module):
    """p(x|z) = N(W z + b, sigma^2 I)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(self.mean(z), SIGMA).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T + self.bias


class LinearEncoder(nn.Module):
    """q(z|x) = N(A x + c, diag s^2), with s stored as its logarithm ``log_scale``."""

    def __init__(self, matrix: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.matrix = nn.Parameter(matrix.detach().clone())
        self.offset = nn.Parameter(offset.detach().clone())
        self.log_scale = nn.Parameter(scale.detach().log())

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x @ self.matrix.T + self.offset, self.scale.expand(*x.shape[:-1], L)


def exact_posterior(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (B, L) and covariance (L, L) of p(z|x)."""
    covariance = torch.linalg.inv(torch.eye(L, dtype=weight.dtype) + weight.T @ weight / SIGMA**2)
    return (x - bias) @ weight @ covariance / SIGMA**2, covariance
