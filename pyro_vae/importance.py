"""Log importance weights of a model and guide, per particle and datapoint.

For draws z_k ~ q(z|x) of a guide, the log importance weight of a datapoint is::

    log w_k(x) = log p(x, z_k) - log q(z_k|x)

This is the one quantity behind the importance-weighted objectives (:mod:`pyro_vae.objectives`)
and the evaluation (:mod:`pyro_vae.evaluation`). It is computed for any model and guide written
as Pyro programs over one data plate, by tracing the guide under a plate of particles and
replaying the model against it; nothing here knows a particular model's latent variables.
"""

from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample


def log_importance_weights(model: Callable, guide: Callable, num_particles: int, *args,
                           max_plate_nesting: int = 1, **kwargs) -> tuple[torch.Tensor, float]:
    """``log p(x, z_k) - log q(z_k|x)`` of shape ``(num_particles, batch_size)``, and the data plate's scale.

    ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` must put every sample site inside
    the data plate (dim -1 when ``max_plate_nesting`` is 1); log-densities of plates nested
    inside it are summed. The weights are unscaled; the scale is the data plate's subsample
    scale (``num_data / batch_size``, 1 without subsampling). Gradients flow through the weights
    when the guide is reparameterized and the caller has not disabled them.
    """
    with pyro.plate("particles", num_particles, dim=-(max_plate_nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    log_weight, scale = 0.0, 1.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                log_prob = site["unscaled_log_prob"]
                while log_prob.dim() > 2:  # plates nested inside the data plate
                    log_prob = log_prob.sum(-1)
                log_weight = log_weight + sign * log_prob
                scale = float(site["scale"])
    return log_weight, scale
