"""The training engine: Auto-Encoding Variational Bayes for any Pyro model on any data.

:func:`fit` runs the AEVB loop (Kingma & Welling 2013, algorithm 1) on a ``torch.nn.Module``
whose ``model`` and ``guide`` are Pyro programs (``docs/model_contract.md``,
:func:`pyro_vae.contract.check_model`): minibatches of M datapoints, a stochastic gradient of the
minibatch objective, and an Adam or Adagrad step. After every ``eval_every`` epochs it estimates
the train and test ELBO per datapoint, appends a record to the history and saves a checkpoint; at
the end it estimates the test log-likelihood by importance sampling and draws the pictures the
model can draw.

The model's optional ``labels`` attribute decides what it is fed (:func:`training_parts`):
``"none"`` (default) images only, ``"all"`` images with their labels, ``"some"`` two parts, the
unlabelled images and a class-balanced labelled subset of ``model.labels_per_class`` images per
class, each counted ``model.labelled_weight`` times; each step draws a minibatch from every part
and sums their losses, each scaled to its part's size. Under ``torchrun`` the steps are shared
among processes (:mod:`pyro_vae.distributed`).

A run directory (:mod:`pyro_vae.rundir`) holds ``checkpoint.pt`` (model and optimizer state,
history, every process's random states, the model's recipe: enough to resume exactly or to
evaluate), ``config.json`` (the configuration, the recipe, versions and device, written when the
run starts), ``history.json`` (``epoch``, ``samples_seen``, ``train_elbo``, ``test_elbo`` in nats per
datapoint, ``seconds``), ``metrics.json`` (the final figures) and the pictures.

The train ELBO is estimated on a fixed subset of at most :data:`TRAIN_EVAL_SIZE` training
images, the test ELBO on the whole test set, each with one draw of z per datapoint.
"""

import contextlib
import platform
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed, evaluation, param_sites, plots, recipes, rundir
from .checkpoint import save_checkpoint, write_json
from .config import TrainConfig, resolve_device
from .contract import check_model
from .datasets import (ImageData, IndexCycle, binarize_once, draw_batch, labelled_subset, load_dataset,
                       prepare_binarization)
from .errors import ConfigError, TrainingError, TrainingInterrupted
from .likelihoods import LIKELIHOODS
from .objectives import make_objective, validation
from .step import ObjectiveLoss, TrainingStep, choose_compile, make_optimizer
from .stopping import StopSignals

TRAIN_EVAL_SIZE = 10_000
TRAIN_EVAL_SEED = 0
LABELLED_SEED = 0
TRAIN_SUBSET_SEED = 0
DEFAULT_RUNS = Path("runs")  # where a run without an ``out`` gets a fresh folder
#: :class:`TrainConfig` fields that describe the data and the network, not the training: not settings of :func:`fit`.
_NOT_SETTINGS = {"dataset", "data_dir", "model", "model_args", "train_size", "latent_dim", "hidden_dims", "activation",
                 "likelihood", "init_std", "out"}
SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name not in _NOT_SETTINGS)


@dataclass
class Run:
    """The result of training: the trained model, its data and its figures."""

    model: nn.Module
    config: TrainConfig
    data: ImageData
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    out: Optional[Path] = None
    #: The final importance-sampled test log p(x), with its per-datapoint values (for
    #: :func:`pyro_vae.evaluation.paired_difference`); ``None`` on processes other than rank 0.
    test_log_likelihood: Optional[evaluation.Estimate] = None


def fit(model: Union[nn.Module, str], data: Union[ImageData, str], *, model_args: Optional[dict] = None,
        out=None, overwrite: bool = False, progress: bool = True, **settings) -> Run:
    """Train ``model`` on ``data`` with AEVB and write the run directory ``out``.

    :param model: a ``torch.nn.Module`` whose ``model`` and ``guide`` are Pyro programs taking a batch
        and ``num_data=None`` (``docs/model_contract.md``), or a factory by name or import path
        (``"package.module:factory"``), called with ``model_args`` and the data's shape; a run of a
        factory can be rebuilt by :func:`pyro_vae.load_run` from any process.
    :param data: an :class:`~pyro_vae.ImageData` (``ImageData.from_arrays``, ``.from_file``,
        ``.from_datasets``), a built-in data set's name (``"mnist"``, ``"frey-face"``) or a path of a
        ``.npz``/``.pt`` file.
    :param out: the run directory (default: a fresh folder under ``runs/``); one that holds a run is
        refused unless ``overwrite``, which deletes that run's files first.
    :param settings: the training settings of :class:`~pyro_vae.TrainConfig` (:data:`SETTINGS`):
        ``objective`` (default: the model's ``default_objective``, else ``meanfield``), ``particles``,
        ``epochs`` (10), ``batch_size`` (100), ``optimizer``, ``lr``, ``weight_decay``,
        ``clip_grad_norm``, ``compile`` (``"auto"``: :func:`pyro_vae.step.choose_compile`),
        ``precision`` (``"fp32"``, or ``"bf16"``: :mod:`pyro_vae.precision`), ``seed``, ``device``,
        ``eval_every``, ``eval_particles``,
        ``binarize`` (``"dynamic"`` draws every training batch from Bernoulli(x); default ``"none"``),
        ``checkpoint_every``, ``allow_mc_kl``, ``validate`` (Pyro's argument and support checks at every
        step, not only in the contract check before the first).

    SIGTERM or SIGINT stops training at the next step with a checkpoint from which
    :func:`pyro_vae.resume` continues exactly, and raises :class:`~pyro_vae.TrainingInterrupted`.
    """
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"fit() takes no setting {', '.join(unknown)}: the settings are {', '.join(SETTINGS)}")
    in_memory = isinstance(data, ImageData)
    dataset = data.name if in_memory else str(Path(data).resolve()) if Path(data).suffix in (".npz", ".pt") else data
    config = TrainConfig(dataset=dataset, **{"epochs": 10, "binarize": "none", **settings})
    config.model = model if isinstance(model, str) else f"{type(model).__module__}:{type(model).__qualname__}"
    config.model_args = dict(model_args or {})
    config.out = str(out) if out is not None else None
    config.check_settings()
    claim_folder(config, overwrite)
    if not in_memory:
        data = load_dataset(dataset)
    if isinstance(model, str):
        recipes.name_factory(model)  # the user's own factory: trusted when its runs are opened
        model_recipe = recipes.recipe(model, data_arguments(data), model_args)
        pyro.set_rng_seed(config.seed)  # the initial weights are the seed's, as for pyro-vae train
        model = recipes.build(model_recipe)
    elif model_args:
        raise ConfigError("model_args are for a factory named by import path; this model is built already")
    else:
        model_recipe = getattr(model, "recipe", None)
        if model_recipe is not None:  # the user's own factory: trusted when its runs are opened
            recipes.name_factory(model_recipe["factory"])
        pyro.set_rng_seed(config.seed)
    return run(model, data, config, model_recipe, None, in_memory=in_memory, progress=progress, overwrite=overwrite)


def data_arguments(data: ImageData) -> dict:
    """The common factory arguments that the data decides (:data:`pyro_vae.recipes.COMMON_ARGUMENTS`)."""
    return {"data_dim": data.data_dim, "image_shape": list(data.image_shape), "num_data": len(data.train),
            "num_classes": data.num_classes}


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


def run(model: nn.Module, data: ImageData, config: TrainConfig, model_recipe: Optional[dict],
        checkpoint: Optional[dict], *, in_memory: bool = False, progress: bool = True, overwrite: bool = False) -> Run:
    """Train ``model`` as ``config`` says, from scratch (``checkpoint=None``, after :func:`claim_folder` and with
    the global random stream seeded by ``config.seed`` before the model was built) or from ``checkpoint``, in
    the processes ``torchrun`` started."""
    out = Path(config.out)
    processes, device = distributed.start(resolve_device(config.device), config.batch_size)
    try:
        with contextlib.ExitStack() as stack:
            if processes.main:
                stack.enter_context(rundir.RunLock(out))
                if checkpoint is None and overwrite:
                    rundir.clear_run(out)
            return _train(model, data, config, model_recipe, checkpoint, in_memory, progress, processes, device, out)
    finally:
        distributed.stop(processes)


def subset(data: ImageData, train_size: Optional[int]) -> ImageData:
    """``train_size`` training images drawn once with :data:`TRAIN_SUBSET_SEED` (all of them for ``None``)."""
    if train_size is None:
        return data
    if train_size > len(data.train):
        raise ConfigError(f"train-size {train_size} exceeds the {len(data.train)} training images of "
                          f"{data.name}: pass --train-size {len(data.train)} or less")
    chosen = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(TRAIN_SUBSET_SEED))
    chosen = chosen[:train_size].sort().values
    labels = None if data.train_labels is None else data.train_labels[chosen]
    return replace(data, train=data.train[chosen], train_labels=labels)


def prepare(data: ImageData, config: TrainConfig, device: torch.device) -> tuple[ImageData, bool, tuple]:
    """The data as the configuration asks: binarized, on the device, checked against a built-in likelihood.

    Returns the data, whether training batches are binarized dynamically, and the fixed subset
    of training images (and their labels, or ``None``) on which the train ELBO is estimated.
    """
    data, dynamic = prepare_binarization(data.to(device), config.binarize)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(TRAIN_EVAL_SEED))
    chosen = order[:TRAIN_EVAL_SIZE].to(device)
    train_eval_x = data.train[chosen]
    if dynamic:
        train_eval_x = binarize_once(train_eval_x)
    train_eval = (train_eval_x, None if data.train_labels is None else data.train_labels[chosen])
    if config.likelihood is not None:
        likelihood = LIKELIHOODS[config.likelihood]
        if not dynamic:
            likelihood.check_support(data.train, f"the {data.name} training data")
        likelihood.check_support(data.test, f"the {data.name} test data")
    if config.batch_size > len(data.train):
        raise ConfigError(f"batch-size {config.batch_size} exceeds the {len(data.train)} training images: "
                          f"pass --batch-size {len(data.train)} or less")
    return data, dynamic, train_eval


def labels_of(model: nn.Module) -> str:
    """What the model takes besides images: ``"none"``, ``"all"`` or ``"some"`` (its ``labels``, default ``"none"``)."""
    labels = getattr(model, "labels", "none")
    if labels not in ("none", "all", "some"):
        raise ConfigError(f"{type(model).__name__}.labels is {labels!r}: it must be 'none', 'all' or 'some'")
    return labels


def inputs(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple:
    """The arguments of ``model`` and ``guide`` for images ``x`` with labels ``y`` (the model's ``inputs``
    if it has one; else ``(x,)``, or ``(x, y)`` for a model whose ``labels`` are ``"all"``)."""
    if hasattr(model, "inputs"):
        return model.inputs(x, y)
    return (x, y) if labels_of(model) == "all" else (x,)


def training_parts(model: nn.Module, data: ImageData) -> list[tuple]:
    """The parts of the training data as ``(images, labels or None, size)``, the largest first.

    ``size`` is how many datapoints the part counts as in the objective (the ``num_data`` its
    minibatches are scaled to): its number of images, times ``labelled_weight`` for the labelled
    part of a semi-supervised model. Kingma et al.'s objective sums the bounds of all images, each
    counted once (``labelled_weight = 1``); ``labelled_weight = N_unlabelled / N_labelled`` gives
    both parts equal weight. The labelled subset is drawn with :data:`LABELLED_SEED`, the same for
    every run.
    """
    labels = labels_of(model)
    if labels == "none":
        return [(data.train, None, len(data.train))]
    if data.train_labels is None:
        raise ConfigError(f"{type(model).__name__} needs class labels, which {data.name} does not have: use data "
                          "with labels (--dataset mnist, or train_labels in a data file)")
    if labels == "all":
        return [(data.train, data.train_labels, len(data.train))]
    per_class = getattr(model, "labels_per_class", None)
    if not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"{type(model).__name__} has labels = 'some' but no labels_per_class (a positive integer): "
                          "set it to the number of labelled images per class")
    labelled = labelled_subset(data.train_labels, per_class, LABELLED_SEED).to(data.train.device)
    unlabelled = torch.ones(len(data.train), dtype=torch.bool, device=data.train.device)
    unlabelled[labelled] = False
    weight = getattr(model, "labelled_weight", 1.0)
    return [(data.train[unlabelled], None, int(unlabelled.sum())),
            (data.train[labelled], data.train_labels[labelled], len(labelled) * weight)]


def environment(device: torch.device) -> dict:
    """Versions and device, recorded with every run for reproducibility."""
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
            "torchvision": torchvision.__version__, "device": str(device), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _train(model: nn.Module, data: ImageData, config: TrainConfig, model_recipe: Optional[dict],
           checkpoint: Optional[dict], in_memory: bool, progress: bool, processes: distributed.Processes,
           device: torch.device, out: Path) -> Run:
    # The global random stream (Pyro's draws) was seeded with config.seed before the model was built
    # (:func:`fit`, :func:`pyro_vae.train`) and goes on from there; a resumed run restores it below.
    data, dynamic, train_eval = prepare(data, config, device)
    model = model.to(device)
    parts = training_parts(model, data)
    if config.objective is None:
        config.objective = getattr(model, "default_objective", "meanfield")
    objective = make_objective(config.objective, config.particles)
    probe_x, probe_y, part_size = parts[0][0][:2], None if parts[0][1] is None else parts[0][1][:2], parts[0][2]
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        # The check draws from its own stream: training draws what it would draw without it.
        probe = inputs(model, binarize_once(probe_x) if dynamic else probe_x, probe_y)
        check_model(model, probe, config.objective, objective, part_size, allow_mc_kl=config.allow_mc_kl,
                    precision=config.precision)
        param_sites.adopt(model, probe, {"num_data": part_size})  # pyro.param sites, trained as SVI trains them
    scored = param_sites.served(model)  # what the step and the evaluations run
    optimizer = make_optimizer(config.optimizer, [p for p in model.parameters() if p.requires_grad], config.lr,
                               config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    num_data = len(data.train)
    # A compiled objective is traced for one batch shape: it drops a smaller last batch.
    main_batches = IndexCycle(len(parts[0][0]), config.batch_size, generator, config.objective.startswith("jit"))
    steps_per_epoch = main_batches.batches_per_pass
    # "auto" compiles by the run's length; Pyro's JIT objectives are compiled by TorchScript already.
    compile_mode = "none" if config.compile == "auto" and config.objective.startswith("jit") \
        else choose_compile(config.compile, config.epochs * steps_per_epoch)
    step_fn = TrainingStep(processes.wrap(ObjectiveLoss(scored, objective, config.precision), device), optimizer,
                           config.clip_grad_norm, compile=compile_mode)
    model_recipe = recipes.recipe_of(model, model_recipe)
    history: list[dict] = []
    first_epoch, samples_seen, seconds_before = 1, 0, 0.0
    position = None
    if checkpoint is not None:
        first_epoch, samples_seen, history = checkpoint["epoch"] + 1, checkpoint["samples_seen"], checkpoint["history"]
        seconds_before = checkpoint.get("seconds", history[-1]["seconds"] if history else 0.0)
        position = checkpoint.get("position")
        _restore(checkpoint, model, optimizer, generator, device, processes)
    elif processes.main:
        write_json(out / "config.json", {"config": asdict(config), "recipe": model_recipe,
                                         "environment": environment(device)})
    if checkpoint is None and processes.rank > 0:  # its own draws of z; the data generator stays shared
        pyro.set_rng_seed(config.seed + 7919 * processes.rank + 1)
    start_time = time.perf_counter() - seconds_before

    def save(epoch: int, step: int = 0, others: Sequence[IndexCycle] = (), total_loss: float = 0.0) -> None:
        """A checkpoint after ``step`` steps of epoch ``epoch + 1`` (0: at the end of epoch ``epoch``)."""
        random_states = processes.gather({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device)
                                          if device.type == "cuda" else torch.zeros(0, dtype=torch.uint8)})
        if not processes.main:
            return
        state = {"config": asdict(config), "recipe": model_recipe, "data_in_memory": in_memory,
                 "data_dim": data.data_dim, "image_shape": list(data.image_shape), "num_data": num_data,
                 "device_type": device.type, "world_size": processes.world_size,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch, "samples_seen": samples_seen, "history": history,
                 "seconds": time.perf_counter() - start_time,
                 "rng": {**random_states[0], "generator": generator.get_state(), "ranks": random_states}}
        if step:
            state["position"] = {"step": step, "main": main_batches.state(), "others": [o.state() for o in others],
                                 "total_loss": total_loss}
        save_checkpoint(out / "checkpoint.pt", state)

    def batch(part: tuple, index: torch.Tensor) -> tuple[tuple, int]:
        """This process's share of a minibatch of a data part, as (model arguments, part size)."""
        x, y, size = part
        x_batch = draw_batch(x, index, generator, dynamic)  # every process draws the whole minibatch
        if processes.distributed:
            mine = processes.shard(torch.arange(len(index), device=device))
            x_batch, index = x_batch[mine], index[mine]
        return (x_batch,) if y is None else (x_batch, y[index]), size

    def stop_requested(signals: StopSignals) -> int:
        """The signal that asked every process to stop, or 0 (a sync across processes when distributed)."""
        return processes.max(torch.tensor(signals.signal or 0)) if processes.distributed else (signals.signal or 0)

    # A private parameter store: the networks register in it under their own names (Pyro's JIT
    # objectives read parameters from it) without touching the caller's global store.
    # Pyro's validation checks (on by default) run once in check_model; the steps skip them unless asked.
    with pyro.get_param_store().scope(), validation(config.validate), StopSignals() as signals, \
            tqdm(total=config.epochs * steps_per_epoch, initial=(first_epoch - 1) * steps_per_epoch,
                 desc=f"{data.name} {config.model.rpartition(':')[2]} {config.objective}", unit="step",
                 disable=not (progress and processes.main)) as bar:
        for epoch in range(first_epoch, config.epochs + 1):
            total_loss = torch.zeros((), device=device)
            first_bad_step = torch.zeros((), dtype=torch.long, device=device)
            # The first part sets the epoch; the others (labelled images) are cycled alongside it.
            others = [IndexCycle(len(part[0]), min(config.batch_size, len(part[0])), generator) for part in parts[1:]]
            first_step = 0
            if position is not None:  # continue the epoch a stopped run was in
                first_step = position["step"]
                main_batches.restore(position["main"])
                for cycle, state in zip(others, position["others"]):
                    cycle.restore(state)
                total_loss += position["total_loss"]
                bar.update(first_step)
                position = None
            for step in range(first_step + 1, steps_per_epoch + 1):
                index = next(main_batches)
                batches = [batch(parts[0], index)] + [batch(part, next(cycle)) for part, cycle in zip(parts[1:], others)]
                loss, finite = step_fn(batches)
                total_loss += loss
                samples_seen += len(index) + sum(min(config.batch_size, len(part[0])) for part in parts[1:])
                # Recorded on the device, read at the next sync: no host sync per step.
                first_bad_step = torch.where((first_bad_step == 0) & ~finite, step, first_bad_step)
                bar.update()
                saving = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
                at_sync = step % 50 == 0 or step == steps_per_epoch or saving
                if at_sync:  # and before any checkpoint: a bad step's weights are never saved
                    bad_step = processes.max(first_bad_step)
                    if bad_step:
                        raise TrainingError(
                            f"the loss or its gradient became non-finite in epoch {epoch} at step {bad_step}: "
                            f"lower --lr or set --clip-grad-norm; the last good checkpoint is kept in {out}")
                    bar.set_postfix(epoch=epoch, objective=f"{-total_loss.item() / step / num_data:.2f}")
                if step < steps_per_epoch:
                    stop = stop_requested(signals) if at_sync or not processes.distributed else 0
                    if stop and not at_sync and processes.max(first_bad_step):
                        continue  # the sync at the end of the epoch reports the bad step
                    if stop or saving:
                        save(epoch - 1, step, others, total_loss.item())
                    if stop:
                        raise _interrupted(stop, out, f"epoch {epoch}, after step {step} of {steps_per_epoch}")
            evaluated = epoch % config.eval_every == 0 or epoch == config.epochs
            if processes.main and evaluated:
                record = {"epoch": epoch, "samples_seen": samples_seen,
                          **evaluate(scored, train_eval, "train", config.precision),
                          **evaluate(scored, (data.test, data.test_labels), "test", config.precision),
                          "seconds": time.perf_counter() - start_time}
                history.append(record)
                bar.set_postfix(epoch=epoch, train=f"{record['train_elbo']:.2f}", test=f"{record['test_elbo']:.2f}")
                write_json(out / "history.json", history)
            stop = stop_requested(signals)
            if evaluated or stop:
                save(epoch)
            if stop:
                raise _interrupted(stop, out, f"the end of epoch {epoch}")
    training_seconds = time.perf_counter() - start_time
    if hasattr(model, param_sites.ATTRIBUTE):
        model.pyro_params.install()  # in Pyro's param store, as SVI leaves them
    if not processes.main:
        return Run(model, config, data, history, {}, out)

    with validation(config.validate):
        test_ll = evaluation.log_likelihood(scored.model, scored.guide, inputs(model, data.test, data.test_labels),
                                            config.eval_particles, progress=progress, precision=config.precision)
    final = {key: value for key, value in history[-1].items() if key.startswith(("train_", "test_"))}
    skipped = plots.draw_run_pictures(model, data, history, out, inputs(model, data.test[:10],
                                      None if data.test_labels is None else data.test_labels[:10]))
    metrics = {**final, "test_log_likelihood": test_ll.mean, "test_log_likelihood_stderr": test_ll.stderr,
               "test_log_likelihood_particles": test_ll.num_particles, "scoring": test_ll.scoring,
               "samples_seen": samples_seen,
               "seconds": training_seconds, "seconds_per_epoch": training_seconds / config.epochs,
               "pictures_skipped": skipped, "config": asdict(config), "recipe": model_recipe,
               "environment": {**environment(device), "training_step": step_fn.mode}}
    write_json(out / "metrics.json", metrics)
    return Run(model, config, data, history, metrics, out, test_ll)


def _interrupted(signal_number: int, out: Path, where: str) -> TrainingInterrupted:
    return TrainingInterrupted(f"stopped by {signal.Signals(signal_number).name} at {where}; the checkpoint is "
                               f"saved: continue with 'pyro-vae train --resume {out}'", signal_number)


def evaluate(model: nn.Module, data: tuple, split: str, precision: str) -> dict:
    """``{split}_elbo`` per datapoint (one draw each) of images and labels ``data``, and for a model
    with a classifier ``{split}_accuracy``."""
    x, y = data
    figures = {f"{split}_elbo": evaluation.elbo(model.model, model.guide, inputs(model, x, y), precision=precision).mean}
    if hasattr(model, "classify") and y is not None:
        figures[f"{split}_accuracy"] = evaluation.accuracy(model, x, y)
    return figures


def _restore(checkpoint: dict, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
             device: torch.device, processes: distributed.Processes) -> None:
    """Put model, optimizer and this process's random states back as the checkpoint recorded them."""
    if checkpoint.get("device_type") != device.type:
        raise ConfigError(f"the checkpoint was written on {checkpoint.get('device_type')}: resume it with "
                          f"--device {checkpoint.get('device_type')} to continue the same random streams")
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ConfigError(f"the checkpoint does not fit its own configuration ({error}): it was edited or "
                          "written by another version") from None
    ranks = checkpoint["rng"].get("ranks", [checkpoint["rng"]])
    if processes.rank < len(ranks):
        torch.set_rng_state(ranks[processes.rank]["torch"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(ranks[processes.rank]["cuda"], device)
    else:  # more processes than wrote the checkpoint: the newcomers draw fresh streams
        pyro.set_rng_seed(TrainConfig.from_dict(checkpoint["config"]).seed + 7919 * processes.rank + 1)
    if len(ranks) != processes.world_size and processes.main:
        warnings.warn(f"the checkpoint was written by {len(ranks)} process(es) and is resumed by "
                      f"{processes.world_size}: the run continues, but not with the same random draws", RuntimeWarning)
    generator.set_state(checkpoint["rng"]["generator"])
