"""Evaluating a trained model: the ELBO and the importance-sampled log-likelihood, per datapoint.

Both figures come from the same quantity, the log importance weight of a draw z ~ q(z|x)
(:func:`pyro_vae.importance.log_importance_weights`)::

    log w(x, z) = log p(x, z) - log q(z|x)

* the ELBO is E_q[log w], estimated by the mean of ``num_particles`` weights (unbiased);
* log p(x) is estimated by ``log (1/K) sum_k w(x, z_k)`` with K = ``num_particles`` draws
  (Burda et al. 2016; K = 5000 as in their paper). It is a lower bound in expectation that
  tightens to log p(x) as K grows, and it is consistent.

Weights are computed for any model and guide written as Pyro programs over a data plate. The
data ``x`` is a tensor, or a tuple of tensors with one row per datapoint (images and labels, for
models that take both), passed to model and guide as their arguments. Work
is split into chunks of at most ``chunk_size`` (particle, datapoint) pairs to fit in memory. The
log weights of a chunk are traced once per chunk shape (:func:`pyro_vae.tracing.trace`) and the
graph replayed for every other chunk of that shape: the same numbers and draws as Pyro's
handlers give, without their overhead per chunk; a model that cannot be traced is evaluated
eagerly after one warning. ``precision="bf16"`` computes the networks' matrix products in
bfloat16 (:mod:`pyro_vae.precision`); the log weights and their log-sum-exp stay float32.

**What is scored.** The model's own density, per datapoint (:data:`SCORING`, also in each
:class:`Estimate`): each site's log-density with ``poutine.mask`` applied, as Pyro's
:class:`~pyro.infer.Trace_ELBO` scores it, so a masked observation (a missing value) counts for
nothing; a scale besides the plates' (a beta or a KL warm-up of ``poutine.scale``) left out, as it
belongs to the objective, not to the model; the data plate's subsample scale divided out. So the
ELBO of one draw is Trace_ELBO's value of that draw, over the number of datapoints, for the model
without its ``poutine.scale``. Sites outside the data plate (global latents) are drawn from the guide once per particle and
their own log-densities left out: the figures are those of each datapoint given them, the
posterior predictive log p(x) = log E_q(w)[p(x|w)] of a Bayesian model (AEVB paper, Appendix F).

Figures are averages over datapoints, in nats; the standard error is that of this average
(the spread across datapoints, which includes the Monte-Carlo noise of each estimate). Two
models evaluated on the same datapoints are compared by :func:`paired_difference`: the spread
across datapoints that both share (some digits are harder than others) cancels, so the
difference is known far more precisely than either figure.
"""

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from tqdm.auto import tqdm

from . import precision as precisions
from .errors import ConfigError, first_line
from .importance import log_importance_weights
from .step import COMPILE_MODES
from .tracing import for_replay, signature, trace

DEFAULT_CHUNK_SIZE = 10_000
_OWN_DENSITY = {"site_scales": False}  # keywords of log_importance_weights: the model without its poutine.scale
#: How every figure here scores a model's sites (the module's docstring says why).
SCORING = ("the model's own density per datapoint: site log-densities with poutine.mask applied as Trace_ELBO "
           "applies it, poutine.scale besides the plates' left out, the data plate's subsample scale divided out; "
           "sites outside the data plate drawn from the guide per particle, not scored")


@dataclass
class Estimate:
    """An average per datapoint, in nats, with its standard error."""

    mean: float
    stderr: float
    num_particles: int
    num_data: int
    #: The estimate of each datapoint, in order (not part of :meth:`as_dict`).
    values: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)
    #: How the model's sites were scored (:data:`SCORING`).
    scoring: str = field(default=SCORING, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "stderr": self.stderr, "num_particles": self.num_particles,
                "num_data": self.num_data}

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.stderr:.2f} nats (K = {self.num_particles}, {self.num_data} datapoints)"


Data = Union[torch.Tensor, tuple]


class _LogWeights:
    """``rows -> log w`` of shape (particles, rows) for one evaluation, traced once per chunk shape."""

    #: Chunks of one shape below which tracing (a few tenths of a second) does not pay.
    MIN_CHUNKS_TO_TRACE = 4

    def __init__(self, model: Callable, guide: Callable, precision: str, trace_graphs: bool,
                 options: Optional[dict] = None):
        self.model, self.guide, self.precision, self.trace_graphs = model, guide, precision, trace_graphs
        self.options = options or {}  # keywords of log_importance_weights
        self.graphs: dict = {}

    def eager(self, num_particles: int, *rows: torch.Tensor) -> torch.Tensor:
        with precisions.autocast(self.precision, rows[0].device):
            return log_importance_weights(self.model, self.guide, num_particles, *rows, **self.options)[0]

    def __call__(self, num_particles: int, *rows: torch.Tensor) -> torch.Tensor:
        if not self.trace_graphs:
            return self.eager(num_particles, *rows)
        key = (num_particles, signature(rows))
        if key not in self.graphs:
            try:
                self.graphs[key] = for_replay(trace(lambda *r: self.eager(num_particles, *r), *rows))
            except Exception as error:  # noqa: BLE001 - anything untraceable runs eagerly
                warnings.warn(f"evaluation: tracing failed ({type(error).__name__}: {first_line(error)}); "
                              "running eagerly", RuntimeWarning, stacklevel=3)
                self.trace_graphs = False
                return self.eager(num_particles, *rows)
        return self.graphs[key](*rows)


def _per_datapoint(model: Callable, guide: Callable, x: Data, num_particles: int,
                   reduce: Callable[[torch.Tensor], torch.Tensor], chunk_size: int, progress: bool,
                   description: str, precision: str, options: Optional[dict] = None,
                   compile: str = "replay") -> torch.Tensor:
    """Apply ``reduce`` (particles -> one value) to the log weights of every datapoint, in chunks;
    ``options`` are keywords of :func:`~pyro_vae.importance.log_importance_weights`; with
    ``compile="eager"`` Pyro computes every chunk, else chunks are traced where there are many."""
    if compile not in COMPILE_MODES:
        raise ConfigError(f"unknown compile mode {compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    data = x if isinstance(x, tuple) else (x,)
    particles_per_chunk = max(1, min(num_particles, chunk_size))
    rows_per_chunk = max(1, chunk_size // particles_per_chunk)
    chunks = math.ceil(len(data[0]) / rows_per_chunk) * math.ceil(num_particles / particles_per_chunk)
    log_weights = _LogWeights(model, guide, precision,
                              compile != "eager" and chunks >= _LogWeights.MIN_CHUNKS_TO_TRACE, options)
    results = []
    with tqdm(total=len(data[0]), desc=description, unit="datapoint", disable=not progress, leave=False) as bar, \
            torch.no_grad():
        for rows in zip(*(tensor.split(rows_per_chunk) for tensor in data)):
            pieces = [log_weights(min(particles_per_chunk, num_particles - start), *rows)
                      for start in range(0, num_particles, particles_per_chunk)]
            results.append(reduce(torch.cat(pieces)))
            bar.update(len(rows[0]))
    return torch.cat(results)


def _summary(values: torch.Tensor, num_particles: int) -> Estimate:
    values = values.double()
    stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return Estimate(values.mean().item(), stderr, num_particles, len(values), values)


def paired_difference(a: Estimate, b: Estimate) -> Estimate:
    """``a - b`` datapoint by datapoint, for two estimates of the same datapoints (two models on
    one test set): the mean difference and the standard error of the differences."""
    if a.values is None or b.values is None or a.values.shape != b.values.shape:
        raise ConfigError("a paired difference needs the per-datapoint values of two estimates of the same datapoints")
    return _summary(a.values.cpu() - b.values.cpu(), min(a.num_particles, b.num_particles))


def elbo(model: Callable, guide: Callable, x: Data, num_particles: int = 1,
         chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False, precision: str = "fp32",
         compile: str = "replay") -> Estimate:
    """The ELBO per datapoint, estimated with ``num_particles`` draws per datapoint and scored as
    :data:`SCORING` says: with one draw, Trace_ELBO's value of that draw over the number of datapoints.
    ``compile="eager"`` (a run's ``--compile eager``) evaluates every chunk eagerly."""
    values = _per_datapoint(model, guide, x, num_particles, lambda w: w.mean(0), chunk_size, progress, "ELBO",
                            precision, _OWN_DENSITY, compile)
    return _summary(values, num_particles)


def log_likelihood(model: Callable, guide: Callable, x: Data, num_particles: int = 5000,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False, precision: str = "fp32",
                   compile: str = "replay") -> Estimate:
    """The importance-sampled estimate of log p(x) per datapoint, with K = ``num_particles``, scored as
    :data:`SCORING` says. ``compile="eager"`` (a run's ``--compile eager``) evaluates every chunk eagerly."""
    def log_mean_exp(log_weight: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_weight, 0) - math.log(num_particles)

    # Chunks over particles are combined exactly: logsumexp of a concatenation.
    values = _per_datapoint(model, guide, x, num_particles, log_mean_exp, chunk_size, progress,
                            f"log p(x), K={num_particles}", precision, _OWN_DENSITY, compile)
    return _summary(values, num_particles)


def accuracy(model, x: torch.Tensor, y: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """The fraction of ``x`` whose class ``model.classify`` predicts as ``y``."""
    correct = sum(int((model.classify(rows) == labels).sum()) for rows, labels in zip(x.split(chunk_size),
                                                                                   y.split(chunk_size)))
    return correct / len(x)
