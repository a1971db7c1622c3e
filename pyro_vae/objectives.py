"""Training objectives by name: ELBO estimators, configured for the models here.

=================  ====  =========================================================================
name               K     estimator
=================  ====  =========================================================================
``trace``          1     :class:`~pyro.infer.Trace_ELBO`: Monte-Carlo KL, the paper's estimator A (eq. 6)
``meanfield``      1     :class:`~pyro.infer.TraceMeanField_ELBO`: analytic KL, estimator B (eq. 7)
``tracegraph``     1     :class:`~pyro_vae.estimators.TraceGraphELBO`: Pyro's TraceGraph_ELBO with a
                         ``differentiable_loss``
``enum``           1     :class:`~pyro.infer.TraceEnum_ELBO`: ``trace`` with the guide's discrete sites marked
                         for enumeration summed out exactly (the class y of M2)
``jit-trace``      1     :class:`~pyro.infer.JitTrace_ELBO`, the same as ``trace`` compiled by TorchScript
``jit-meanfield``  1     :class:`~pyro.infer.JitTraceMeanField_ELBO`
``stl``            1     :class:`~pyro_vae.estimators.StickingTheLandingELBO`: the ELBO with the
                         "sticking the landing" gradient (Roeder et al. 2017)
``iwae``           5     :class:`~pyro_vae.estimators.ImportanceWeightedELBO`: the importance-weighted
                         bound of Burda et al. (2016), log (1/K) sum_k p(x, z_k)/q(z_k|x), per datapoint
                         (Pyro's RenyiELBO with alpha = 0, see below)
``dreg``           5     :class:`~pyro_vae.estimators.DoublyReparameterizedELBO`: the IWAE bound with the
                         doubly reparameterized gradient (Tucker et al. 2018)
``renyi-0.5``      5     :class:`~pyro_vae.estimators.ImportanceWeightedELBO` with alpha = 0.5: the Renyi
                         bound of Li & Turner (2016), per datapoint
``tail-adaptive``  5     :class:`~pyro_vae.estimators.TailAdaptiveELBO`: the tail-adaptive f-divergence
                         gradient of Wang et al. (2018), per datapoint; its value is the ELBO
``wake-sleep``     1     :class:`~pyro_vae.wake_sleep.WakeSleep`: the baseline of Hinton et al. (1995),
                         registered by :mod:`pyro_vae.wake_sleep`
``rws``            5     :class:`~pyro_vae.wake_sleep.ReweightedWakeSleep`: reweighted wake-sleep
                         (Bornschein & Bengio 2015) with per-datapoint weights
=================  ====  =========================================================================

K is the default number of particles (:data:`DEFAULT_PARTICLES`); ``make_objective(name, K)``
(``--particles K``) sets another. ``iwae``, ``dreg``, ``renyi-0.5`` and ``tail-adaptive`` need
K >= 2: with one particle they reduce to the ELBO.

Why not :class:`~pyro.infer.RenyiELBO` for ``iwae`` and ``renyi-0.5``: it has no
``differentiable_loss`` (so it cannot drive a PyTorch optimizer), and under minibatch
subsampling it applies the plate's scale to each log weight *inside* the log-sum-exp, which
changes the bound (with scale 600 it is nearly the best particle's weight) instead of scaling it.
Without subsampling it computes the same per-datapoint bound as
:class:`~pyro_vae.estimators.ImportanceWeightedELBO`, which scales the sum of per-datapoint bounds,
as the full-data objective requires (``tests/test_estimators.py`` shows both). Pyro's
:class:`~pyro.infer.TraceTailAdaptive_ELBO` sums one particle's log-densities over the whole
minibatch and ranks those joint weights, returns ``inf`` as its loss (the training loop stops on
a non-finite loss) and ranks its particles incorrectly (pyro-ppl/pyro issue 3170); hence
``tail-adaptive`` is :class:`~pyro_vae.estimators.TailAdaptiveELBO`, which ranks each
datapoint's own K weights.

Particles are vectorized, so the model and guide must allow one extra batch dimension on the
left of their plates (``max_plate_nesting`` says how many plates they use; the models here use
one, the data plate). Every objective honours the data plate's subsample scale, so a minibatch
loss estimates the full-data loss: divide it by the size of the data set for a figure per
datapoint.

``meanfield`` is correct when the guide factorises like the model (Pyro's mean-field condition:
no latent variable's parents in the model are its descendants in the guide); for the
single-layer VAE that holds trivially. In expectation it equals ``trace``: both estimate the
same ELBO, ``meanfield`` with the KL term computed exactly, hence lower variance. ``stl`` and
``dreg`` need a fully reparameterized guide whose latent sites do not depend on each other's
samples (:mod:`pyro_vae.estimators`). Only ``trace``, ``tracegraph`` and ``enum`` handle
discrete latent variables. :func:`check_objective` refuses an objective whose assumptions a
model's guide breaks, as the model declares them (``mean_field_guide``, ``reparameterized_guide``).
"""

from typing import Callable, Dict

from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from .errors import ConfigError
from .estimators import (DoublyReparameterizedELBO, ImportanceWeightedELBO, StickingTheLandingELBO, TailAdaptiveELBO,
                         TraceGraphELBO)

#: ``name -> factory(num_particles, max_plate_nesting) -> ELBO``; add an entry to add an objective.
OBJECTIVES: Dict[str, Callable[[int, int], ELBO]] = {}

#: Default number of particles per objective (K); an objective not named here uses 1.
DEFAULT_PARTICLES = {"iwae": 5, "dreg": 5, "renyi-0.5": 5, "tail-adaptive": 5}

#: Objectives that need at least two particles (with one they are the ELBO).
MULTI_PARTICLE = ("iwae", "dreg", "renyi-0.5", "tail-adaptive")

#: Objectives that are exact only for a mean-field guide (analytic KL per site, or detached
#: guide parameters that would cut the path between dependent latent sites).
MEAN_FIELD_ONLY = ("meanfield", "jit-meanfield", "stl", "dreg")

#: Objectives that handle discrete (non-reparameterized) latent variables.
DISCRETE_LATENTS = ("trace", "tracegraph", "enum")


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


@register("tracegraph")
def _tracegraph(num_particles: int, max_plate_nesting: int) -> ELBO:
    return TraceGraphELBO(**_particles(num_particles, max_plate_nesting))


@register("enum")
def _enum(num_particles: int, max_plate_nesting: int) -> ELBO:
    # No warning for labelled batches, which have nothing to enumerate.
    return TraceEnum_ELBO(strict_enumeration_warning=False, **_particles(num_particles, max_plate_nesting))


@register("jit-trace")
def _jit_trace(num_particles: int, max_plate_nesting: int) -> ELBO:
    return JitTrace_ELBO(ignore_jit_warnings=True, **_particles(num_particles, max_plate_nesting))


@register("jit-meanfield")
def _jit_meanfield(num_particles: int, max_plate_nesting: int) -> ELBO:
    return JitTraceMeanField_ELBO(ignore_jit_warnings=True, **_particles(num_particles, max_plate_nesting))


@register("stl")
def _stl(num_particles: int, max_plate_nesting: int) -> ELBO:
    return StickingTheLandingELBO(num_particles, max_plate_nesting)


@register("iwae")
def _iwae(num_particles: int, max_plate_nesting: int) -> ELBO:
    return ImportanceWeightedELBO(num_particles, max_plate_nesting=max_plate_nesting)


@register("dreg")
def _dreg(num_particles: int, max_plate_nesting: int) -> ELBO:
    return DoublyReparameterizedELBO(num_particles, max_plate_nesting)


@register("renyi-0.5")
def _renyi(num_particles: int, max_plate_nesting: int) -> ELBO:
    return ImportanceWeightedELBO(num_particles, alpha=0.5, max_plate_nesting=max_plate_nesting)


@register("tail-adaptive")
def _tail_adaptive(num_particles: int, max_plate_nesting: int) -> ELBO:
    return TailAdaptiveELBO(num_particles, max_plate_nesting=max_plate_nesting)


def make_objective(name: str, num_particles: int = 0, max_plate_nesting: int = 1) -> ELBO:
    """The objective called ``name`` with ``num_particles`` particles (0: its default)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    if num_particles < 0:
        raise ConfigError(f"the number of particles must be positive, got {num_particles}")
    particles = num_particles or DEFAULT_PARTICLES.get(name, 1)
    if name in MULTI_PARTICLE and particles < 2:
        raise ConfigError(f"the {name} objective needs at least 2 particles: pass --particles 2 or more")
    return OBJECTIVES[name](particles, max_plate_nesting)


def check_objective(name: str, model) -> None:
    """Raise :class:`ConfigError` if the objective ``name`` is wrong for ``model``'s guide."""
    model_name = type(model).__name__
    if name in MEAN_FIELD_ONLY and not getattr(model, "mean_field_guide", True):
        raise ConfigError(f"the {name} objective assumes a mean-field guide, which {model_name} does not have: "
                          "use --objective trace (or tracegraph, iwae)")
    if name not in DISCRETE_LATENTS and not getattr(model, "reparameterized_guide", True):
        raise ConfigError(f"{model_name} has discrete latent variables, which the {name} objective cannot "
                          f"handle: use --objective {' or '.join(DISCRETE_LATENTS[::-1])}")
