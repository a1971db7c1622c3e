"""A conditional VAE: generation conditioned on a label or on part of an image (Sohn et al. 2015).

::

    model:  z ~ N(0, I),   x ~ p(x|z, c)
    guide:  z ~ q(z|x, c)

The condition c is an observed input of both networks, never a random variable of the model:

* ``condition="label"``: c is the one-hot class label; the model and guide take ``x, y``, and
  :meth:`decode` draws any style z as any digit.
* ``condition="top-half"``: c is the top half of the image (the bottom half zeroed); model and
  guide take ``x`` alone, and :meth:`complete` fills in the bottom half of an image from its top.

It is :class:`~pyro_vae.models.VAE` with one change: the networks see ``[x, c]`` and ``[z, c]``
instead of ``x`` and ``z``. The prior is N(0, I) for every c (Kingma et al. 2014's M2 makes the
same choice; Sohn et al. also learn a prior network p(z|c)).
"""

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn

from ..errors import ConfigError
from ..likelihoods import make_likelihood
from ..networks import GaussianEncoder, concat, init_normal_
from .vae import VAE

CONDITIONS = ("label", "top-half")


class ConditionalVAE(VAE):
    """p(x|z, c) and q(z|x, c) for a condition c computed from the image or its label.

    :param encoder: q(z|x, c), a Gaussian network on ``[x, c]``.
    :param likelihood: p(x|z, c), decoding ``[z, c]``.
    :param condition: ``"label"`` or ``"top-half"``.
    :param num_classes: the number of classes (for ``"label"``).
    :param image_shape: ``(height, width)`` of the images (for ``"top-half"``).
    """

    def __init__(self, encoder: GaussianEncoder, likelihood: nn.Module, condition: str, num_classes: int = 10,
                 image_shape: Sequence[int] = (28, 28)):
        super().__init__(encoder, likelihood, encoder.latent_dim)
        if condition not in CONDITIONS:
            raise ConfigError(f"unknown condition {condition!r}: choose one of {', '.join(CONDITIONS)}")
        self.condition = condition
        self.labels = "all" if condition == "label" else "none"
        self.num_classes = int(num_classes)
        height, width = image_shape
        top = torch.zeros(height, width)
        top[: height // 2] = 1.0
        self.register_buffer("top_mask", top.reshape(-1), persistent=False)

    def context(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The condition c of images ``x`` with labels ``y``."""
        if self.condition == "label":
            if y is None:
                raise ConfigError("this conditional VAE is conditioned on labels: pass the labels y with x")
            return nn.functional.one_hot(y, self.num_classes).to(x.dtype)
        return x * self.top_mask

    @pyro_method
    def model(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, num_data: Optional[int] = None) -> None:
        c = self.context(x, y)
        with self.data_plate(x, num_data):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(concat(z, c)), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, num_data: Optional[int] = None) -> None:
        c = self.context(x, y)
        with self.data_plate(x, num_data):
            pyro.sample("z", dist.Normal(*self.encoder(concat(x, c))).to_event(1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        c = self.context(x, y)
        loc, _ = self.encoder(concat(x, c))
        return self.likelihood.mean(concat(loc, c))

    @torch.no_grad()
    def generate(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decoder means at draws z ~ p(z): classes 0, 1, ..., C - 1 in turn for a label
        condition; for a top-half condition, blank tops (the model's unconditional guess)."""
        z = self.sample_prior(num_samples, generator)
        if self.condition == "label":
            return self.decode(z, torch.arange(num_samples, device=z.device) % self.num_classes)
        return self.likelihood.mean(concat(z, z.new_zeros(num_samples, self.top_mask.numel())))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decoder means E[x|z, y] for a label condition; ``y`` defaults to class 0."""
        if self.condition != "label":
            raise ConfigError("decode(z, y) needs a label condition: use complete(x) for a top-half condition")
        if y is None:
            y = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
        return self.likelihood.mean(concat(z, nn.functional.one_hot(y, self.num_classes).to(z.dtype)))

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int = 1,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decoder means E[x|z, top(x)] at ``num_samples`` draws z ~ p(z) per image, shape
        ``(num_samples, len(x), data_dim)``; only the top halves of ``x`` are read."""
        if self.condition != "top-half":
            raise ConfigError("complete(x) needs a top-half condition: use decode(z, y) for a label condition")
        z = self.sample_prior(num_samples * len(x), generator).reshape(num_samples, len(x), self.latent_dim)
        return self.likelihood.mean(concat(z, self.context(x)))


    @torch.no_grad()
    def pictures(self, x: torch.Tensor, y: Optional[torch.Tensor], generator: torch.Generator) -> dict:
        """For a label condition ``class_samples``: ten draws z ~ p(z) (rows), each drawn as every
        class (across). For a top-half condition ``completions``: ten test images (left), their
        top halves, and eight completions of each."""
        rows = 10
        if self.condition == "label":
            z = self.sample_prior(rows, generator)[:, None]
            classes = torch.arange(self.num_classes, device=x.device)
            images = self.decode(z.expand(rows, self.num_classes, -1), classes.expand(rows, -1))
            return {"class_samples": (images.reshape(-1, images.shape[-1]), self.num_classes,
                                      "samples per class: one z ~ p(z) per row, classes across")}
        x = x[:rows]
        completions = self.complete(x, 8, generator).transpose(0, 1)
        images = torch.cat([x[:, None], self.context(x)[:, None], completions], dim=1)
        return {"completions": (images.reshape(-1, images.shape[-1]), images.shape[1],
                                "test image, its top half, and completions from p(x | z, top half)")}


def build_conditional_vae(data_dim: int, latent_dim: int, hidden_dims: Sequence[int], condition: str = "label",
                          num_classes: int = 10, image_shape: Sequence[int] = (28, 28),
                          likelihood: str = "bernoulli", activation: str = "tanh",
                          init_std: Optional[float] = None) -> ConditionalVAE:
    """A :class:`ConditionalVAE` with encoder and decoder MLPs of the same hidden sizes."""
    if condition not in CONDITIONS:
        raise ConfigError(f"unknown condition {condition!r}: choose one of {', '.join(CONDITIONS)}")
    if int(image_shape[0]) * int(image_shape[1]) != data_dim:
        raise ConfigError(f"image shape {tuple(image_shape)} does not hold {data_dim} pixels")
    context_dim = num_classes if condition == "label" else data_dim
    vae = ConditionalVAE(
        encoder=GaussianEncoder(data_dim + context_dim, hidden_dims, latent_dim, activation),
        likelihood=make_likelihood(likelihood, latent_dim + context_dim, hidden_dims, data_dim, activation),
        condition=condition, num_classes=num_classes, image_shape=image_shape)
    if init_std is not None:
        init_normal_(vae, init_std)
    return vae
