"""Log importance weights of a model and guide, per particle and datapoint.

For draws z_k ~ q(z|x) of a guide, the log importance weight of a datapoint is::

    log w_k(x) = log p(x, z_k) - log q(z_k|x)

This is the one quantity behind the importance-weighted objectives (:mod:`pyro_vae.objectives`)
and the evaluation (:mod:`pyro_vae.evaluation`). It is computed for any model and guide written
as Pyro programs over one data plate, by tracing the guide under a plate of particles and
replaying the model against it; nothing here knows a particular model's latent variables.

**Sites are scored as Pyro scores them.** Each site's log-density is its ``log_prob`` after
Pyro's ``scale_and_mask`` (``poutine.mask`` and ``poutine.scale`` applied, as in
:class:`~pyro.infer.Trace_ELBO`). The data plate is the plate at dim ``-max_plate_nesting``;
a datapoint's weight is the sum over the sites inside it, divided by that plate's subsample
scale (``size / subsample_size``, read from its frame), which the objectives apply to the sum
over datapoints. A site with any other scale (a beta, an annealing weight) counts that many
times, so for K = 1 every objective's value is Trace_ELBO's; where particles are weighed
against each other (a log-mean-exp, ranks) it is refused (:meth:`LogDensity.refuse_site_scales`).
Sites outside the data plate (global latents, as in the AEVB paper's Appendix F) are summed
apart, once, not once per datapoint (:attr:`LogDensity.global_`).

**Model-side enumeration.** A discrete site of the model marked ``infer={"enumerate": "parallel"}``
and absent from the guide is enumerated (``poutine.enum``, left of the particles) and summed out of
each datapoint's weight, log p(x, z_k) = log sum_y p(x, z_k, y), as Pyro's TraceEnum_ELBO sums it
out: by brute force over the joint values of a datapoint's enumerated sites, exact and exponential
in their number. It must sit in the data plate itself (not outside it, not in a nested plate).

**Path derivatives.** With ``path_derivative=True`` the guide's log-density is evaluated with
its distributions' parameters detached: log q_{stop(phi)}(z_k|x). Its value is unchanged, but its
gradient keeps only the path through the reparameterized sample z_k = z(eps_k, phi) and drops
the score term d log q_phi(z)/d phi at fixed z, whose expectation under q is zero. This is the
"sticking the landing" estimator of Roeder et al. (2017) and the ingredient of the doubly
reparameterized gradient of Tucker et al. (2018) (:mod:`pyro_vae.estimators`). It assumes that
every latent site of the guide is reparameterized and that no site's distribution depends on
another site's sample (as in a mean-field guide, or the single-latent VAE here); for a guide
where it does, detaching a site's parameters would also cut the path through the sample it
depends on.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Union

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, is_identically_one, scale_and_mask
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample

from .errors import ConfigError

#: The name of the plate of particles, left of the model's plates.
PARTICLES = "particles"


class ParticlePlate(pyro.plate):
    """K vectorized particles at dim ``-(max_plate_nesting + 1)``; with ``shared_globals`` the sites
    outside the data plate are left out of it, so that the K particles share one draw of them."""

    def __init__(self, num_particles: int, max_plate_nesting: int = 1, shared_globals: bool = False):
        super().__init__(PARTICLES, num_particles, dim=-(max_plate_nesting + 1))
        self.shared_globals = shared_globals

    def _process_message(self, msg) -> None:
        # The plates inside this one have put their frames on the site already.
        if self.shared_globals and _data_frame(msg["cond_indep_stack"], self.dim + 1) is None:
            return
        super()._process_message(msg)


def importance_traces(model: Callable, guide: Callable, num_particles: int, *args, max_plate_nesting: int = 1,
                      shared_globals: bool = False, **kwargs) -> tuple[Trace, Trace]:
    """The model and guide traces of ``num_particles`` vectorized draws z_k ~ q(z|x).

    The guide runs under a :class:`ParticlePlate` left of the data plate, and the model is replayed
    against its samples under ``poutine.enum``: a model site marked ``infer={"enumerate": "parallel"}``
    that the guide lacks takes all its values in a dim left of the particles. With ``shared_globals``
    a site outside the data plate is drawn once for all particles; otherwise once per particle, as
    Pyro's ``vectorize_particles`` draws it.
    """
    with ParticlePlate(num_particles, max_plate_nesting, shared_globals):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        # The guide's sites are replayed (done) before poutine.enum sees them; it enumerates the rest.
        replayed = poutine.enum(poutine.replay(model, trace=guide_trace), first_available_dim=-(max_plate_nesting + 2))
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _data_frame(stack, dim: int):
    return next((frame for frame in stack if frame.vectorized and frame.dim == dim), None)


def data_frame(site: dict):
    """The frame of the data plate, right of the particles' plate, in a site's stack; ``None`` for a
    site outside it (a global site)."""
    particles = next((frame for frame in site["cond_indep_stack"] if frame.name == PARTICLES), None)
    return None if particles is None else _data_frame(site["cond_indep_stack"], particles.dim + 1)


def latent_sites(guide_trace: Trace) -> list[dict]:
    """The guide's sample sites that draw latent variables (not observed, not subsample indices)."""
    return [site for site in guide_trace.nodes.values()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


def _scored_sites(trace: Trace) -> list[dict]:
    return [site for site in trace.nodes.values() if site["type"] == "sample" and not site_is_subsample(site)]


@dataclass(frozen=True)
class LogDensity:
    """The log-density of a trace of K particles, as Pyro scores its sites, or a difference of two (log weights).

    :param local: ``(K, B)``: each datapoint's sites (and the plates nested in the data plate) summed,
        divided by the data plate's subsample scale; ``0.0`` if no site is inside the data plate.
    :param global_: the sites outside the data plate, summed: ``(K,)`` drawn per particle, ``()``
        shared by the particles, ``0.0`` if there are none.
    :param scale: the data plate's subsample scale (``None`` if no site is inside it).
    :param scaled_sites: the names of the sites inside the data plate with a scale besides their plates'.
    :param global_sites: the names of the sites outside the data plate.
    """

    local: Union[torch.Tensor, float]
    global_: Union[torch.Tensor, float]
    scale: Optional[float]
    scaled_sites: tuple = ()
    global_sites: tuple = ()

    def __sub__(self, other: "LogDensity") -> "LogDensity":
        if self.scale is not None and other.scale is not None and self.scale != other.scale:
            raise ConfigError(f"model and guide subsample their data plates differently (scales {self.scale} and "
                              f"{other.scale}): use one pyro.plate('data', num_data, subsample=...) in both")
        return LogDensity(self.local - other.local, self.global_ - other.global_,
                          other.scale if self.scale is None else self.scale,
                          tuple(dict.fromkeys(self.scaled_sites + other.scaled_sites)),
                          tuple(dict.fromkeys(self.global_sites + other.global_sites)))

    def total(self, per_datapoint: torch.Tensor) -> torch.Tensor:
        """``scale * sum(per_datapoint) + global``, the global sites' term averaged over particles."""
        total = self.scale * per_datapoint.sum()
        return total + torch.as_tensor(self.global_).mean() if self.global_sites else total

    def refuse_global_sites(self, what: str, fix: str) -> None:
        """Refuse sites outside the data plate, which ``what`` (an estimate per datapoint) cannot weigh."""
        if self.global_sites:
            raise ConfigError(f"site {self.global_sites[0]!r} is outside the data plate (a global latent variable), "
                              f"which {what} cannot weigh per datapoint: {fix}")

    def refuse_site_scales(self, what: str, fix: str) -> None:
        """Refuse a site scaled besides its plates (``poutine.scale``) in ``what``, an estimate that weighs
        K > 1 particles against each other (a log-mean-exp, ranks), where such a scale has no agreed meaning."""
        if self.scaled_sites:
            raise ConfigError(f"site {self.scaled_sites[0]!r} has a scale besides its plates' (poutine.scale), "
                              f"which has no agreed meaning inside {what}: {fix}")


def _plate_scales(site: dict, data) -> tuple[float, float]:
    """The product of all plates' subsample scales, multiplied in Pyro's order, and of those other than
    the data plate's and the particles'."""
    every, others = 1.0, 1.0
    for frame in reversed(site["cond_indep_stack"]):  # innermost first, as Pyro applies them
        if frame.vectorized:
            every = every * (frame.full_size or frame.size) / frame.size
            if frame is not data and frame.name != PARTICLES:
                others = others * (frame.full_size or frame.size) / frame.size
    return every, others


def trace_log_density(trace: Trace, detach_parameters: bool = False, site_scales: bool = True) -> LogDensity:
    """A trace's log-density as Pyro scores its sites (``log_prob`` after ``scale_and_mask``), split
    into datapoints and global sites (see :class:`LogDensity` and the module's docstring), with the
    model's enumerated sites summed out of each datapoint's part (:func:`_sum_out_enumerated`).

    With ``detach_parameters`` each site's distribution is evaluated with detached parameters; with
    ``site_scales=False`` a scale besides the plates' (a beta) is left out: the model's own density.
    """
    trace.compute_log_prob()
    local, global_, scale, scaled, global_sites = 0.0, 0.0, None, [], []
    for site in _scored_sites(trace):
        log_prob = detach(site["fn"]).log_prob(site["value"]) if detach_parameters else site["unscaled_log_prob"]
        data = data_frame(site)
        every, others = _plate_scales(site, data)
        site_scale = site["scale"] / every if site_scales else 1.0  # 1.0 exactly unless poutine.scale is at work
        log_prob = scale_and_mask(log_prob, site_scale * others, site["mask"])
        _check_enumerated(site, data)
        if data is None:
            global_sites.append(site["name"])
            particles = any(frame.name == PARTICLES for frame in site["cond_indep_stack"])
            global_ = global_ + (log_prob.reshape(log_prob.shape[0], -1).sum(-1) if particles else log_prob.sum())
            continue
        if not is_identically_one(site_scale):
            scaled.append(site["name"])
        scale = (data.full_size or data.size) / data.size
        if data.dim < -1:  # plates nested inside the data plate
            log_prob = log_prob.sum(tuple(range(data.dim + 1, 0)))
        if log_prob.dim() > 2 and not is_identically_one(site_scale * others):
            raise ConfigError(f"site {site['name']!r} enters the sum over enumerated values with a scale besides the "
                              "data plate's, which cannot be applied inside that sum: remove its poutine.scale, or "
                              "subsample the data plate only")
        local = local + log_prob
    return LogDensity(_sum_out_enumerated(local), global_, scale, tuple(scaled), tuple(global_sites))


def _check_enumerated(site: dict, data) -> None:
    """Refuse a site enumerated in the model outside the data plate or inside a plate nested in it."""
    if site["infer"].get("_enumerate_dim") is None:
        return
    plates = [frame for frame in site["cond_indep_stack"] if frame.vectorized and frame.name != PARTICLES]
    if data is None or plates != [data]:
        where = "outside the data plate" if data is None else "inside a plate nested in the data plate"
        raise ConfigError(f"site {site['name']!r} is enumerated in the model {where}, which importance weights per "
                          "datapoint cannot sum out: enumerate it in the data plate itself, or sample it in the guide")


def _sum_out_enumerated(local: Union[torch.Tensor, float]) -> Union[torch.Tensor, float]:
    """log sum_y exp(local) over the enumerated values y in the dims left of ``(K, B)``: log p(x, z_k), y
    summed out of p(x, z_k, y), by brute force over the joint values of a datapoint's enumerated sites (exact,
    and exponential in their number, unlike TraceEnum_ELBO's variable elimination)."""
    if not isinstance(local, torch.Tensor) or local.dim() <= 2:
        return local
    return local.logsumexp(tuple(range(local.dim() - 2)))


def trace_log_weights(model_trace: Trace, guide_trace: Trace, path_derivative: bool = False,
                      site_scales: bool = True) -> LogDensity:
    """``log p(x, z_k) - log q(z_k|x)`` of traces from :func:`importance_traces`.

    With ``path_derivative`` the guide's log-density is evaluated with detached distribution
    parameters (see the module's docstring); ``site_scales=False`` leaves out scales besides the plates'.
    """
    if path_derivative:
        for site in latent_sites(guide_trace):
            if not site["fn"].has_rsample:
                raise ConfigError(f"path-derivative gradients need a reparameterized guide, but site "
                                  f"{site['name']!r} draws from {type(site['fn']).__name__}, which is not")
    weights = (trace_log_density(model_trace, site_scales=site_scales)
               - trace_log_density(guide_trace, detach_parameters=path_derivative, site_scales=site_scales))
    if weights.scale is None:
        raise ConfigError("no sample site is inside the data plate, right of the particles: put the observations "
                          "in pyro.plate('data', num_data, subsample=...) at dim -max_plate_nesting")
    return weights


def log_importance_weights(model: Callable, guide: Callable, num_particles: int, *args,
                           max_plate_nesting: int = 1, path_derivative: bool = False,
                           site_scales: bool = True, **kwargs) -> tuple[torch.Tensor, float]:
    """``log p(x, z_k) - log q(z_k|x)`` of shape ``(num_particles, batch_size)``, and the data plate's scale.

    The data plate is the plate at dim ``-max_plate_nesting`` (dim -1 when it is 1); log-densities
    of plates nested inside it are summed. Sites are scored as Pyro scores them (masks and
    ``poutine.scale`` applied), per datapoint: the data plate's subsample scale
    (``num_data / batch_size``, 1 without subsampling) is returned, not applied. Sites outside the
    data plate (global latents) are drawn once per particle and their own log-densities left out:
    the weight is that of the datapoint given them. ``site_scales=False`` leaves out a site's scale
    besides its plates' (a beta): the weights of the model's own density. Gradients flow through the
    weights when the guide is reparameterized and the caller has not disabled them; with
    ``path_derivative`` only through the samples (see the module's docstring).
    """
    traces = importance_traces(model, guide, num_particles, *args, max_plate_nesting=max_plate_nesting, **kwargs)
    weights = trace_log_weights(*traces, path_derivative=path_derivative, site_scales=site_scales)
    return weights.local, weights.scale
