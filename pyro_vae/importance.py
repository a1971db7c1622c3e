"""Log importance weights of a model and guide, per particle and datapoint.

For draws z_k ~ q(z|x) of a guide, the log importance weight of a datapoint is::

    log w_k(x) = log p(x, z_k) - log q(z_k|x)

This is the one quantity behind the importance-weighted objectives (:mod:`pyro_vae.objectives`)
and the evaluation (:mod:`pyro_vae.evaluation`). It is computed for any model and guide written
as Pyro programs over one data plate, by tracing the guide under a plate of particles and
replaying the model against it; nothing here knows a particular model's latent variables.

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

from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample

from .errors import ConfigError


def importance_traces(model: Callable, guide: Callable, num_particles: int, *args,
                      max_plate_nesting: int = 1, **kwargs) -> tuple[Trace, Trace]:
    """The model and guide traces of ``num_particles`` vectorized draws z_k ~ q(z|x).

    The guide runs under a plate of particles at dim ``-(max_plate_nesting + 1)``, left of the
    data plate, and the model is replayed against its samples.
    """
    with pyro.plate("particles", num_particles, dim=-(max_plate_nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def latent_sites(guide_trace: Trace) -> list[dict]:
    """The guide's sample sites that draw latent variables (not observed, not subsample indices)."""
    return [site for site in guide_trace.nodes.values()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


def trace_log_weights(model_trace: Trace, guide_trace: Trace,
                      path_derivative: bool = False) -> tuple[torch.Tensor, float]:
    """``log p(x, z_k) - log q(z_k|x)`` of traces from :func:`importance_traces`, and the data plate's scale.

    With ``path_derivative`` the guide's log-density is evaluated with detached distribution
    parameters (see the module's docstring).
    """
    if path_derivative:
        for site in latent_sites(guide_trace):
            if not site["fn"].has_rsample:
                raise ConfigError(f"path-derivative gradients need a reparameterized guide, but site "
                                  f"{site['name']!r} draws from {type(site['fn']).__name__}, which is not")
    sites = [site for trace in (model_trace, guide_trace) for site in _scored_sites(trace)]
    scale = float(sites[-1]["scale"]) if sites else 1.0
    log_weight = trace_log_density(model_trace) - trace_log_density(guide_trace, detach_parameters=path_derivative)
    return log_weight, scale


def _scored_sites(trace: Trace) -> list[dict]:
    return [site for site in trace.nodes.values() if site["type"] == "sample" and not site_is_subsample(site)]


def trace_log_density(trace: Trace, detach_parameters: bool = False) -> torch.Tensor:
    """The unscaled log-density of a trace's sample sites, per particle and datapoint.

    Log-densities of plates nested inside the data plate are summed into their datapoint. With
    ``detach_parameters`` each site's distribution is evaluated with detached parameters.
    """
    trace.compute_log_prob()
    total = 0.0
    for site in _scored_sites(trace):
        log_prob = detach(site["fn"]).log_prob(site["value"]) if detach_parameters else site["unscaled_log_prob"]
        while log_prob.dim() > 2:  # plates nested inside the data plate
            log_prob = log_prob.sum(-1)
        total = total + log_prob
    return total


def log_importance_weights(model: Callable, guide: Callable, num_particles: int, *args,
                           max_plate_nesting: int = 1, path_derivative: bool = False,
                           **kwargs) -> tuple[torch.Tensor, float]:
    """``log p(x, z_k) - log q(z_k|x)`` of shape ``(num_particles, batch_size)``, and the data plate's scale.

    ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` must put every sample site inside
    the data plate (dim -1 when ``max_plate_nesting`` is 1); log-densities of plates nested
    inside it are summed. The weights are unscaled; the scale is the data plate's subsample
    scale (``num_data / batch_size``, 1 without subsampling). Gradients flow through the weights
    when the guide is reparameterized and the caller has not disabled them; with
    ``path_derivative`` only through the samples (see the module's docstring).
    """
    traces = importance_traces(model, guide, num_particles, *args, max_plate_nesting=max_plate_nesting, **kwargs)
    return trace_log_weights(*traces, path_derivative=path_derivative)
