"""ELBO estimators that Pyro lacks, or lacks in the form training here needs, as Pyro ELBO classes.

Every class has ``differentiable_loss(model, guide, *args, **kwargs)``: a scalar whose value is
minus the estimated bound of the minibatch, scaled by the data plate's ``num_data / batch_size``,
and whose gradient is the estimator's. All but :class:`ScoreFunctionELBO` draw K = ``num_particles``
vectorized particles per datapoint (:func:`pyro_vae.importance.importance_traces`), so the model
and guide must allow one batch dimension left of their plates, and work per datapoint: with log
weights
log w_k(x) = log p(x, z_k) - log q(z_k|x), z_k ~ q(z|x), and w~_k(x) = w_k / sum_j w_j the
normalized weights,

======================================  ===============================  ========================================
class                                   value per datapoint              gradient
======================================  ===============================  ========================================
:class:`ImportanceWeightedELBO`         IWAE / Renyi bound L_K           reparameterized: sum_k w~_k grad log w_k
                                                                         (alpha = 0)
:class:`StickingTheLandingELBO`         ELBO, (1/K) sum_k log w_k        path derivative only (Roeder et al. 2017)
:class:`DoublyReparameterizedELBO`      IWAE bound L_K                   DReG (Tucker et al. 2018)
:class:`TailAdaptiveELBO`               ELBO (for monitoring)            tail-adaptive f-divergence (Wang et al. 2018)
:class:`ScoreFunctionELBO`              ELBO                             Pyro's TraceGraph_ELBO
======================================  ===============================  ========================================

**Masks, scales, global latents.** Sites are scored as Pyro scores them (:mod:`pyro_vae.importance`),
so with K = 1 every value here is Trace_ELBO's on the same draws. A site scaled besides its plates
(``poutine.scale``) is refused, naming it, wherever K > 1 particles are weighed against each other.
Sites outside the data plate (global latents) are counted once: :class:`StickingTheLandingELBO`
draws them per particle (Trace_ELBO's ELBO); :class:`ImportanceWeightedELBO` and
:class:`DoublyReparameterizedELBO` draw one for all particles and bound
``log p(w) - log q(w) + (N/B) sum_x L_K(x | w)``, an ELBO over w of per-datapoint bounds given w
(DReG weighs only the per-datapoint samples); :class:`TailAdaptiveELBO` refuses them
(``docs/model_contract.md``).

**Assumptions.** The guide's latent sites are reparameterized (``has_rsample``), which
:class:`StickingTheLandingELBO` and :class:`DoublyReparameterizedELBO` check, and no guide
site's distribution depends on another site's sample (the path-derivative estimators detach
each site's parameters; see :mod:`pyro_vae.importance`). The model and guide share no
parameters (theta in the model, phi in the guide), as Tucker et al. assume.

Each datapoint has its own K weights, as in Burda et al. (2016), and the per-datapoint bounds are
summed and scaled by the data plate's subsample scale. Why these rather than Pyro's
:class:`~pyro.infer.RenyiELBO` and :class:`~pyro.infer.TraceTailAdaptive_ELBO`:
``docs/upstream.md#pyro-estimators-replaced-here``.
"""

import math
from abc import abstractmethod

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceGraph_ELBO

from .errors import ConfigError
from .importance import LogDensity, data_frame, importance_traces, latent_sites, trace_log_weights


#: What to do about a site scaled besides its plates, or outside the data plate, where an objective refuses it.
SCALED_SITE_FIX = "use objective trace, meanfield or stl (StickingTheLandingELBO), or remove the poutine.scale"
GLOBAL_SITE_FIX = "use objective trace, meanfield, stl, iwae or dreg"


class ParticleELBO(ELBO):
    """Base of the estimators here: defined by ``differentiable_loss`` over K vectorized particles.

    Particles are vectorized by :func:`~pyro_vae.importance.importance_traces` (a plate left of
    the ``max_plate_nesting`` plates of the model), not by Pyro's ``vectorize_particles``, so
    ``max_plate_nesting`` stays the model's own count.
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1):
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ConfigError(f"the number of particles must be a positive integer, got {num_particles!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    _get_trace = Trace_ELBO._get_trace  # the traces of one particle, as Trace_ELBO samples them

    def log_weights(self, model, guide, *args, path_derivative: bool = False, shared_globals: bool = False,
                    **kwargs) -> LogDensity:
        """The log weights of K fresh particles per datapoint (:class:`~pyro_vae.importance.LogDensity`)."""
        traces = self.traces(model, guide, *args, shared_globals=shared_globals, **kwargs)
        return trace_log_weights(*traces, path_derivative=path_derivative)

    def traces(self, model, guide, *args, shared_globals: bool = False, **kwargs):
        """Model and guide traces of K vectorized particles (:func:`~pyro_vae.importance.importance_traces`)."""
        return importance_traces(model, guide, self.num_particles, *args, max_plate_nesting=self.max_plate_nesting,
                                 shared_globals=shared_globals, **kwargs)

    def weigh_particles(self, weights: LogDensity, what: str) -> torch.Tensor:
        """``weights.local``, for ``what``, which weighs the K particles against each other: with K > 1
        a site scaled besides its plates is refused (:meth:`~pyro_vae.importance.LogDensity.refuse_site_scales`)."""
        if self.num_particles > 1:
            weights.refuse_site_scales(what, SCALED_SITE_FIX)
        return weights.local

    @abstractmethod
    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the estimated bound of the batch, scaled to the data set; its gradient is the estimator's."""

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _log_mean_exp(log_weight: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k exp(log_weight_k) over the particle dimension 0."""
    return torch.logsumexp(log_weight, 0) - math.log(log_weight.shape[0])


class ImportanceWeightedELBO(ParticleELBO):
    """The importance-weighted bound, per datapoint, with K vectorized particles.

    For each datapoint x of a minibatch of B out of N::

        L_K(x) = 1/(1 - alpha) * log (1/K) sum_k w_k(x)^(1 - alpha),   w_k = p(x, z_k) / q(z_k|x)

    and the loss is ``-(N/B) sum_x L_K(x)``. With ``alpha = 0`` (the default) this is the IWAE
    bound of Burda et al. (2016), which is the ELBO for K = 1 and tends to log p(x) as K grows;
    other ``alpha`` in [0, 1) give the Renyi bounds of Li & Turner (2016), which lie between the
    ELBO (alpha -> 1) and the IWAE bound (alpha = 0). Gradients are the reparameterized
    (pathwise) ones, so every latent site of the guide must be reparameterizable.
    """

    def __init__(self, num_particles: int = 5, alpha: float = 0.0, max_plate_nesting: int = 1):
        if not 0.0 <= alpha < 1.0:
            raise ConfigError(f"alpha must be in [0, 1), got {alpha}")
        super().__init__(num_particles, max_plate_nesting)
        self.alpha = alpha

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        weights = self.log_weights(model, guide, *args, shared_globals=True, **kwargs)
        log_weight = self.weigh_particles(weights, "the log-mean-exp of the importance-weighted bound")
        bound = _log_mean_exp((1.0 - self.alpha) * log_weight) / (1.0 - self.alpha)
        return -weights.total(bound)


class StickingTheLandingELBO(ParticleELBO):
    """The ELBO with the "sticking the landing" gradient of Roeder, Wu & Duvenaud (2017).

    The value is the usual estimate (1/K) sum_k [log p(x, z_k) - log q(z_k|x)]. The gradient
    drops the score term: with z = z(eps, phi) reparameterized,

        d/dphi log w = [d log p(x,z)/dz - d log q_phi(z|x)/dz] dz/dphi  -  d log q_phi(z|x)/dphi,

    and the last term has expectation zero under q. Dropping it (evaluating log q with detached
    parameters) keeps the estimator unbiased for the ELBO's gradient; where q equals the
    posterior, log p(x, z) - log q(z|x) = log p(x) for every z, so the remaining path term is
    zero and the encoder's gradient has zero variance. The decoder's gradient is unchanged.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        weights = self.log_weights(model, guide, *args, path_derivative=True, **kwargs)
        return -weights.total(weights.local.mean(0))


class DoublyReparameterizedELBO(ParticleELBO):
    """The IWAE bound with the doubly reparameterized gradient (DReG) of Tucker et al. (2018).

    The value is the IWAE bound L_K = log (1/K) sum_k w_k. Its reparameterized gradient with
    respect to the decoder's parameters theta, sum_k w~_k d log p_theta(x, z_k)/dtheta, is kept.
    For the encoder's parameters phi, the reparameterized gradient contains score terms
    -sum_k w~_k d log q_phi(z_k|x)/dphi, to which Tucker et al. attribute the falling
    signal-to-noise ratio of IWAE's encoder gradient as K grows (Rainforth et al. 2018); applying
    the reparameterization trick a second time to them gives the estimator

        sum_k w~_k^2 (d log w_k / d z_k) (d z_k / d phi),

    which has the same expectation. It is computed in one pass: log q is evaluated with detached
    parameters (a path derivative, which would give sum_k w~_k ... on its own, the biased
    "IWAE-STL" gradient) and a gradient hook multiplies what reaches each latent sample z_k by
    w~_k (held constant), turning w~_k into w~_k^2 on the encoder's side only. With K = 1 it is
    :class:`StickingTheLandingELBO`.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace = self.traces(model, guide, *args, shared_globals=True, **kwargs)
        weights = trace_log_weights(model_trace, guide_trace, path_derivative=True)
        log_weight = self.weigh_particles(weights, "the log-mean-exp of the importance-weighted bound")
        if log_weight.requires_grad:
            normalized = torch.softmax(log_weight.detach(), dim=0)
            for site in latent_sites(guide_trace):
                if site["value"].requires_grad and data_frame(site) is not None:
                    site["value"].register_hook(_weigh_gradient(normalized))
        return -weights.total(_log_mean_exp(log_weight))


def _weigh_gradient(normalized: torch.Tensor):
    """A tensor hook multiplying the gradient of a ``(K, B, ...)`` sample by ``normalized`` ``(K, B)``."""
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * normalized.reshape(normalized.shape + (1,) * (grad.dim() - normalized.dim()))
    return hook


class TailAdaptiveELBO(ParticleELBO):
    """The tail-adaptive f-divergence gradient of Wang, Liu & Liu (2018), per datapoint.

    For each datapoint, its K weights are ranked and particle k gets the weight

        gamma_k = F^(w_k)^beta / sum_j F^(w_j)^beta,    F^(w) = #{j : w_j >= w} / K,

    the empirical tail probability of its importance weight raised to ``beta`` (the paper uses
    beta = -1, so the largest weight gets the most emphasis: mass-covering like an
    alpha-divergence with alpha > 0, but with weights that depend on ranks only and so have
    bounded variance). The gradient is -sum_k gamma_k d log w_k (reparameterized; gamma held
    constant). With ``beta = 0`` it is the ELBO's gradient with K particles.

    The objective has no closed value; ``differentiable_loss`` returns the ELBO estimate
    (1/K) sum_k log w_k of the same draws as its value, for monitoring, with the tail-adaptive
    gradient. It ranks each datapoint's own K weights; how that differs from Pyro's
    :class:`~pyro.infer.TraceTailAdaptive_ELBO`: ``docs/upstream.md#pyro-estimators-replaced-here``.
    """

    def __init__(self, num_particles: int = 5, beta: float = -1.0, max_plate_nesting: int = 1):
        super().__init__(num_particles, max_plate_nesting)
        self.beta = float(beta)

    def particle_weights(self, log_weight: torch.Tensor) -> torch.Tensor:
        """gamma of shape ``(K, B)``, normalized over particles, from log weights ``(K, B)``."""
        log_weight = log_weight.detach()
        at_least = (log_weight.unsqueeze(0) >= log_weight.unsqueeze(1)).sum(1)  # #{j: w_j >= w_k}
        gamma = (at_least.to(log_weight.dtype) / log_weight.shape[0]).pow(self.beta)
        return gamma / gamma.sum(0)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        weights = self.log_weights(model, guide, *args, **kwargs)
        weights.refuse_global_sites("the tail-adaptive objective", GLOBAL_SITE_FIX)
        log_weight = self.weigh_particles(weights, "the tail-adaptive objective's ranks")
        surrogate = (self.particle_weights(log_weight) * log_weight).sum(0)
        elbo = log_weight.detach().mean(0)
        return -weights.scale * (elbo + surrogate - surrogate.detach()).sum()


class ScoreFunctionELBO(TraceGraph_ELBO):
    """The ELBO with score-function gradients for non-reparameterized sites, as a ``differentiable_loss``:
    Pyro's :class:`~pyro.infer.TraceGraph_ELBO`, which has only ``loss_and_grads``, made to drive a
    PyTorch optimizer.

    The value is the ELBO estimate; the gradient that of TraceGraph_ELBO's surrogate loss
    (score-function terms with Rao-Blackwellization by the dependency graph, and optional
    baselines, for non-reparameterized sites). For a fully reparameterized guide such as the
    VAE's it has no score terms and its gradient equals :class:`~pyro.infer.Trace_ELBO`'s.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        return -elbo.detach() + (surrogate_loss - surrogate_loss.detach())
