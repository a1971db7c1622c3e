"""Hooks into training: ``fit(..., callbacks=[...])`` and ``train(config, callbacks=[...])``.

A callback is any object with some of these methods, called by the training loop
(:mod:`pyro_vae.engine`) in the order the callbacks are given, on every process of a distributed run
(``state.main`` is true on the one that writes the run folder; ``on_evaluation`` runs only there):

=============================  ===============================================================
``on_fit_start(state)``        once, before the first step (after a resume, before its first)
``on_step_end(state)``         after every training step
``on_evaluation(state, rec)``  after each evaluation, with its record (a row of the history),
                               once its checkpoint is saved
``on_fit_end(state)``          once, after the final report (``state.metrics``) is written
=============================  ===============================================================

:class:`State` is what they see and may change: setting ``state.should_stop = True`` ends training
after the current step with a checkpoint from which :func:`pyro_vae.resume` continues, and the
final report is made as at a normal end. A callback may change the model's attributes between
steps (a beta, a temperature): the compiled step sees the change (it re-traces, or runs eagerly,
saying so once). The learning rate is the optimizer's (``state.optimizer.param_groups``). A callback
that draws random numbers (evaluating the model, say) changes the draws training makes after it,
unless it saves and restores Pyro's random state (``pyro.util.get_rng_state``/``set_rng_state``).

Built in: :class:`~pyro_vae.callbacks.schedules.LearningRateSchedule`,
:class:`~pyro_vae.callbacks.schedules.EarlyStopping` and :class:`~pyro_vae.callbacks.schedules.KLWarmup`
(the ``--lr-schedule``, ``--early-stopping`` and ``--kl-warmup`` options);
:class:`~pyro_vae.callbacks.tensorboard.TensorBoard` and :class:`~pyro_vae.callbacks.mlflow.MLflow`
(``--tensorboard DIR``, ``--mlflow URI``).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError

HOOKS = ("on_fit_start", "on_step_end", "on_evaluation", "on_fit_end")


@dataclass
class State:
    """The state of a training run, as callbacks see it.

    :param model: the model being trained (the user's module).
    :param optimizer: its optimizer.
    :param config: the run's :class:`~pyro_vae.TrainConfig`.
    :param out: the run directory.
    :param epoch: the epoch under way, from 1.
    :param step: the steps taken in all, across epochs (after a resume, counted from the start).
    :param steps_per_epoch: the steps of one epoch.
    :param history: the records of the evaluations so far (``epoch``, ``train_elbo``, ``test_elbo``, ...).
    :param loss: the last step's loss, minus the estimated bound of the training set (a device tensor:
        reading it waits for the step).
    :param grad_norm: the last step's total gradient norm before clipping (a device tensor), if known.
    :param samples_seen: datapoints drawn so far.
    :param seconds: seconds of training so far.
    :param metrics: the final report, at ``on_fit_end``.
    :param scored: the module whose ``model`` and ``guide`` the objective runs (the model, or a wrapper
        adding its ``pyro.param`` sites and a KL warm-up's beta).
    :param main: whether this process writes the run folder (the only one in a single-process run).
    :param data: the run's data as training uses it (an :class:`~pyro_vae.ImageData` binarized as
        configured, or a :class:`~pyro_vae.TensorData`), on the training device.
    :param num_data: the number of training datapoints (``-loss / num_data`` is the bound per datapoint).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: Any
    out: Path
    steps_per_epoch: int
    epoch: int = 1
    step: int = 0
    history: list = field(default_factory=list)
    loss: Optional[torch.Tensor] = None
    grad_norm: Optional[torch.Tensor] = None
    samples_seen: int = 0
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    scored: Optional[nn.Module] = None
    main: bool = True
    data: Any = None
    num_data: int = 0
    should_stop: bool = False


class Callback:
    """A base class with every hook doing nothing; subclassing it is optional."""

    def on_fit_start(self, state: State) -> None:
        pass

    def on_step_end(self, state: State) -> None:
        pass

    def on_evaluation(self, state: State, record: dict) -> None:
        pass

    def on_fit_end(self, state: State) -> None:
        pass


def check_callbacks(callbacks: Optional[Sequence]) -> list:
    """``callbacks`` as a list, each refused in one line unless it has at least one hook."""
    callbacks = list(callbacks or ())
    for callback in callbacks:
        if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
            raise ConfigError(f"callback {callback!r} has none of the hooks {', '.join(HOOKS)}: give it at least one")
    return callbacks
