"""pyro-vae: Auto-Encoding Variational Bayes (Kingma & Welling 2013, arXiv:1312.6114) as Pyro programs.

Where things are:

* :func:`fit` (:mod:`pyro_vae.engine`) — AEVB for any ``torch.nn.Module`` whose ``model`` and
  ``guide`` are Pyro programs, on any data; :mod:`pyro_vae.contract` — what it needs of a model,
  checked before the first step; :mod:`pyro_vae.recipes` — models by import path, and how a run
  rebuilds its model; :mod:`pyro_vae.trust` — which factories a run folder may make it import.
* The loop's parts: :mod:`pyro_vae.batches` — the data a run trains on and its minibatches;
  :mod:`pyro_vae.runstate` — what a checkpoint holds and how a run resumes; :mod:`pyro_vae.report`
  — the evaluations and the final report; :mod:`pyro_vae.callbacks` — hooks, schedules, TensorBoard
  and MLflow; :mod:`pyro_vae.param_sites`, :mod:`pyro_vae.handled` — ``pyro.param`` sites and
  engine-added effect handlers; :mod:`pyro_vae.step` — one training step;
  :mod:`pyro_vae.distributed` — devices and data-parallel training under ``torchrun``.
* :func:`train`, :func:`resume`, :func:`load_run`, :func:`evaluate` (:mod:`pyro_vae.training`) —
  runs from a :class:`TrainConfig` (:mod:`pyro_vae.config`), continued and opened;
  :mod:`pyro_vae.rundir` — run folders that are never overwritten by accident.
* :mod:`pyro_vae.models` — the built-in models and their factories (:class:`VAE`, the two-layer
  :class:`HierarchicalVAE`, the semi-supervised :class:`SemiSupervisedVAE` (M2), the
  :class:`ConditionalVAE`).
* :mod:`pyro_vae.networks`, :mod:`pyro_vae.likelihoods` — encoder and decoder networks, p(x|z).
* :mod:`pyro_vae.objectives` — Pyro's ELBO estimators by name, one record each.
* :mod:`pyro_vae.estimators` — estimators Pyro lacks (STL, DReG, per-datapoint IWAE, Renyi and
  tail-adaptive); :mod:`pyro_vae.diagnostics` — gradient variance and SNR, bound gaps, cost per step.
* :mod:`pyro_vae.wake_sleep` — the wake-sleep and reweighted wake-sleep baselines.
* :mod:`pyro_vae.datasets` — MNIST, Frey Face and your own images (:class:`ImageData`);
  :mod:`pyro_vae.tensor_data` — any data as tuples of tensors (:class:`TensorData`).
* :mod:`pyro_vae.evaluation` — ELBO and importance-sampled log-likelihood; :mod:`pyro_vae.plots` —
  pictures.
* :mod:`pyro_vae.tracing` — a step or an evaluation as one replayed or compiled graph;
  :mod:`pyro_vae.torch_constants` — PyTorch's CPU kernels at their speed from their first call
  (a workaround a CPU run applies when it starts, ``docs/upstream.md``).

Importing the package changes nothing in the process: no backend, umask, logger level or memory
mapping is touched, and no operator is registered with PyTorch.
"""

from .datasets import ImageData, load_dataset
from .tensor_data import TensorData
from .diagnostics import bound_gap, gradient_statistics, parameter_groups, seconds_per_step
from .errors import (CheckpointError, ConfigError, DataError, PyroVAEError, RunLockError, TrainingError,
                     TrainingInterrupted)
from .estimators import DoublyReparameterizedELBO, ScoreFunctionELBO, StickingTheLandingELBO, TailAdaptiveELBO
from .evaluation import elbo, log_likelihood
from .importance import log_importance_weights
from .likelihoods import BernoulliLikelihood, GaussianLikelihood
from .models import (MODELS, VAE, ConditionalVAE, HierarchicalVAE, SemiSupervisedVAE, build_model,
                     build_vae)
from .networks import MLP, GaussianEncoder
from .objectives import OBJECTIVES, ImportanceWeightedELBO, make_objective
from . import wake_sleep  # noqa: F401 (registers its objectives)
from .config import TrainConfig
from .contract import check_model
from .engine import Run, fit
from .training import evaluate, load_run, resume, train
from . import callbacks  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "BernoulliLikelihood", "CheckpointError", "TensorData", "evaluate", "ConditionalVAE", "ConfigError",
    "DataError", "DoublyReparameterizedELBO", "GaussianEncoder", "GaussianLikelihood", "HierarchicalVAE",
    "ImageData", "ImportanceWeightedELBO", "MLP", "MODELS", "OBJECTIVES", "PyroVAEError", "Run", "RunLockError",
    "ScoreFunctionELBO", "SemiSupervisedVAE", "StickingTheLandingELBO", "TailAdaptiveELBO", "TrainConfig",
    "TrainingError", "TrainingInterrupted", "VAE", "bound_gap", "build_model", "build_vae", "check_model", "elbo",
    "fit", "gradient_statistics", "load_dataset", "load_run", "log_importance_weights", "log_likelihood",
    "make_objective", "parameter_groups", "resume", "seconds_per_step", "train",
]
