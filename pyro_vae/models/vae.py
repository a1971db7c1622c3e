"""Generative models and their guides, written as Pyro programs.

:class:`VAE` is the model of the AEVB paper (Kingma & Welling 2013, section 3)::

    model:  z ~ p(z) = N(0, I),          x ~ p(x|z)      (a likelihood module)
    guide:  z ~ q(z|x) = N(mu(x), diag sigma^2(x))         (an encoder module)

Both are methods of one :class:`~pyro.nn.PyroModule`, so that the networks they use are
submodules of one object: ``vae.parameters()`` is what an optimizer trains, ``vae.state_dict()``
what a checkpoint stores. Pyro's inference needs nothing else::

    elbo = pyro.infer.TraceMeanField_ELBO()
    loss = elbo.differentiable_loss(vae.model, vae.guide, x_batch, num_data)

``pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam(...), elbo)`` works as well: the
networks are registered with Pyro's parameter store when model and guide run.

**Adding a latent variable.** Subclass :class:`VAE`, add the networks the new variable needs in
``__init__``, and add one ``pyro.sample`` statement in ``model`` and its counterpart in
``guide``, inside :meth:`VAE.data_plate`; :mod:`pyro_vae.models.hierarchical` is the worked
example and ``docs/adding_a_latent_variable.md`` walks through it. Training, evaluation and
pictures work unchanged: they only use ``model``, ``guide``, :meth:`VAE.inputs`,
:meth:`VAE.reconstruct`, :meth:`VAE.generate` and the class attributes below.
"""

import contextlib
import itertools
from typing import Iterator, Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from torch import nn

from ..errors import ConfigError
from ..likelihoods import make_likelihood
from ..networks import GaussianEncoder, init_normal_
from ..plots import latent_grid

MANIFOLD_POINTS = 15


@contextlib.contextmanager
def _seeded_fork(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNG of the CPU (and of ``device``, if an accelerator) seeded with ``seed`` inside
    the block, and restored after it; other devices' RNGs are untouched."""
    accelerator = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if accelerator else [], device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if accelerator:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class VAE(PyroModule):
    """A variational auto-encoder with one Gaussian latent layer.

    :param encoder: maps ``x`` (shape ``(B, data_dim)``) to ``(loc, scale)`` of q(z|x).
    :param likelihood: maps ``z`` to the distribution p(x|z) with ``event_dim = 1``.
    :param latent_dim: the dimension Nz of z.

    Class attributes tell training which objectives and data the model takes:

    * ``labels``: ``"none"`` (unsupervised: model and guide take ``x``), ``"all"`` (they take
      ``x`` and its integer class labels ``y``) or ``"some"`` (labels where known: ``x`` alone
      for unlabelled data, ``x, y`` for labelled data).
    * ``mean_field_guide``: the guide satisfies the condition of Pyro's
      :class:`~pyro.infer.TraceMeanField_ELBO` (no latent's parents in the model are its
      descendants in the guide), which analytic-KL and path-derivative objectives need.
    * ``reparameterized_guide``: every latent of the guide is reparameterized (no discrete ones).
    """

    labels = "none"
    mean_field_guide = True
    reparameterized_guide = True

    def __init__(self, encoder: nn.Module, likelihood: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder = encoder
        self.likelihood = likelihood
        self.latent_dim = int(latent_dim)

    def data_plate(self, x: torch.Tensor, num_data: Optional[int] = None) -> pyro.plate:
        """The plate over the datapoints of ``x`` (dim -1).

        With ``num_data`` (the size of the whole training set) the batch is declared a
        subsample of it, and Pyro scales every log-density inside by ``num_data / len(x)``: a
        minibatch ELBO is then an unbiased estimate of the full-data ELBO, whose gradient
        is the paper's minibatch estimator (equation 8).
        """
        batch_size = x.shape[0]
        if num_data is None:
            return pyro.plate("data", batch_size, dim=-1)
        return pyro.plate("data", num_data, subsample=torch.arange(batch_size, device=x.device), dim=-1)

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z) = N(0, I), on the device and in the dtype of ``x``.

        Override it for another prior (a learned mixture, a VampPrior): the model, :meth:`generate`
        and :meth:`sample_prior` all draw from it. It returns a distribution over z with event
        shape ``(latent_dim,)`` and batch shape ``()`` or ``(len(x),)``.
        """
        zeros = x.new_zeros(self.latent_dim)
        return dist.Normal(zeros, 1.0).to_event(1)

    @pyro_method
    def model(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        with self.data_plate(x, num_data):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(z), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, num_data: Optional[int] = None) -> None:
        with self.data_plate(x, num_data):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def inputs(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple:
        """The arguments of ``model`` and ``guide`` for images ``x`` given labels ``y`` (``None`` where the
        engine gives none: see :mod:`pyro_vae.batches`)."""
        return (x,) if y is None else (x, y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *args) -> torch.Tensor:
        """Decoder means at the encoder means: E[x | z = mu(x)]."""
        loc, _ = self.encoder(x)
        return self.likelihood.mean(loc)

    @torch.no_grad()
    def sample_prior(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``num_samples`` draws z ~ p(z) from :meth:`prior` (learned or not), shape ``(num_samples, latent_dim)``.

        With a ``generator`` the draws are a function of it alone: they are made under a fork of
        the global RNG seeded from it, which is left as it was.
        """
        reference = self._reference(num_samples)
        if generator is None:
            return self._draw_prior(reference)
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        with _seeded_fork(seed, reference.device):
            return self._draw_prior(reference)

    def _reference(self, num_samples: int) -> torch.Tensor:
        """Zeros standing for a batch of ``num_samples`` data, on the model's device and in its dtype."""
        like = next(itertools.chain(self.parameters(), self.buffers()))
        return like.new_zeros(num_samples, getattr(self.likelihood, "data_dim", 0))

    def _draw_prior(self, reference: torch.Tensor) -> torch.Tensor:
        prior = self.prior(reference)
        z = prior.sample() if prior.batch_shape else prior.sample((len(reference),))
        if z.shape != (len(reference), self.latent_dim):
            raise ConfigError(f"{type(self).__name__}.prior(x) draws z of shape {tuple(z.shape)}, not "
                              f"{(len(reference), self.latent_dim)}: return a distribution with event shape "
                              f"({self.latent_dim},) and batch shape () or (len(x),)")
        return z

    @torch.no_grad()
    def generate(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decoder means E[x|z] at ``num_samples`` draws z ~ p(z) (:meth:`sample_prior`)."""
        return self.decode(self.sample_prior(num_samples, generator))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means E[x|z] at given codes (the data manifold of the paper's Figure 4)."""
        return self.likelihood.mean(z)

    @torch.no_grad()
    def pictures(self, x: torch.Tensor, y: Optional[torch.Tensor], generator: torch.Generator) -> dict:
        """The pictures that suit this model, beyond reconstructions and samples, drawn from test
        images ``x`` (labels ``y``): ``{name: (images, images_per_row, title)}``. For a 2-D latent
        space, the learned manifold (decoder means on a 15 x 15 grid of Gaussian quantiles)."""
        if self.latent_dim != 2:
            return {}
        grid = latent_grid(MANIFOLD_POINTS, x.device)
        return {"manifold": (self.decode(grid), MANIFOLD_POINTS, "learned manifold: E[x|z] on Gaussian quantiles of z")}


def build_vae(data_dim: int, latent_dim: int, hidden_dims: Sequence[int], likelihood: str = "bernoulli",
              activation: str = "tanh", init_std: Optional[float] = None) -> VAE:
    """A :class:`VAE` with MLP encoder and decoder of the same hidden sizes.

    ``hidden_dims=[500]``, ``activation="tanh"`` and ``init_std=0.01`` is the paper's MNIST
    network; ``[200]`` its Frey Face network. ``init_std=None`` keeps PyTorch's default
    initialisation.
    """
    if int(latent_dim) < 1:
        raise ConfigError(f"latent dimension must be at least 1, got {latent_dim}: pass --latent-dim 1 or more")
    if not hidden_dims or any(int(h) < 1 for h in hidden_dims):
        raise ConfigError(f"hidden sizes must be positive integers, got {list(hidden_dims)}")
    if init_std is not None and not init_std > 0:
        raise ConfigError(f"init_std must be positive, got {init_std}")
    encoder = GaussianEncoder(data_dim, hidden_dims, latent_dim, activation)
    decoder = make_likelihood(likelihood, latent_dim, hidden_dims, data_dim, activation)
    vae = VAE(encoder, decoder, latent_dim)
    if init_std is not None:
        init_normal_(vae, init_std)
    return vae
