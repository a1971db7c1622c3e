"""Measuring an ELBO estimator: its gradient's mean, variance and signal-to-noise ratio per
parameter group, the gap between its bound and log p(x), and its cost per step.

**Gradient statistics.** An estimator (:mod:`pyro_vae.objectives`) turns a batch x of B
datapoints and fresh random draws into a stochastic gradient g of the loss
``differentiable_loss(model, guide, x) / B`` (minus the batch's bound per datapoint; no
``num_data``, so no subsample scale). :func:`gradient_statistics` draws it ``num_draws`` = S
times on the *same* batch and parameters and reports, for every scalar parameter i of a group
(e.g. the encoder's or the decoder's weights, :func:`parameter_groups`):

    mean_i = (1/S) sum_s g_i^(s),      variance_i = 1/(S-1) sum_s (g_i^(s) - mean_i)^2,
    SNR_i  = |mean_i| / sqrt(variance_i)

the signal-to-noise ratio of Rainforth et al. (2018, "Tighter variational bounds are not
necessarily better", eq. 5), per parameter. :class:`GradientStatistics` summarises a group by

* ``mean_snr``: the average of SNR_i over the group's parameters (those with nonzero variance),
  and ``median_snr``, its median: the SNR of a typical parameter;
* ``total_variance``: sum_i variance_i = E||g - E g||^2, the trace of the gradient's covariance,
  in (nats per datapoint per unit of parameter)^2; it is what a ratio of variances compares.

The only randomness is in the estimator's draws (z ~ q, Pyro's global RNG); pass a fixed,
already binarized batch. Estimates of SNR_i from S draws are biased upwards when the true SNR
is small (|mean_i| has a floor of order sqrt(variance_i / S)); S is reported with them.

**Bound and gap.** :func:`bound_gap` estimates the estimator's bound per datapoint on a data
set (its loss, chunk by chunk) and the importance-sampled log p(x) with K particles
(:func:`pyro_vae.evaluation.log_likelihood`), on the same chunks:

    log p^(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x),   z_k ~ q(z|x),

and the gap log p^(x) - bound, how much the bound gives away (for the ELBO, the mean of
KL(q(z|x) || p(z|x)) when K is large enough for log p^(x) to be log p(x)).

**Time.** :func:`seconds_per_step` is the median time of one loss-and-gradient evaluation, the
part of a training step that depends on the estimator (wall or CPU seconds).
"""

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from pyro.infer import ELBO
from torch import nn

from .errors import ConfigError
from .evaluation import Estimate, log_likelihood


def parameter_groups(module: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Every trainable parameter of ``module``, grouped by the top-level attribute that holds it.

    A submodule's parameters form one group under its name, a parameter of ``module`` itself
    (a learned prior's location, a :class:`~pyro.nn.PyroParam`) a group of its own under its
    name. For a :class:`~pyro_vae.VAE` the ``likelihood`` group is called ``"decoder"``: the
    groups are ``"encoder"`` (phi: q(z|x)), ``"decoder"`` (theta: p(x|z)) and whatever else the
    model adds. Frozen parameters (``requires_grad=False``) belong to no group; a parameter
    shared by two submodules belongs to the first.
    """
    pyro_params = getattr(module, "_pyro_params", {})
    children = dict(module.named_children())
    renames = {"likelihood": "decoder"} if "decoder" not in children else {}
    groups: dict[str, list[nn.Parameter]] = {}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        head = name.split(".", 1)[0]
        if head.endswith("_unconstrained") and head[: -len("_unconstrained")] in pyro_params:
            head = head[: -len("_unconstrained")]
        groups.setdefault(renames.get(head, head), []).append(parameter)
    return groups


@dataclass
class GradientStatistics:
    """Per-parameter mean and variance of a stochastic gradient over ``num_draws`` draws (float64, flat)."""

    mean: torch.Tensor
    variance: torch.Tensor
    num_draws: int

    @property
    def snr(self) -> torch.Tensor:
        """|mean_i| / std_i per parameter; NaN where the variance is zero."""
        std = self.variance.sqrt()
        return torch.where(std > 0, self.mean.abs() / std, torch.full_like(std, math.nan))

    @property
    def mean_snr(self) -> float:
        """The average over parameters of SNR_i (parameters with zero variance left out)."""
        return self.snr.nanmean().item()

    @property
    def median_snr(self) -> float:
        return self.snr.nanmedian().item()

    @property
    def total_variance(self) -> float:
        """sum_i variance_i: the expected squared distance of a draw from the mean gradient."""
        return self.variance.sum().item()

    def summary(self) -> dict:
        """The scalars above, plus ``squared_norm_of_mean`` = ||mean||^2 and the counts."""
        return {"mean_snr": self.mean_snr, "median_snr": self.median_snr, "total_variance": self.total_variance,
                "squared_norm_of_mean": self.mean.pow(2).sum().item(), "num_parameters": self.mean.numel(),
                "num_draws": self.num_draws}


def _gradient(model: Callable, guide: Callable, objective: ELBO, x: torch.Tensor,
              parameters: Sequence[nn.Parameter], **kwargs) -> list[torch.Tensor]:
    """One draw of the gradient of ``differentiable_loss / len(x)`` with respect to ``parameters``."""
    loss = objective.differentiable_loss(model, guide, x, **kwargs) / len(x)
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads)]


def gradient_statistics(model: Callable, guide: Callable, objective: ELBO, x: torch.Tensor,
                        groups: Mapping[str, Sequence[nn.Parameter]], num_draws: int = 100,
                        **kwargs) -> dict[str, GradientStatistics]:
    """Mean, variance and SNR per parameter of each group's gradient, over ``num_draws`` draws on batch ``x``.

    ``kwargs`` go to the model and guide. The statistics are accumulated in float64 with
    Welford's update, so memory does not grow with ``num_draws``.
    """
    if num_draws < 2:
        raise ConfigError(f"gradient statistics need at least 2 draws, got {num_draws}")
    names = list(groups)
    parameters = [p for name in names for p in groups[name]]
    sizes = [sum(p.numel() for p in groups[name]) for name in names]
    mean = torch.zeros(sum(sizes), dtype=torch.float64, device=x.device)
    m2 = torch.zeros_like(mean)
    for draw in range(1, num_draws + 1):
        flat = torch.cat([g.reshape(-1) for g in _gradient(model, guide, objective, x, parameters, **kwargs)]).double()
        delta = flat - mean
        mean += delta / draw
        m2 += delta * (flat - mean)
    variance = m2 / (num_draws - 1)
    return {name: GradientStatistics(m, v, num_draws)
            for name, m, v in zip(names, mean.split(sizes), variance.split(sizes))}


def _chunk_mean(values: torch.Tensor, sizes: torch.Tensor) -> tuple[float, float]:
    """Mean per datapoint from per-chunk means, and its standard error from their spread.

    With weights w_c = n_c / n, the mean is sum_c w_c v_c and its standard error
    sqrt(C/(C-1) sum_c w_c^2 (v_c - mean)^2), which for equal chunks is std(v)/sqrt(C).
    """
    weights = sizes / sizes.sum()
    mean = (weights * values).sum()
    count = len(values)
    stderr = ((weights * (values - mean)).pow(2).sum() * count / (count - 1)).sqrt().item() if count > 1 else math.nan
    return mean.item(), stderr


@dataclass
class BoundGap:
    """An estimator's bound and the importance-sampled log p(x), per datapoint, chunk by chunk.

    ``chunk_bounds[c]`` and ``chunk_log_likelihoods[c]`` are means over the ``chunk_sizes[c]``
    datapoints of chunk c; the figures (:class:`~pyro_vae.evaluation.Estimate`) are means over
    datapoints with a standard error from the spread of the chunks. Two results on the same data
    and chunks can be compared chunk by chunk (:meth:`difference`), which removes the spread
    between datapoints that both share.
    """

    chunk_bounds: torch.Tensor
    chunk_log_likelihoods: torch.Tensor
    chunk_sizes: torch.Tensor
    num_particles: int
    log_likelihood_particles: int

    def _estimate(self, values: torch.Tensor, num_particles: int) -> Estimate:
        return Estimate(*_chunk_mean(values, self.chunk_sizes), num_particles, int(self.chunk_sizes.sum()))

    @property
    def bound(self) -> Estimate:
        return self._estimate(self.chunk_bounds, self.num_particles)

    @property
    def log_likelihood(self) -> Estimate:
        return self._estimate(self.chunk_log_likelihoods, self.log_likelihood_particles)

    @property
    def gap(self) -> Estimate:
        """log p(x) - bound, in nats per datapoint (paired within chunks)."""
        return self._estimate(self.chunk_log_likelihoods - self.chunk_bounds, self.log_likelihood_particles)

    def difference(self, other: "BoundGap") -> Estimate:
        """This model's log p(x) minus ``other``'s, on the same data and chunks (paired)."""
        if not torch.equal(self.chunk_sizes, other.chunk_sizes):
            raise ConfigError("a paired difference needs two results on the same data and chunks")
        return self._estimate(self.chunk_log_likelihoods - other.chunk_log_likelihoods, self.log_likelihood_particles)

    def summary(self) -> dict:
        bound, log_likelihood, gap = self.bound, self.log_likelihood, self.gap
        return {"bound": bound.mean, "bound_stderr": bound.stderr, "log_likelihood": log_likelihood.mean,
                "log_likelihood_stderr": log_likelihood.stderr, "gap": gap.mean, "gap_stderr": gap.stderr,
                "num_particles": self.num_particles, "log_likelihood_particles": self.log_likelihood_particles}


def bound_gap(model: Callable, guide: Callable, objective: ELBO, x: torch.Tensor,
              log_likelihood_particles: int = 5000, chunk_size: int = 100) -> BoundGap:
    """The bound that ``objective`` estimates on ``x``, and log p(x) with K importance samples, per chunk.

    For each chunk of ``chunk_size`` datapoints: ``-objective.loss`` per datapoint (one fresh
    draw of the objective's particles) and :func:`~pyro_vae.evaluation.log_likelihood` with
    ``log_likelihood_particles``. For ``tail-adaptive``, whose value is the ELBO, the bound is
    the ELBO. To measure only the Monte-Carlo error of the bound on a fixed data set, pass
    ``x.repeat(R, 1)`` with ``chunk_size = len(x)``: each chunk is then one pass over the data.
    """
    chunks = x.split(chunk_size)
    with torch.no_grad():
        bound = torch.tensor([-objective.loss(model, guide, chunk) / len(chunk) for chunk in chunks],
                             dtype=torch.float64)
    log_p = torch.tensor([log_likelihood(model, guide, chunk, log_likelihood_particles).mean for chunk in chunks],
                         dtype=torch.float64)
    sizes = torch.tensor([len(chunk) for chunk in chunks], dtype=torch.float64)
    return BoundGap(bound, log_p, sizes, objective.num_particles, log_likelihood_particles)


def seconds_per_step(model: Callable, guide: Callable, objective: ELBO, x: torch.Tensor,
                     parameters: Iterable[nn.Parameter], num_steps: int = 20, warmup: int = 2,
                     clock: Callable[[], float] = time.perf_counter, **kwargs) -> float:
    """Median time in seconds of one loss and gradient on batch ``x`` (after ``warmup`` untimed ones).

    The gradient is computed with :func:`torch.autograd.grad` and discarded: parameters and
    their ``.grad`` are left as they were. ``clock`` is wall time by default; on a machine
    shared with other jobs, :func:`time.process_time` (this process's CPU seconds, summed over
    its threads) is the steadier measure of cost. The median resists occasional slow steps.
    """
    parameters = list(parameters)
    times = []
    for step in range(warmup + num_steps):
        start = clock()
        _gradient(model, guide, objective, x, parameters, **kwargs)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        if step >= warmup:
            times.append(clock() - start)
    return float(torch.tensor(times).median())
