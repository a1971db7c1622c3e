"""Training objectives by name: Pyro's ELBO estimators, configured for the models here.

===============  =============================================================================
name             estimator
===============  =============================================================================
``trace``        :class:`~pyro.infer.Trace_ELBO`: Monte-Carlo KL, the paper's estimator A (eq. 6)
``meanfield``    :class:`~pyro.infer.TraceMeanField_ELBO`: analytic KL, estimator B (eq. 7)
``jit-trace``    :class:`~pyro.infer.JitTrace_ELBO`, the same as ``trace`` compiled by TorchScript
``jit-meanfield`` :class:`~pyro.infer.JitTraceMeanField_ELBO`
``iwae``         :class:`~pyro.infer.RenyiELBO` with alpha = 0: the importance-weighted bound of
                 Burda et al. (2016), log (1/K) sum_k p(x, z_k)/q(z_k|x), per datapoint
===============  =============================================================================

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

from typing import Callable, Dict

from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)

from .errors import ConfigError

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
    return RenyiELBO(alpha=0.0, **_particles(num_particles, max_plate_nesting))


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

