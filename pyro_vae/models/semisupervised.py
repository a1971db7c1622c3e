"""The semi-supervised model M2 of Kingma, Rezende, Mohamed & Welling (2014, section 3.1.2).

::

    model:  y ~ Cat(1/C),  z ~ N(0, I),  x ~ p(x|y, z)
    guide:  y ~ q(y|x) = Cat(pi(x))   (only where y is not observed),   z ~ q(z|x, y)

A class label y is a second latent variable, observed for the labelled datapoints and latent for
the others. For an unlabelled datapoint the guide's classifier q(y|x) proposes y; the ``y`` site
is marked for parallel enumeration, so that :class:`~pyro.infer.TraceEnum_ELBO` (objective
``enum``) sums over all C classes exactly instead of sampling one (Kingma et al.'s equation 7).

**The auxiliary classification loss.** In the ELBO the classifier only learns from unlabelled
data. Kingma et al. (equation 9) add ``alpha * log q(y|x)`` of the labelled data to the objective.
Here it is an observed site of the model, ``y_aux`` ~ q(y|x) with ``obs=y``, scaled by
``aux_weight``, present only when labels are given, so every Pyro objective adds the term with
the data plate's scale. With the plate scaling labelled minibatches to the ``N_l`` labelled
datapoints, ``aux_weight = 0.1 * N / N_l`` is their ``alpha = 0.1 * N`` (the training loop's
default).

Labels are integer class indices; the networks see them one-hot. :meth:`classify` is the
classifier's prediction, :meth:`styles` the codes z of images under their predicted classes, and
:meth:`decode` draws any code in any class: one style across all digits.

What (y, z) generate is one method, :meth:`generate_data` (here the image), and what the
classifier and encoder read is :meth:`infer_data` and :meth:`features` (here the image):
:mod:`pyro_vae.models.stacked` overrides these to stack M2 on a trained VAE (M1 + M2).
"""

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import pyro_method
from torch import nn

from ..errors import ConfigError
from ..likelihoods import make_likelihood
from ..networks import MLP, GaussianEncoder, concat, init_normal_
from .vae import VAE


class SemiSupervisedVAE(VAE):
    """M2: a class label y and a style z jointly generate x.

    :param encoder: q(z|x, y), a Gaussian network on ``[x, onehot(y)]``.
    :param likelihood: p(x|y, z), decoding ``[z, onehot(y)]``.
    :param classifier: an MLP from x to the logits of q(y|x).
    :param num_classes: C.
    :param aux_weight: the weight of the auxiliary loss per labelled datapoint (0 to leave it out).
    """

    labels = "some"
    mean_field_guide = False
    reparameterized_guide = False

    def __init__(self, encoder: GaussianEncoder, likelihood: nn.Module, classifier: nn.Module, num_classes: int,
                 aux_weight: float = 0.0):
        super().__init__(encoder, likelihood, encoder.latent_dim)
        self.classifier = classifier
        self.num_classes = int(num_classes)
        self.aux_weight = float(aux_weight)

    def one_hot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(y, self.num_classes).to(like.dtype)

    @pyro_method
    def model(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, num_data: Optional[int] = None) -> None:
        with self.data_plate(x, num_data):
            observed = None if y is None else self.one_hot(y, x)
            uniform = x.new_zeros(self.num_classes)
            y_code = pyro.sample("y", dist.OneHotCategorical(logits=uniform), obs=observed)
            z = pyro.sample("z", self.prior(x))
            data = self.generate_data(concat(z, y_code), x)
            if observed is not None and self.aux_weight > 0:
                with poutine.scale(scale=self.aux_weight):
                    pyro.sample("y_aux", dist.OneHotCategorical(logits=self.classifier(data)),
                                obs=observed)

    @pyro_method
    def guide(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, num_data: Optional[int] = None) -> None:
        with self.data_plate(x, num_data):
            data = self.infer_data(x)
            if y is None:
                y_code = pyro.sample("y", dist.OneHotCategorical(logits=self.classifier(data)),
                                     infer={"enumerate": "parallel"})
            else:
                y_code = self.one_hot(y, x)
            pyro.sample("z", dist.Normal(*self.encoder(concat(data, y_code))).to_event(1))

    # What (y, z) generate. M2 generates the image itself; a stacked model (M1 + M2,
    # :mod:`pyro_vae.models.stacked`) generates another model's code of it and overrides these.

    def generate_data(self, code: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """In the model, inside the data plate: draw what ``code = [z, onehot(y)]`` generates,
        observing ``x``; return what the classifier reads (here ``x``)."""
        pyro.sample("x", self.likelihood(code), obs=x)
        return x

    def infer_data(self, x: torch.Tensor) -> torch.Tensor:
        """In the guide, inside the data plate: what classifier and encoder read (here ``x``)."""
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What classifier and encoder read, without sampling (here ``x``)."""
        return x

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decoder means E[x|z, y]; ``y`` defaults to class 0."""
        return self.likelihood.mean(self.code(z, y))

    def code(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[z, onehot(y)]``, the decoder's input; ``y`` defaults to class 0."""
        if y is None:
            y = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
        return concat(z, self.one_hot(y, z))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y|x), as integer labels."""
        return self.classifier(self.features(x)).argmax(-1)

    @torch.no_grad()
    def styles(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder means of z under each image's predicted class: its style."""
        data = self.features(x)
        loc, _ = self.encoder(concat(data, self.one_hot(self.classifier(data).argmax(-1), x)))
        return loc

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *args) -> torch.Tensor:
        """Decoder means at the encoder means, in each image's predicted class."""
        return self.decode(self.styles(x), self.classify(x))

    @torch.no_grad()
    def generate(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decoder means at draws z ~ p(z), classes in turn 0, 1, ..., C - 1, 0, ..."""
        z = self.sample_prior(num_samples, generator)
        return self.decode(z, torch.arange(num_samples, device=z.device) % self.num_classes)

    @torch.no_grad()
    def pictures(self, x: torch.Tensor, y: Optional[torch.Tensor], generator: torch.Generator) -> dict:
        """``styles``: for each of ten test images (left), its style z drawn as every class."""
        x = x[:10]
        rows = [torch.cat([image[None], self.decode(style.expand(self.num_classes, -1),
                                                   torch.arange(self.num_classes, device=x.device))])
                for image, style in zip(x, self.styles(x))]
        return {"styles": (torch.cat(rows), self.num_classes + 1,
                           "test image (left), its style z as every digit (across)")}


def build_semisupervised_vae(data_dim: int, latent_dim: int, hidden_dims: Sequence[int], num_classes: int,
                             likelihood: str = "bernoulli", activation: str = "softplus",
                             init_std: Optional[float] = None, aux_weight: float = 0.0) -> SemiSupervisedVAE:
    """M2 with encoder, decoder and classifier of the same hidden sizes.

    Kingma et al. use one hidden layer of 500 softplus units and a 50-dimensional z on MNIST:
    ``build_semisupervised_vae(784, 50, [500], 10)``.
    """
    if int(num_classes) < 2:
        raise ConfigError(f"a class variable needs at least 2 classes, got {num_classes}")
    vae = SemiSupervisedVAE(
        encoder=GaussianEncoder(data_dim + num_classes, hidden_dims, latent_dim, activation),
        likelihood=make_likelihood(likelihood, latent_dim + num_classes, hidden_dims, data_dim, activation),
        classifier=MLP(data_dim, hidden_dims, num_classes, activation),
        num_classes=num_classes, aux_weight=aux_weight)
    if init_std is not None:
        init_normal_(vae, init_std)
    return vae
