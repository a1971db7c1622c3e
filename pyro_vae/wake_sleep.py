"""Wake-sleep and reweighted wake-sleep as Pyro losses: the baselines of the AEVB paper's Figure 2.

Both train a generative model p_theta(x, z) (in a Pyro ``model``) and a recognition model
q_phi(z|x) (in a ``guide``) with *two different* objectives, one per set of parameters:

**Wake-sleep** (Hinton, Dayan, Frey & Neal 1995, "The wake-sleep algorithm for unsupervised
neural networks", Science 268)

* wake phase, theta: draw z ~ q(z|x) for each datapoint x and ascend ``grad_theta log p(x, z)``;
  z is held fixed (no gradient flows through the draw into phi);
* sleep phase, phi: dream (z, x) ~ p(z) p(x|z) and ascend ``grad_phi log q(z|x)`` on the dream;
  the dream is held fixed (no gradient flows into theta).

**Reweighted wake-sleep** (Bornschein & Bengio 2015, "Reweighted wake-sleep", ICLR) draws K
particles z_1..z_K ~ q(z|x) per datapoint and normalises their importance weights *within each
datapoint*, ``w~_k(x) = softmax_k(log p(x, z_k) - log q(z_k|x))``:

* wake phase, theta: ascend ``sum_k w~_k(x) grad_theta log p(x, z_k)``, which is exactly the gradient
  of the importance-weighted bound log (1/K) sum_k w_k(x) (Burda et al. 2016) with the draws fixed;
* wake phase, phi ("q-wake"): ascend ``sum_k w~_k(x) grad_phi log q(z_k|x)``, a self-normalised
  estimate of ``grad_phi E_{p(z|x)}[log q(z|x)]``, i.e. of descending KL(p(z|x) || q(z|x));
* sleep phase, phi: as in wake-sleep.

``insomnia`` mixes the two phi updates as in Pyro's own class: ``insomnia * q-wake + (1 - insomnia)
* sleep``. :class:`WakeSleep` is ``insomnia = 0`` with one particle, where the weights are 1 and the
theta update is classic wake-sleep; the ``rws`` objective is ``insomnia = 1`` (q-wake only), which
Bornschein & Bengio (section 4) and Le et al. (2019, "Revisiting reweighted wake-sleep") found to
work best.

Here the weights are per datapoint, and every term is scaled by the data plate's subsample scale
(N/B), so a minibatch loss estimates the full-data objective as the ELBOs of
:mod:`pyro_vae.objectives` do. Why not Pyro's :class:`pyro.infer.ReweightedWakeSleep`:
``docs/upstream.md#pyro-estimators-replaced-here``.

**The loss as a number and as a gradient.** :meth:`ReweightedWakeSleep.differentiable_loss` returns
a surrogate whose *gradient* is the wake gradient on theta and the (q-wake and/or sleep) gradient
on phi, and whose *value* is minus the importance-weighted bound of the wake draws (the ELBO when
K = 1), scaled to the full data. The phi terms enter as ``t - t.detach()``: zero in value, their
gradient in gradient. Training loops that print ``-loss`` as a bound therefore print one. Neither
phase follows the gradient of that bound: wake-sleep optimises no single objective.

Assumptions (the same as :func:`pyro_vae.importance.log_importance_weights`): every sample site of
model and guide lies inside the data plate (the outermost ``max_plate_nesting`` dims are plates; the
particles add one more on their left), and latent sites of the guide are matched by name in the
model. Sites are scored as Pyro scores them (masks and ``poutine.scale`` applied); a site outside
the data plate, or, with K > 1, one scaled besides its plates, is refused in one line at the first
call, as the per-datapoint weights have no meaning for it. The sleep phase also needs to know where the data enter: the model must have exactly one
observed site, and the first positional argument of model and guide must be the data observed there
(``model(x, ...)``, ``guide(x, ...)``, as :class:`pyro_vae.models.VAE`); the dream replaces it.
Dreams are drawn by running the model under :func:`pyro.poutine.uncondition`, one per datapoint
of the minibatch.
"""

import math

import torch
from pyro import poutine
from pyro.infer.enum import get_importance_trace

from .errors import ConfigError
from .estimators import GLOBAL_SITE_FIX, ParticleELBO
from .importance import ParticlePlate, trace_log_density
from .objectives import Objective, register


def _gradient_only(term: torch.Tensor) -> torch.Tensor:
    """Zero in value, ``term``'s gradient in gradient."""
    return term - term.detach()


class ReweightedWakeSleep(ParticleELBO):
    """Reweighted wake-sleep with importance weights normalised per datapoint.

    :param num_particles: K draws of z ~ q(z|x) per datapoint in the wake phase. K = 1 makes the
        theta update classic wake-sleep; q-wake (``insomnia > 0``) needs K >= 2, as with one
        particle its gradient is a zero-mean score and q would not learn.
    :param insomnia: weight of the q-wake update of phi; ``1 - insomnia`` weighs the sleep update.
    :param max_plate_nesting: plates of the model and guide (the data plate: 1); the particles
        are vectorized in one more plate on their left.

    Usable with :class:`pyro.infer.SVI` and with :func:`pyro_vae.training.train` (through
    :meth:`differentiable_loss`). The module docstring gives the gradients and the loss's value.
    """

    def __init__(self, num_particles: int = 5, insomnia: float = 1.0, max_plate_nesting: int = 1):
        if not 0.0 <= insomnia <= 1.0:
            raise ConfigError(f"insomnia must be in [0, 1], got {insomnia}")
        if num_particles < 1 or (insomnia > 0 and num_particles < 2):
            raise ConfigError(f"reweighted wake-sleep with a q-wake update needs at least 2 particles, got "
                              f"{num_particles}: pass --particles 2 or more")
        super().__init__(num_particles, max_plate_nesting)
        self.insomnia = float(insomnia)

    def _particles(self, fn):
        """``fn`` inside a plate of ``num_particles`` vectorized particles, left of the model's plates."""
        return ParticlePlate(self.num_particles, self.max_plate_nesting)(fn)

    def _get_trace(self, model, guide, args, kwargs):
        """The guide's trace with its samples detached, and the model's trace replayed against it
        (``model`` and ``guide`` wrapped by :meth:`_particles`)."""
        return get_importance_trace("flat", self.max_plate_nesting + 1, model, guide, args, kwargs, detach=True)

    def wake(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The wake phase's losses ``(theta_loss, q_wake_loss)`` from K fixed draws z ~ q(z|x).

        ``theta_loss = -(N/B) sum_x log (1/K) sum_k w_k(x)`` with the draws detached: its value is
        minus the importance-weighted bound, its gradient touches only theta (the guide's
        log-density enters detached). ``q_wake_loss = -(N/B) sum_x sum_k w~_k(x) log q(z_k|x)``
        with detached weights: its gradient touches only phi.
        """
        # The plate wraps model and guide inside the trace and replay handlers, as in Pyro's ELBOs.
        model_trace, guide_trace = self._get_trace(self._particles(model), self._particles(guide), args, kwargs)
        log_p, log_q = trace_log_density(model_trace), trace_log_density(guide_trace)
        weights = log_p - log_q
        weights.refuse_global_sites("wake-sleep", GLOBAL_SITE_FIX)
        self.weigh_particles(weights, "reweighted wake-sleep's normalised weights")
        log_weight = log_p.local - log_q.local.detach()
        bound = torch.logsumexp(log_weight, 0) - math.log(self.num_particles)
        normalised = torch.softmax(log_weight.detach(), 0)
        return -weights.scale * bound.sum(), -weights.scale * (normalised * log_q.local).sum()

    def sleep(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The sleep phase's loss ``-(N/B) sum log q(z|x)`` over B dreams (z, x) ~ p(z) p(x|z).

        The dreams are drawn without gradient, so the loss's gradient touches only phi.
        """
        with torch.no_grad():
            dream = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
        observed = [site for site in dream.nodes.values()
                    if site["type"] == "sample" and site["infer"].get("was_observed")]
        if len(observed) != 1 or not args or observed[0]["value"].shape != args[0].shape:
            raise ConfigError("the sleep phase needs a model with one observed site whose data is the first "
                              "argument of model and guide, like pyro_vae.VAE")
        dreamed_args = (observed[0]["value"], *args[1:])
        guide_trace = poutine.trace(poutine.replay(guide, trace=dream)).get_trace(*dreamed_args, **kwargs)
        return -guide_trace.log_prob_sum()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the bound in value; the wake gradient on theta, the mixed phi gradient on phi."""
        theta_loss, q_wake_loss = self.wake(model, guide, *args, **kwargs)
        loss = theta_loss
        if self.insomnia > 0:
            loss = loss + self.insomnia * _gradient_only(q_wake_loss)
        if self.insomnia < 1:
            loss = loss + (1.0 - self.insomnia) * _gradient_only(self.sleep(model, guide, *args, **kwargs))
        return loss


class WakeSleep(ReweightedWakeSleep):
    """Classic wake-sleep (Hinton et al. 1995): one draw z ~ q(z|x) per datapoint for the wake
    phase of theta, one dream per datapoint for the sleep phase of phi.

    With ``num_particles`` K > 1 the wake phase is reweighted over the K draws (Bornschein &
    Bengio's reweighted wake-sleep with its sleep-phase update of q).
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1):
        super().__init__(num_particles=num_particles, insomnia=0.0, max_plate_nesting=max_plate_nesting)


register(Objective(
    "wake-sleep", lambda k, n: WakeSleep(k, max_plate_nesting=n),
    "wake-sleep (Hinton et al. 1995)", handles_global_latents=False))
# Bornschein & Bengio's K = 5; q-wake needs K >= 2.
register(Objective(
    "rws", lambda k, n: ReweightedWakeSleep(k, insomnia=1.0, max_plate_nesting=n),
    "reweighted wake-sleep (Bornschein & Bengio 2015) with per-datapoint weights", default_particles=5,
    least_particles=2, handles_global_latents=False))
