"""Training objectives by name: ELBO estimators, configured for the models here.

=================  ====  =========================================================================
name               K     estimator
=================  ====  =========================================================================
``trace``          1     :class:`~pyro.infer.Trace_ELBO`: Monte-Carlo KL, the paper's estimator A (eq. 6)
``meanfield``      1     :class:`~pyro.infer.TraceMeanField_ELBO`: analytic KL, estimator B (eq. 7)
``tracegraph``     1     :class:`~pyro_vae.estimators.ScoreFunctionELBO`: Pyro's TraceGraph_ELBO with a
                         ``differentiable_loss``
``enum``           1     :class:`~pyro.infer.TraceEnum_ELBO`: ``trace`` with the discrete sites marked for
                         enumeration summed out exactly, in the guide (the class y of M2) or the model
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

Each objective is one :class:`Objective` record in :data:`OBJECTIVES` (add one with
:func:`register`): its factory, K (the default number of particles), the least K it takes, and
what it requires of a guide. ``make_objective(name, K)`` (``--particles K``) sets another K.
``iwae``, ``dreg``, ``renyi-0.5``, ``tail-adaptive`` and ``rws`` need K >= 2: with one particle
the first four reduce to the ELBO, and ``rws``'s q-wake update has nothing to weigh.

``iwae``, ``renyi-0.5`` and ``tail-adaptive`` are this project's own estimators rather than Pyro's
:class:`~pyro.infer.RenyiELBO` and :class:`~pyro.infer.TraceTailAdaptive_ELBO`: see
``docs/upstream.md#pyro-estimators-replaced-here``.

Particles are vectorized, so the model and guide must allow one extra batch dimension on the
left of their plates (``max_plate_nesting`` says how many plates they use; the models here use
one, the data plate). Every objective honours the data plate's subsample scale, so a minibatch
loss estimates the full-data loss: divide it by the size of the data set for a figure per
datapoint. Masks, ``poutine.scale`` and sites outside the data plate (global latents) are
scored as Pyro scores them; those that weigh each datapoint's particles apart refuse global
latents (:attr:`Objective.handles_global_latents`); ``docs/model_contract.md`` says what each computes.

``meanfield`` is correct when the guide factorises like the model (Pyro's mean-field condition:
no latent variable's parents in the model are its descendants in the guide); for the
single-layer VAE that holds trivially. In expectation it equals ``trace``: both estimate the
same ELBO, ``meanfield`` with the KL term computed exactly, hence lower variance. ``stl`` and
``dreg`` need a fully reparameterized guide whose latent sites do not depend on each other's
samples (:mod:`pyro_vae.estimators`). Only ``trace``, ``tracegraph`` and ``enum`` handle
discrete latent variables of the guide. A discrete site of the model marked
``infer={"enumerate": "parallel"}`` and absent from the guide is summed out exactly by ``enum``
and by the objectives built on importance weights (``stl``, ``iwae``, ``dreg``, ``renyi-0.5``,
``tail-adaptive``: :mod:`pyro_vae.importance`); the others would draw it from its prior, and the
contract refuses them (:attr:`Objective.handles_model_enumeration`).

**What a model declares.** :func:`check_objective` refuses an objective whose assumptions a
model's guide breaks, as the model declares them in two attributes (absent means ``True``):

* ``mean_field_guide``: the guide satisfies the mean-field condition above (objectives with
  :attr:`Objective.needs_mean_field_guide`);
* ``reparameterized_guide``: every latent site of the guide is reparameterized, none discrete
  (objectives with :attr:`Objective.needs_reparameterized_guide`).

**Validation.** Pyro's checks (distribution arguments and supports, model/guide site matching,
the mean-field condition) follow Pyro's global switch, :func:`pyro.enable_validation`, which is
on unless Python runs with ``-O``. The models here leave ``validate_args`` to that switch; to run
a block with the checks on or off, use :func:`pyro.validation_enabled`.
"""

from dataclasses import dataclass
from typing import Callable, Dict

from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from .errors import ConfigError
from .estimators import (DoublyReparameterizedELBO, ImportanceWeightedELBO, ScoreFunctionELBO, StickingTheLandingELBO,
                         TailAdaptiveELBO)


@dataclass(frozen=True)
class Objective:
    """One training objective: how to build it and what it needs of K and of a model's guide.

    :param name: the name ``make_objective`` and ``--objective`` take.
    :param factory: ``factory(num_particles, max_plate_nesting) -> ELBO``.
    :param summary: one line: the estimator and its reference.
    :param default_particles: K when none is given.
    :param least_particles: the smallest K it takes.
    :param needs_mean_field_guide: exact only for a guide that satisfies the mean-field condition
        (an analytic KL per site, or detached guide parameters that would cut the path between
        dependent latent sites).
    :param needs_reparameterized_guide: needs every latent site of the guide reparameterized; the
        others also handle discrete latent variables.
    :param analytic_kl: computes KL(q || p) per site in closed form where one exists (Pyro's
        :class:`~pyro.infer.TraceMeanField_ELBO`), which is what ``meanfield`` adds to ``trace``.
    :param handles_global_latents: takes sample sites outside the data plate (global latent
        variables); the others weigh each datapoint's particles apart and refuse them.
    :param traced_by_pyro: Pyro compiles it with TorchScript for one batch shape (its ``Jit*`` ELBOs):
        the engine then runs it eagerly by default and drops a smaller last minibatch.
    :param handles_model_enumeration: sums out a discrete site of the model marked
        ``infer={"enumerate": "parallel"}`` that the guide lacks (Pyro's TraceEnum_ELBO, or the
        importance weights of :mod:`pyro_vae.importance`); the others would draw it from its prior.
    """

    name: str
    factory: Callable[[int, int], ELBO]
    summary: str
    default_particles: int = 1
    least_particles: int = 1
    needs_mean_field_guide: bool = False
    needs_reparameterized_guide: bool = True
    analytic_kl: bool = False
    handles_global_latents: bool = True
    handles_model_enumeration: bool = False
    traced_by_pyro: bool = False

    def __post_init__(self):
        if not 1 <= self.least_particles <= self.default_particles:
            raise ConfigError(f"objective {self.name!r}: need 1 <= least_particles <= default_particles, got "
                              f"{self.least_particles} and {self.default_particles}")

    @property
    def handles_discrete(self) -> bool:
        """Whether it takes a guide with discrete (non-reparameterized) latent sites."""
        return not self.needs_reparameterized_guide


#: ``name -> Objective``, in the order of the table above; :func:`register` adds one.
OBJECTIVES: Dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Add ``objective`` to :data:`OBJECTIVES`; a name already taken is refused."""
    if objective.name in OBJECTIVES:
        raise ConfigError(f"an objective called {objective.name!r} is already registered: choose another name")
    OBJECTIVES[objective.name] = objective
    return objective


def _particles(num_particles: int, max_plate_nesting: int) -> dict:
    return dict(num_particles=num_particles, vectorize_particles=num_particles > 1,
                max_plate_nesting=max_plate_nesting)


register(Objective(
    "trace", lambda k, n: Trace_ELBO(**_particles(k, n)),
    "Trace_ELBO: Monte-Carlo KL, the paper's estimator A", needs_reparameterized_guide=False))
register(Objective(
    "meanfield", lambda k, n: TraceMeanField_ELBO(**_particles(k, n)),
    "TraceMeanField_ELBO: analytic KL, the paper's estimator B", needs_mean_field_guide=True, analytic_kl=True))
register(Objective(
    "tracegraph", lambda k, n: ScoreFunctionELBO(**_particles(k, n)),
    "TraceGraph_ELBO with a differentiable_loss", needs_reparameterized_guide=False))
# No warning for labelled batches, which have nothing to enumerate.
register(Objective(
    "enum", lambda k, n: TraceEnum_ELBO(strict_enumeration_warning=False, **_particles(k, n)),
    "TraceEnum_ELBO: discrete sites marked for enumeration summed out", needs_reparameterized_guide=False,
    handles_model_enumeration=True))
register(Objective(
    "jit-trace", lambda k, n: JitTrace_ELBO(ignore_jit_warnings=True, **_particles(k, n)),
    "JitTrace_ELBO: trace compiled by TorchScript", traced_by_pyro=True))
register(Objective(
    "jit-meanfield", lambda k, n: JitTraceMeanField_ELBO(ignore_jit_warnings=True, **_particles(k, n)),
    "JitTraceMeanField_ELBO: meanfield compiled by TorchScript", needs_mean_field_guide=True, analytic_kl=True,
    traced_by_pyro=True))
register(Objective(
    "stl", lambda k, n: StickingTheLandingELBO(k, n),
    "the ELBO with the sticking-the-landing gradient (Roeder et al. 2017)", needs_mean_field_guide=True,
    handles_model_enumeration=True))
register(Objective(
    "iwae", lambda k, n: ImportanceWeightedELBO(k, max_plate_nesting=n),
    "the importance-weighted bound (Burda et al. 2016), per datapoint", default_particles=5, least_particles=2,
    handles_model_enumeration=True))
register(Objective(
    "dreg", lambda k, n: DoublyReparameterizedELBO(k, n),
    "the IWAE bound with the doubly reparameterized gradient (Tucker et al. 2018)", default_particles=5,
    least_particles=2, needs_mean_field_guide=True, handles_model_enumeration=True))
register(Objective(
    "renyi-0.5", lambda k, n: ImportanceWeightedELBO(k, alpha=0.5, max_plate_nesting=n),
    "the Renyi bound with alpha = 0.5 (Li & Turner 2016), per datapoint", default_particles=5, least_particles=2,
    handles_model_enumeration=True))
register(Objective(
    "tail-adaptive", lambda k, n: TailAdaptiveELBO(k, max_plate_nesting=n),
    "the tail-adaptive f-divergence gradient (Wang et al. 2018), per datapoint", default_particles=5,
    least_particles=2, handles_global_latents=False, handles_model_enumeration=True))


def make_objective(name: str, num_particles: int = 0, max_plate_nesting: int = 1) -> ELBO:
    """The objective called ``name`` with ``num_particles`` particles (0: its default)."""
    objective = _record(name)
    if num_particles < 0:
        raise ConfigError(f"the number of particles must be positive, got {num_particles}")
    particles = num_particles or objective.default_particles
    if particles < objective.least_particles:
        raise ConfigError(f"the {name} objective needs at least {objective.least_particles} particles: "
                          f"pass --particles {objective.least_particles} or more")
    return objective.factory(particles, max_plate_nesting)


def check_objective(name: str, model) -> None:
    """Raise :class:`ConfigError` if the objective ``name`` is wrong for ``model``'s guide.

    ``model`` is the object whose ``model`` and ``guide`` methods are the Pyro programs (a
    :class:`~pyro_vae.VAE`, any :class:`~pyro.nn.PyroModule`); its ``mean_field_guide`` and
    ``reparameterized_guide`` attributes (``True`` when absent) say what its guide allows. This
    reads declarations only; it does not run the programs.
    """
    objective = _record(name)
    if isinstance(model, type) or not all(callable(getattr(model, method, None)) for method in ("model", "guide")):
        if isinstance(model, type):
            what, fix = f"the class {model.__name__}", "pass an instance of it"
        else:
            label = getattr(model, "__qualname__", None)
            what = f"the {type(model).__name__} {label}" if label else f"a {type(model).__name__}"
            fix = "pass the object whose model and guide methods are the Pyro programs, e.g. a pyro_vae.VAE"
        raise ConfigError(f"the {name} objective needs an object with callable model and guide, got {what}: {fix}")
    model_name = type(model).__name__
    if objective.needs_mean_field_guide and not getattr(model, "mean_field_guide", True):
        raise ConfigError(f"the {name} objective assumes a mean-field guide, which {model_name} does not have: "
                          f"use --objective {' or '.join(suitable(model)[:3])}")
    if objective.needs_reparameterized_guide and not getattr(model, "reparameterized_guide", True):
        allowed = [other.name for other in OBJECTIVES.values() if other.handles_discrete]
        raise ConfigError(f"{model_name} has discrete latent variables, which the {name} objective cannot "
                          f"handle: use --objective {' or '.join(allowed[::-1])}")


def suitable(model, global_latents: bool = False) -> list[str]:
    """The objectives, in :data:`OBJECTIVES`' order, whose requirements ``model``'s declarations meet
    (see :func:`check_objective`); with ``global_latents`` only those that handle them."""
    mean_field = getattr(model, "mean_field_guide", True)
    reparameterized = getattr(model, "reparameterized_guide", True)
    return [objective.name for objective in OBJECTIVES.values()
            if (mean_field or not objective.needs_mean_field_guide)
            and (reparameterized or not objective.needs_reparameterized_guide)
            and (objective.handles_global_latents or not global_latents)]


def _record(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
