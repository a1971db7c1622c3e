"""The training loop: Auto-Encoding Variational Bayes for any Pyro model on any data.

:func:`fit` runs AEVB (Kingma & Welling 2013, Algorithm 1) on a ``torch.nn.Module`` whose ``model``
and ``guide`` are Pyro programs (``docs/model_contract.md``): minibatches of M datapoints, a
stochastic gradient of the minibatch objective, an Adam or Adagrad step. Read it top to bottom:
:func:`fit` resolves the settings and builds model and data; :func:`run` starts the processes and
holds the run folder's lock; :class:`Training` checks the model, then runs epochs of steps, each
``eval_every`` epochs an evaluation (:mod:`pyro_vae.report`) and a checkpoint
(:mod:`pyro_vae.runstate`), and ends with the final report. Callbacks
(:mod:`pyro_vae.callbacks`) are called at its start, after every step, after every evaluation
and at its end. The data and its minibatches are :mod:`pyro_vae.batches`'.

On SIGTERM or SIGINT (:mod:`pyro_vae.stopping`) training stops at the next step with a
checkpoint and raises :class:`~pyro_vae.TrainingInterrupted`; a callback setting
``state.should_stop`` stops it the same way, then makes the final report.
"""

import contextlib
import signal
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed, param_sites, recipes, report, rundir, runstate, torch_constants
from .batches import TRAIN_SUBSET_SEED, Data, Minibatches, data_arguments, num_train, prepare, subset
from .callbacks import State, check_callbacks
from .callbacks.schedules import from_config as scheduled_callbacks
from .config import TrainConfig
from .contract import check_model
from .datasets import ImageData, load_dataset
from .errors import ConfigError, TrainingError, TrainingInterrupted
from .evaluation import Estimate
from .objectives import OBJECTIVES, make_objective
from .step import ObjectiveLoss, TrainingStep, choose_compile, make_optimizer
from .stopping import StopSignals
from .tensor_data import TensorData

DEFAULT_RUNS = Path("runs")  # where a run without an ``out`` gets a fresh folder
SYNC_EVERY = 50  # steps between reads of the loss on the host (progress, non-finite check, signals)
#: :class:`TrainConfig` fields that describe the data and the network rather than the training.
_NOT_SETTINGS = {"dataset", "model", "model_args", "latent_dim", "hidden_dims", "activation", "likelihood",
                 "init_std", "out"}
#: The training settings :func:`fit` takes as keywords.
SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name not in _NOT_SETTINGS)


@dataclass
class Run:
    """The result of training: the trained model, its data and its figures."""

    model: nn.Module
    config: TrainConfig
    data: Data
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    out: Optional[Path] = None
    #: The final importance-sampled test log p(x), with its per-datapoint values (for
    #: :func:`pyro_vae.evaluation.paired_difference`); ``None`` on processes other than rank 0.
    test_log_likelihood: Optional[Estimate] = None


def fit(model: Union[nn.Module, str], data: Union[Data, str], *, model_args: Optional[dict] = None, out=None,
        overwrite: bool = False, progress: bool = True, callbacks: Sequence = (), **settings) -> Run:
    """Train ``model`` on ``data`` with AEVB and write the run directory ``out``.

    :param model: a ``torch.nn.Module`` whose ``model`` and ``guide`` are Pyro programs taking a batch
        and ``num_data=None`` (``docs/model_contract.md``), or a factory by name (``"vae"``) or import
        path (``"package.module:factory"``), built with ``model_args``, the data's shape and the
        network settings (``latent_dim``, ``hidden_dims``, ...; a built-in data set's defaults).
    :param data: an :class:`~pyro_vae.ImageData` or :class:`~pyro_vae.TensorData`, a built-in data
        set's name (``"mnist"``, ``"frey-face"``, read from ``data_dir``) or a ``.npz``/``.pt`` file.
    :param out: the run directory (default: a fresh folder under ``runs/``); one that holds a run is
        refused unless ``overwrite``, which deletes that run's files first.
    :param callbacks: objects with any of the hooks of :mod:`pyro_vae.callbacks`.
    :param settings: the fields of :class:`~pyro_vae.TrainConfig` (:data:`SETTINGS`, and for a factory
        the network settings): ``epochs``, ``batch_size``, ``objective``, ``particles``, ``lr``,
        ``lr_schedule``, ``early_stopping``, ``kl_warmup``, ``compile``, ``train_size``,
        ``test_size``, ``data_dir``, ``validate``, ...; unset ones take the data set's defaults, as
        ``pyro-vae train`` does.
    """
    in_memory = isinstance(data, (ImageData, TensorData))
    factory = isinstance(model, str)
    config = _config(model, data, model_args, out, settings, in_memory, factory)
    callbacks = check_callbacks(callbacks)
    claim_folder(config, overwrite)
    model, data, recipe = build(model, data, config)
    return run(model, data, config, recipe, None, in_memory=in_memory, progress=progress, overwrite=overwrite,
               callbacks=callbacks)


def build(model: Union[nn.Module, str], data: Union[Data, str], config: TrainConfig) -> tuple[nn.Module, Data, dict]:
    """The model (built by its factory, with the weights of ``config.seed``), the data (loaded if named, with
    its ``train_size`` subset) and the model's recipe, for a resolved ``config``."""
    if isinstance(data, str):
        data = load_dataset(config.dataset, config.data_dir)
    data = subset(data, "train", config.train_size, TRAIN_SUBSET_SEED)
    if isinstance(model, str) and config.likelihood is None and config.is_file:  # Bernoulli for binary images
        config.likelihood = "bernoulli" if isinstance(data, ImageData) and data.is_binary() else "gaussian"
    pyro.set_rng_seed(config.seed)  # the initial weights are the seed's
    if not isinstance(model, str):
        recipe = getattr(model, "recipe", None)
        if recipe is not None:  # the user's own factory: trusted when its runs are opened
            recipes.name_factory(recipe["factory"])
        return model, data, recipe
    common = data_arguments(data)
    common.update({key: getattr(config, key) for key in ("latent_dim", "hidden_dims", "activation", "likelihood",
                                                         "init_std")})
    recipe, module = recipes.make(config.model, common, config.model_args)
    return module, data, recipe


def _config(model, data, model_args, out, settings: dict, in_memory: bool, factory: bool) -> TrainConfig:
    """The run's configuration, resolved once (:meth:`TrainConfig.resolved`) as for ``pyro-vae train``."""
    known = set(SETTINGS) | ({"latent_dim", "hidden_dims", "activation", "likelihood", "init_std"} if factory else set())
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"fit() takes no setting {', '.join(unknown)}: the settings are {', '.join(sorted(known))}")
    if model_args and not factory:
        raise ConfigError("model_args are for a factory named by import path; this model is built already")
    name = model if factory else f"{type(model).__module__}:{type(model).__qualname__}"
    dataset = data.name if in_memory else str(data)
    config = TrainConfig(dataset=dataset, model=name, model_args=dict(model_args or {}),
                         out=None if out is None else str(out), **settings)
    return config.resolved(in_memory=in_memory, factory=factory)


def fresh_run_folder(config: TrainConfig) -> Path:
    """A new folder ``runs/DATASET-MODEL-DATE-TIME`` for a run without an ``out``."""
    return rundir.fresh_folder(DEFAULT_RUNS, f"{Path(config.dataset).stem}-{config.model.rpartition(':')[2]}")


def claim_folder(config: TrainConfig, overwrite: bool) -> None:
    """Name a fresh run folder if ``config.out`` is ``None``; refuse one that holds a run unless ``overwrite``.
    Called before any data is loaded, by whoever starts a new run with :func:`run`."""
    if config.out is None:
        config.out = str(fresh_run_folder(config).resolve())
    if distributed.launched_rank() == 0:  # the other processes start once rank 0 may have written
        rundir.check_new_run(config.out, overwrite)


def run(model: nn.Module, data: Data, config: TrainConfig, recipe: Optional[dict], checkpoint: Optional[dict], *,
        in_memory: bool = False, progress: bool = True, overwrite: bool = False, callbacks: Sequence = ()) -> Run:
    """Train ``model`` as ``config`` says, from scratch (``checkpoint=None``, after :func:`claim_folder` and with
    the global random stream seeded by ``config.seed`` before the model was built) or from ``checkpoint``, in
    the processes ``torchrun`` started."""
    out = Path(config.out)
    processes, device = distributed.start(config.device, config.batch_size)
    if device.type == "cpu":  # docs/upstream.md#sleefs-masked-loads-in-pytorchs-avx-512-kernels
        torch_constants.map_torch_constants()
    try:
        with contextlib.ExitStack() as stack:
            if processes.main:
                stack.enter_context(rundir.RunLock(out))
                if checkpoint is None and overwrite:
                    rundir.clear_run(out)
            training = Training(model, data, config, recipe, in_memory, processes, device, out,
                                [*scheduled_callbacks(config), *callbacks])
            return training.run(checkpoint, progress)
    finally:
        distributed.stop(processes)


class Training:
    """One run's training: the model checked, the objective, optimizer and step built, then epochs."""

    def __init__(self, model: nn.Module, data: Data, config: TrainConfig, recipe: Optional[dict], in_memory: bool,
                 processes: distributed.Processes, device: torch.device, out: Path, callbacks: list):
        self.model, self.config, self.processes, self.device, self.out = model.to(device), config, processes, device, out
        self.callbacks = callbacks
        if config.objective is None:
            config.objective = getattr(model, "default_objective", "meanfield")
        self.objective = make_objective(config.objective, config.particles)
        traced_by_pyro = OBJECTIVES[config.objective].traced_by_pyro
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.prepared = prepare(self.model, data, config, device)
        # A graph is traced for one batch shape: a traced objective drops a smaller last batch.
        self.batches = Minibatches(self.model, self.prepared, config.batch_size, self.generator, processes.share,
                                   drop_last=traced_by_pyro)
        self._check_model()
        self.scored = self._scored()
        self.optimizer = make_optimizer(config.optimizer, [p for p in self.model.parameters() if p.requires_grad],
                                        config.lr, config.weight_decay)
        self.compile = "eager" if traced_by_pyro and config.compile == "auto" \
            else choose_compile(config.compile, config.epochs * self.batches.steps_per_epoch)
        self.step_fn = TrainingStep(processes.wrap(ObjectiveLoss(self.scored, self.objective, config.precision), device),
                                    self.optimizer, config.clip_grad_norm, compile=self.compile,
                                    validate=config.validate)
        self.recipe, self.in_memory = recipes.recipe_of(self.model, recipe), in_memory
        self.state = State(self.model, self.optimizer, config, out, self.batches.steps_per_epoch, scored=self.scored,
                           main=processes.main, data=self.prepared.data)

    def _check_model(self) -> None:
        """The contract, on a tiny batch (:mod:`pyro_vae.contract`), and the model's ``pyro.param`` sites
        adopted; both draw from their own random stream, so training draws what it would without them."""
        part, probe = self.prepared.parts[0], self.prepared.probe
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            check_model(self.model, probe, self.config.objective, self.objective, part.size,
                        allow_mc_kl=self.config.allow_mc_kl, precision=self.config.precision,
                        eval_particles=self.config.eval_particles)
            param_sites.adopt(self.model, probe, {"num_data": part.size})

    def _scored(self) -> nn.Module:
        """What the step and the evaluations run: the model with its ``pyro.param`` sites, under what callbacks
        wrap it in (a KL warm-up's beta), checked once on the tiny batch where a callback wrapped it."""
        scored = param_sites.served(self.model)
        wrappers = [callback.wrap for callback in self.callbacks if callable(getattr(callback, "wrap", None))]
        for wrap in wrappers:
            scored = wrap(scored)
        if wrappers:  # the objective may refuse what a wrapper adds (a beta where particles are weighed)
            with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []), \
                    torch.no_grad():
                self.objective.differentiable_loss(scored.model, scored.guide, *self.prepared.probe,
                                                   num_data=self.prepared.parts[0].size)
        return scored

    def run(self, checkpoint: Optional[dict], progress: bool) -> Run:
        """Train from scratch or from ``checkpoint``, then make the final report."""
        position = self._start(checkpoint)
        config, state = self.config, self.state
        self.started = time.perf_counter() - state.seconds
        bar = tqdm(total=config.epochs * state.steps_per_epoch, initial=state.step, unit="step",
                   desc=f"{self.prepared.data.name} {config.model.rpartition(':')[2]} {config.objective}",
                   disable=not (progress and self.processes.main))
        # A private parameter store: the networks register in it under their own names (Pyro's JIT
        # objectives read parameters from it) without touching the caller's global store.
        with pyro.get_param_store().scope(), pyro.validation_enabled(config.validate), StopSignals() as signals, bar:
            self._notify("on_fit_start")
            while state.epoch <= config.epochs and not state.should_stop:
                self._epoch(position, signals, bar)
                position = None
        if hasattr(self.model, param_sites.ATTRIBUTE):
            self.model.pyro_params.install()  # in Pyro's param store, as SVI leaves them
        return self._finish(progress, time.perf_counter() - self.started)

    def _notify(self, hook: str, *args) -> None:
        """Call ``hook`` of every callback that has it, in order (:mod:`pyro_vae.callbacks`)."""
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self.state, *args)

    def _start(self, checkpoint: Optional[dict]) -> Optional[dict]:
        """Restore a checkpoint, or record the new run's configuration; returns where a stopped epoch was."""
        self.facts = runstate.run_facts(self.config, self.recipe, self.in_memory, self.device, self.processes,
                                        num_train(self.prepared.data))
        self.state.num_data = self.facts["num_data"]
        if checkpoint is not None:
            return runstate.restore(checkpoint, self.state, self.generator, self.processes, self.callbacks)
        runstate.begin(self.out, self.facts, self.config, self.processes, self.device)
        return None

    def _epoch(self, position: Optional[dict], signals: StopSignals, bar) -> None:
        """The steps of epoch ``state.epoch`` (from a stopped epoch's ``position``), its evaluation and checkpoint."""
        state = self.state
        self.batches.start_epoch(position)
        total_loss = torch.zeros((), device=self.device) + (position["total_loss"] if position else 0.0)
        first_bad_step = torch.zeros((), dtype=torch.long, device=self.device)
        for step in range((position["step"] if position else 0) + 1, state.steps_per_epoch + 1):
            batches, drawn = self.batches.draw()
            state.loss, finite = self.step_fn(batches)
            state.grad_norm = self.step_fn.grad_norm
            total_loss += state.loss
            state.step, state.samples_seen = state.step + 1, state.samples_seen + drawn
            state.seconds = time.perf_counter() - self.started
            # Recorded on the device, read at the next sync: no host sync per step.
            first_bad_step = torch.where((first_bad_step == 0) & ~finite, step, first_bad_step)
            bar.update()
            self._notify("on_step_end")
            if step < state.steps_per_epoch and self._stop_inside_epoch(step, first_bad_step, total_loss, signals, bar):
                return
        self._refuse_bad_step(first_bad_step)
        self._show_objective(bar, total_loss, state.steps_per_epoch)
        self._evaluate_and_save(signals, bar)

    def _stop_inside_epoch(self, step: int, first_bad_step: torch.Tensor, total_loss: torch.Tensor,
                           signals: StopSignals, bar) -> bool:
        """After a step inside an epoch: every :data:`SYNC_EVERY` steps refuse a non-finite step and show the
        objective; save a checkpoint when one is due, a signal or a callback asks to stop (then stop)."""
        state, config, processes = self.state, self.config, self.processes
        saving = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
        at_sync = step % SYNC_EVERY == 0 or saving
        if at_sync:  # and before any checkpoint: a bad step's weights are never saved
            self._refuse_bad_step(first_bad_step)
            self._show_objective(bar, total_loss, step)
        # Distributed, a stop is agreed on at the syncs only: a callback's stop waits there, not lost.
        agreed = at_sync or not processes.distributed
        signal_number = self._stop_requested(signals) if agreed else 0
        callback_stop = self._callbacks_stop() if agreed else False
        stop = signal_number or callback_stop
        if stop and not at_sync and processes.max(first_bad_step):
            return False  # the sync at the end of the epoch reports the bad step
        if stop or saving:
            self._save({"step": step, **self.batches.state(), "total_loss": total_loss.item()})
        if signal_number:
            raise self._interrupted(signal_number, f"epoch {state.epoch}, after step {step} of {state.steps_per_epoch}")
        return callback_stop

    def _show_objective(self, bar, total_loss: torch.Tensor, steps: int) -> None:
        """The epoch's mean objective so far, per datapoint, on the progress bar (a host read)."""
        bar.set_postfix(epoch=self.state.epoch, objective=f"{-total_loss.item() / steps / self.facts['num_data']:.2f}")

    def _refuse_bad_step(self, first_bad_step: torch.Tensor) -> None:
        bad_step = self.processes.max(first_bad_step)
        if bad_step:
            raise TrainingError(f"the loss or its gradient became non-finite in epoch {self.state.epoch} at step "
                                f"{bad_step}: lower --lr or set --clip-grad-norm; the last good checkpoint is kept "
                                f"in {self.out}")

    def _stop_requested(self, signals: StopSignals) -> int:
        """The signal that asked every process to stop, or 0 (a sync across processes when distributed)."""
        if self.processes.distributed:
            return self.processes.max(torch.tensor(signals.signal or 0))
        return signals.signal or 0

    def _callbacks_stop(self) -> bool:
        """Whether a callback asked to stop, on any process (a sync across processes when distributed):
        ``state.should_stop`` on every process."""
        if self.processes.distributed:
            self.state.should_stop = bool(self.processes.max(torch.tensor(int(self.state.should_stop))))
        return self.state.should_stop

    def _evaluate_and_save(self, signals: StopSignals, bar) -> None:
        """After an epoch: evaluate every ``eval_every`` epochs and at the last, checkpoint, tell the callbacks."""
        state, config = self.state, self.config
        evaluated = state.epoch % config.eval_every == 0 or state.epoch == config.epochs
        record = None
        state.seconds = time.perf_counter() - self.started
        if self.processes.main and evaluated:
            record = report.record(self.model, self.scored, self.prepared, config, state, self.out, self.compile)
            bar.set_postfix(epoch=state.epoch, train=f"{record['train_elbo']:.2f}", test=f"{record['test_elbo']:.2f}")
        signal_number = self._stop_requested(signals)
        if evaluated or signal_number:
            self._save(None)
        if record is not None:
            self._notify("on_evaluation", record)
        self._callbacks_stop()  # a callback's stop is every process's
        if signal_number:
            raise self._interrupted(signal_number, f"the end of epoch {state.epoch}")
        state.epoch += 1

    def _save(self, position: Optional[dict]) -> None:
        runstate.save(self.out / "checkpoint.pt", self.state, self.facts, self.generator, self.processes, position,
                      self.callbacks)

    def _interrupted(self, signal_number: int, where: str) -> TrainingInterrupted:
        return TrainingInterrupted(f"stopped by {signal.Signals(signal_number).name} at {where}; the checkpoint is "
                                   f"saved: continue with 'pyro-vae train --resume {self.out}'", signal_number)

    def _finish(self, progress: bool, seconds: float) -> Run:
        """The final report on the main process (:mod:`pyro_vae.report`), then the callbacks' end."""
        state, config = self.state, self.config
        if not self.processes.main:
            return Run(self.model, config, self.prepared.data, state.history, {}, self.out)
        epochs = max(1, min(state.epoch - 1, config.epochs))
        facts = {"samples_seen": state.samples_seen, "seconds": seconds, "seconds_per_epoch": seconds / epochs,
                 "stopped_early": state.epoch <= config.epochs,
                 "environment": {**runstate.environment(self.device), "training_step": self.step_fn.mode}}
        state.metrics, test_ll = report.final(self.model, self.scored, self.prepared, state.history, config,
                                              self.recipe, self.out, progress, self.compile, facts)
        self._notify("on_fit_end")
        return Run(self.model, config, self.prepared.data, state.history, state.metrics, self.out, test_ll)
