"""Training objectives by name: Pyro's ELBO estimators, configured for the models here.

===============  =============================================================================
name             estimator
===============  =============================================================================
``trace``        :class:`~pyro.infer.Trace_ELBO`: Monte-Carlo KL, the paper's estimator A (eq. 6)
``meanfield``    :class:`~pyro.infer.TraceMeanField_ELBO`: analytic KL, estimator B (eq. 7)
``jit-trace``    :class:`~pyro.infer.JitTrace_ELBO`, the same as ``trace`` compiled by TorchScript
``jit-meanfield`` :class:`~pyro.infer.JitTraceMeanField_ELBO`
``iwae``         :class:`ImportanceWeightedELBO`: the importance-weighted bound of Burda et al.
                 (2016), log (1/K) sum_k p(x, z_k)/q(z_k|x), per datapoint
===============  =============================================================================

Why not :class:`~pyro.infer.RenyiELBO` for ``iwae``: it has no ``differentiable_loss`` (so it
cannot drive a PyTorch optimizer), and under minibatch subsampling it applies the plate's scale
to each log weight *inside* the log-sum-exp, which changes the bound (with scale 600 it is
nearly the best particle's weight) instead of scaling it. :class:`ImportanceWeightedELBO`
scales the per-datapoint bound, as the full-data objective requires.

All of them take ``num_particles`` (K); particles are vectorized, so the model and guide must
allow one extra batch dimension on the left of their plates (``max_plate_nesting`` says how
many plates they use; the models here use one, the data plate). Every one of them honours the
data plate's subsample scale, so a minibatch loss estimates the full-data loss: divide it by
the size of the data set for a figure per datapoint.

``meanfield`` is correct when the guide factorises like the model (Pyro's mean-field condition:
no latent variable's parents in the model are its descendants in the guide); for the
single-layer VAE that holds trivially. In expectation it equals ``trace``: both estimate the
same ELBO, ``meanfield`` with the KL term computed exactly, hence lower variance.
"""

import math
from typing import Callable, Dict

import torch
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO

from .errors import ConfigError
from .importance import log_importance_weights


class ImportanceWeightedELBO(ELBO):
    """The importance-weighted bound, per datapoint, with K vectorized particles.

    For each datapoint x of a minibatch of B out of N::

        L_K(x) = 1/(1 - alpha) * log (1/K) sum_k w_k(x)^(1 - alpha),   w_k = p(x, z_k) / q(z_k|x)

    and the loss is ``-(N/B) sum_x L_K(x)``. With ``alpha = 0`` (the default) this is the IWAE
    bound of Burda et al. (2016), which is the ELBO for K = 1 and tends to log p(x) as K grows;
    other ``alpha`` in [0, 1) give the Renyi bounds of Li & Turner (2016). Gradients are the
    reparameterized (pathwise) ones, so every latent site of the guide must be reparameterizable.
    """

    def __init__(self, num_particles: int = 5, alpha: float = 0.0, max_plate_nesting: int = 1):
        if not 0.0 <= alpha < 1.0:
            raise ConfigError(f"alpha must be in [0, 1), got {alpha}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=True)
        self.alpha = alpha

    _get_trace = Trace_ELBO._get_trace  # the traces of one particle, as Trace_ELBO samples them

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_weight, scale = log_importance_weights(model, guide, self.num_particles, *args,
                                                   max_plate_nesting=self.max_plate_nesting, **kwargs)
        tempered = (1.0 - self.alpha) * log_weight
        bound = (torch.logsumexp(tempered, 0) - math.log(self.num_particles)) / (1.0 - self.alpha)
        return -scale * bound.sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

#: ``name -> factory(num_particles, max_plate_nesting) -> ELBO``; add an entry to add an objective.
OBJECTIVES: Dict[str, Callable[[int, int], ELBO]] = {}

#: Default number of particles per objective (K); an objective not named here uses 1.
DEFAULT_PARTICLES = {"iwae": 5}


def register(name: str) -> Callable:
    """Decorator adding an objective factory to :data:`OBJECTIVES` under ``name``."""

    def add(factory: Callable[[int, int], ELBO]) -> Callable[[int, int], ELBO]:
        OBJECTIVES[name] = factory
        return factory

    return add


def _particles(num_particles: int, max_plate_nesting: int) -> dict:
    return dict(num_particles=num_particles, vectorize_particles=num_particles > 1,
                max_plate_nesting=max_plate_nesting)


@register("trace")
def _trace(num_particles: int, max_plate_nesting: int) -> ELBO:
    return Trace_ELBO(**_particles(num_particles, max_plate_nesting))


@register("meanfield")
def _meanfield(num_particles: int, max_plate_nesting: int) -> ELBO:
    return TraceMeanField_ELBO(**_particles(num_particles, max_plate_nesting))


@register("jit-trace")
def _jit_trace(num_particles: int, max_plate_nesting: int) -> ELBO:
    return JitTrace_ELBO(ignore_jit_warnings=True, **_particles(num_particles, max_plate_nesting))


@register("jit-meanfield")
def _jit_meanfield(num_particles: int, max_plate_nesting: int) -> ELBO:
    return JitTraceMeanField_ELBO(ignore_jit_warnings=True, **_particles(num_particles, max_plate_nesting))


@register("iwae")
def _iwae(num_particles: int, max_plate_nesting: int) -> ELBO:
    return ImportanceWeightedELBO(num_particles, max_plate_nesting=max_plate_nesting)


def make_objective(name: str, num_particles: int = 0, max_plate_nesting: int = 1) -> ELBO:
    """The objective called ``name`` with ``num_particles`` particles (0: its default)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    if num_particles < 0:
        raise ConfigError(f"the number of particles must be positive, got {num_particles}")
    particles = num_particles or DEFAULT_PARTICLES.get(name, 1)
    if name == "iwae" and particles < 2:
        raise ConfigError("the iwae objective needs at least 2 particles: pass --particles 2 or more")
    return OBJECTIVES[name](particles, max_plate_nesting)

