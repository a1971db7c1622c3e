"""What trainers have: learning-rate schedules, early stopping and a KL warm-up, as callbacks.

``--lr-schedule``, ``--early-stopping N`` and ``--kl-warmup EPOCHS`` (the settings ``lr_schedule``,
``early_stopping``, ``kl_warmup`` of :class:`~pyro_vae.TrainConfig`) add them to a run
(:func:`from_config`); in Python they can be given as callbacks too, and
:class:`LearningRateSchedule` takes any ``torch.optim.lr_scheduler``.
"""

import math
import shutil
import warnings
from typing import Callable, Optional, Union

import torch
from pyro.poutine.messenger import Messenger
from torch import nn

from . import Callback, State
from ..errors import ConfigError
from ..handled import Handled

#: Burda et al. (2016)'s schedule: 3^i passes at 10^-3 * 10^(-i/7), i = 0..7 (3280 passes in all).
IWAE_STAGES = 8


def iwae_factor(epoch: int) -> float:
    """The IWAE paper's learning rate after ``epoch`` passes, relative to 10^-3 (the last stage after 3280)."""
    passes = 0
    for stage in range(IWAE_STAGES):
        passes += 3 ** stage
        if epoch < passes:
            return 10 ** (-stage / 7)
    return 10 ** (-(IWAE_STAGES - 1) / 7)


def _named_schedule(name: str, epochs: int) -> Optional[Callable]:
    """``optimizer -> scheduler`` stepped once per epoch, for a schedule of ``--lr-schedule``."""
    if name == "constant":
        return None
    if name == "cosine":  # from the set rate to zero over the run
        return lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "step":  # a tenth at half the run, a hundredth at three quarters
        milestones = sorted({max(1, epochs // 2), max(1, 3 * epochs // 4)})
        return lambda optimizer: torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    if name == "iwae":
        return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, iwae_factor)
    raise ConfigError(f"unknown lr-schedule {name!r}: choose constant, cosine, step or iwae")


class LearningRateSchedule(Callback):
    """A learning-rate schedule stepped at the end of every epoch.

    :param schedule: ``"cosine"``, ``"step"``, ``"iwae"`` (see :func:`_named_schedule` and
        :data:`IWAE_STAGES`), or a function of the optimizer returning any
        ``torch.optim.lr_scheduler`` scheduler. A compiled step whose optimizer update is in its graph
        traces the update again for each new rate: once per epoch.
    """

    def __init__(self, schedule: Union[str, Callable]):
        self.schedule = schedule
        self.scheduler = None
        self._saved: Optional[dict] = None

    def on_fit_start(self, state: State) -> None:
        make = _named_schedule(self.schedule, state.config.epochs) if isinstance(self.schedule, str) else self.schedule
        self.scheduler = None if make is None else make(state.optimizer)
        if self.scheduler is not None and self._saved is not None:
            self.scheduler.load_state_dict(self._saved)

    def on_step_end(self, state: State) -> None:
        if self.scheduler is not None and state.step % state.steps_per_epoch == 0:
            with warnings.catch_warnings():
                # The replayed step updates the parameters inside its graph, not through optimizer.step(),
                # which PyTorch's order check counts: the rates are right (tests/test_callbacks.py).
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()

    def state_dict(self) -> Optional[dict]:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, saved: dict) -> None:
        self._saved = saved


class EarlyStopping(Callback):
    """Stop when the test ELBO has not improved for ``patience`` evaluations, keeping the best checkpoint
    as ``best_checkpoint.pt`` beside ``checkpoint.pt`` (the weights of the best evaluation)."""

    def __init__(self, patience: int):
        if not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"early-stopping patience must be a positive integer, got {patience!r}")
        self.patience, self.best, self.waited = patience, -math.inf, 0

    def on_evaluation(self, state: State, record: dict) -> None:
        if record["test_elbo"] > self.best:
            self.best, self.waited = record["test_elbo"], 0
            shutil.copyfile(state.out / "checkpoint.pt", state.out / "best_checkpoint.pt")
            return
        self.waited += 1
        if self.waited >= self.patience:
            state.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, saved: dict) -> None:
        self.best, self.waited = saved["best"], saved["waited"]


class _LatentScale(Messenger):
    """Multiplies the scale of every latent (not observed) sample site by ``beta``, as ``poutine.scale`` would."""

    def __init__(self, beta: torch.Tensor):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]


class _WarmedUp(Handled):
    """A model whose ``model`` and ``guide`` run under :class:`_LatentScale` of its ``beta`` buffer
    (a buffer: a compiled step reads it as an input, so a new beta needs no new trace)."""

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.register_buffer("beta", torch.ones(()))

    def handler(self) -> Messenger:
        return _LatentScale(self.beta)


class KLWarmup(Callback):
    """A KL warm-up: beta on every latent site, in model and guide, rising linearly from 0 to 1 over
    ``epochs`` epochs, step by step (the ELBO's KL term weighted by beta, as in Sønderby et al. 2016).
    Evaluation reports the unscaled bound (:mod:`pyro_vae.evaluation`)."""

    def __init__(self, epochs: int):
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"kl-warmup must be a positive number of epochs, got {epochs!r}")
        self.epochs = epochs
        self.scored: Optional[_WarmedUp] = None

    def wrap(self, scored: nn.Module) -> nn.Module:
        """The module the objective runs, under the warm-up's beta."""
        self.scored = _WarmedUp(scored)
        return self.scored

    def _set(self, state: State) -> None:
        self.scored.beta.fill_(min(1.0, state.step / (self.epochs * state.steps_per_epoch)))

    def on_fit_start(self, state: State) -> None:
        self._set(state)

    def on_step_end(self, state: State) -> None:
        self._set(state)


def from_config(config) -> list:
    """The callbacks a configuration's ``lr_schedule``, ``early_stopping`` and ``kl_warmup`` ask for."""
    callbacks = []
    if config.lr_schedule != "constant":
        callbacks.append(LearningRateSchedule(config.lr_schedule))
    if config.early_stopping:
        callbacks.append(EarlyStopping(config.early_stopping))
    if config.kl_warmup:
        callbacks.append(KLWarmup(config.kl_warmup))
    return callbacks
