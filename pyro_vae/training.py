"""Training a model with AEVB: the loop, its configuration, its run directory.

:func:`train` runs Auto-Encoding Variational Bayes (Kingma & Welling 2013, algorithm 1):
minibatches of M datapoints, one draw of z per datapoint (or K with ``particles``), a stochastic
gradient of the minibatch ELBO from a Pyro objective, and an Adam or Adagrad step. After every
``eval_every`` epochs it estimates the train and test ELBO per datapoint, appends a record to
the history and saves a checkpoint; at the end it estimates the test log-likelihood by
importance sampling and draws the run's pictures.

The loop is the same for every model of :mod:`pyro_vae.models`. The model's ``labels``
attribute decides what it is fed (:func:`training_parts`): images only, images with their
labels, or for a semi-supervised model two parts, unlabelled images and a class-balanced
labelled subset; each step draws a minibatch from every part and sums their losses, each scaled
to its part's size. Under ``torchrun`` the steps are shared among processes
(:mod:`pyro_vae.distributed`).

A run directory holds:

``checkpoint.pt``
    model and optimizer state, history, RNG states and configuration: enough to resume exactly
    (:func:`resume`) or to evaluate.
``config.json``
    the configuration, package versions and device, written when the run starts.
``history.json``
    one record per evaluation: ``epoch``, ``samples_seen`` (training datapoints processed so
    far, the x-axis of the paper's Figure 2), ``train_elbo``, ``test_elbo`` (nats per datapoint)
    and ``seconds`` since the start of training.
``metrics.json``
    the final figures and the configuration.
``learning_curve.png``, ``reconstructions.png``, ``samples.png`` and, for a 2-D latent space,
``manifold.png``.

The train ELBO is estimated on a fixed subset of at most :data:`TRAIN_EVAL_SIZE` training
images (all of them for Frey Face), the test ELBO on the whole test set, each with one draw of z
per datapoint.
"""

import contextlib
import math
import platform
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional, Sequence

import pyro
import torch
from tqdm.auto import tqdm

from . import distributed, evaluation, plots, rundir
from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .datasets import (BINARIZATIONS, DATASETS, ImageData, IndexCycle, binarize_once, draw_batch, labelled_subset,
                       load_dataset, prepare_binarization)
from .errors import ConfigError, TrainingError, TrainingInterrupted
from .likelihoods import LIKELIHOODS
from .models import CONDITIONS, MODELS, VAE
from .models import build_model as build_named_model
from .networks import ACTIVATIONS
from .objectives import OBJECTIVES, check_objective, make_objective
from .step import COMPILE_MODES, ObjectiveLoss, TrainingStep, make_optimizer
from .stopping import StopSignals

TRAIN_EVAL_SIZE = 10_000
TRAIN_EVAL_SEED = 0
LABELLED_SEED = 0
TRAIN_SUBSET_SEED = 0
OPTIMIZERS = ("adam", "adagrad")
NUM_CLASSES = 10  # MNIST's digits: the classes of the labelled models
DEFAULT_RUNS = Path("runs")  # where a run without an ``out`` gets a fresh folder

#: Settings that depend on the model when left unset, before the data set's: Burda et al.'s
#: two-layer network (200-200 units to h1 of 100, 100-100 to h2 of 50) and Kingma et al. (2014)'s
#: M2 (500 softplus units, z of 50); the objective is ``meanfield`` unless a model says otherwise.
MODEL_DEFAULTS = {
    "hierarchical": {"latent_dim": 100, "hidden_dims": [200, 200], "objective": "trace"},
    "m2": {"latent_dim": 50, "hidden_dims": [500], "activation": "softplus", "epochs": 30, "objective": "enum"},
    "m1m2": {"latent_dim": 50, "hidden_dims": [500], "activation": "softplus", "epochs": 30, "objective": "enum"},
}

#: Settings that depend on the data set when left unset: the paper's networks (one hidden
#: layer of 500 units for MNIST, 200 for Frey Face) and training lengths that finish in minutes.
DATASET_DEFAULTS = {
    "mnist": {"latent_dim": 20, "hidden_dims": [500], "epochs": 10, "likelihood": "bernoulli", "binarize": "dynamic",
              "activation": "tanh"},
    "frey-face": {"latent_dim": 2, "hidden_dims": [200], "epochs": 500, "likelihood": "gaussian", "binarize": "none",
                  "activation": "tanh"},
}


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means the data set's default."""

    dataset: str = "frey-face"
    data_dir: Optional[str] = None
    model: str = "vae"
    train_size: Optional[int] = None
    latent_dim: Optional[int] = None
    hidden_dims: Optional[list] = None
    activation: Optional[str] = None
    likelihood: Optional[str] = None
    binarize: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: int = 100
    objective: Optional[str] = None
    particles: int = 0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    init_std: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    eval_particles: int = 1000
    clip_grad_norm: Optional[float] = None
    compile: str = "none"
    labels_per_class: int = 10
    aux_weight: Optional[float] = None
    labelled_weight: float = 1.0
    condition: str = "label"
    m1: Optional[str] = None
    checkpoint_every: Optional[int] = None
    out: Optional[str] = None

    def resolved(self) -> "TrainConfig":
        """A copy with the data set's defaults filled in, checked for consistency."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        values = asdict(self)
        for defaults in (MODEL_DEFAULTS.get(self.model, {}), DATASET_DEFAULTS[self.dataset]):
            for key, default in defaults.items():
                if values[key] is None:
                    values[key] = default
        if values["objective"] is None:  # a model with no default of its own
            values["objective"] = "meanfield"
        if values["likelihood"] == "bernoulli" and self.dataset == "frey-face" and self.binarize is None:
            values["binarize"] = "dynamic"
        if values["binarize"] == "none" and self.dataset == "mnist" and self.likelihood is None:
            values["likelihood"] = "gaussian"
        for path in ("data_dir", "m1"):  # absolute, so that the run can be evaluated from anywhere
            if values[path] is not None:
                values[path] = str(Path(values[path]).expanduser().resolve())
        config = TrainConfig(**values)
        config.check()
        return config

    def check(self) -> None:
        """Raise :class:`ConfigError` on an impossible configuration."""
        choices = {"model": MODELS, "condition": CONDITIONS, "compile": COMPILE_MODES, "objective": OBJECTIVES, "optimizer": OPTIMIZERS, "likelihood": LIKELIHOODS,
                   "binarize": BINARIZATIONS, "activation": ACTIVATIONS, "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name in ("latent_dim", "epochs", "batch_size", "eval_every", "eval_particles", "particles", "seed",
                     "labels_per_class", "train_size"):
            value, least = getattr(self, name), 0 if name in ("particles", "seed") else 1
            if name == "train_size" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                kind = "a positive integer" if least else "an integer, zero or more"
                raise ConfigError(f"{name.replace('_', '-')} must be {kind}, got {value!r}")
        for name in ("lr", "weight_decay", "clip_grad_norm", "init_std", "aux_weight", "labelled_weight"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ConfigError(f"{name.replace('_', '-')} must be a number, got {value!r}")
        if not self.hidden_dims or any(not isinstance(h, int) or h < 1 for h in self.hidden_dims):
            raise ConfigError(f"hidden-dim must be one or more positive integers, got {self.hidden_dims!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight-decay must be zero or positive, got {self.weight_decay!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(f"clip-grad-norm must be positive, got {self.clip_grad_norm!r}")
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"init-std must be positive, got {self.init_std!r}")
        if self.aux_weight is not None and not (self.aux_weight >= 0 and math.isfinite(self.aux_weight)):
            raise ConfigError(f"aux-weight must be zero or positive, got {self.aux_weight!r}")
        if not (self.labelled_weight > 0 and math.isfinite(self.labelled_weight)):
            raise ConfigError(f"labelled-weight must be a positive number, got {self.labelled_weight!r}")
        if self.checkpoint_every is not None and (not isinstance(self.checkpoint_every, int)
                                                  or isinstance(self.checkpoint_every, bool) or self.checkpoint_every < 1):
            raise ConfigError(f"checkpoint-every must be a positive integer, got {self.checkpoint_every!r}")
        if (self.model == "m1m2") != (self.m1 is not None):
            raise ConfigError("--model m1m2 needs --m1 RUN_DIR, the run directory of a trained vae"
                              if self.m1 is None else f"--m1 is for --model m1m2, not {self.model}")
        if self.data_dir is not None and Path(self.data_dir).exists() and not Path(self.data_dir).is_dir():
            raise ConfigError(f"--data-dir {self.data_dir} is a file, not a folder: pass the folder that holds "
                              "MNIST/raw or FreyFace/frey_rawface.mat")
        make_objective(self.objective, self.particles)  # checks the particle count

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


def build_model(config: TrainConfig, data_dim: int, image_shape=(28, 28), num_data: Optional[int] = None,
                m1: Optional[VAE] = None) -> VAE:
    """The model a (resolved) configuration describes, for data of ``num_data`` training images.

    ``m1`` is the trained VAE that ``m1m2`` stacks on (:func:`load_m1`, :func:`rebuild_m1`).
    M2's auxiliary weight defaults to Kingma et al.'s alpha = 0.1 * N spread over the N_l
    labelled images: ``0.1 * num_data / N_l`` per labelled image.
    """
    num_labelled = NUM_CLASSES * config.labels_per_class
    aux_weight = config.aux_weight
    if aux_weight is None:
        aux_weight = 0.1 * (num_data or num_labelled) / num_labelled
    return build_named_model(config.model, data_dim, config.latent_dim, config.hidden_dims, config.likelihood,
                             config.activation, config.init_std, num_classes=NUM_CLASSES, aux_weight=aux_weight,
                             condition=config.condition, image_shape=image_shape, m1=m1)


def load_m1(config: TrainConfig) -> tuple[VAE, dict]:
    """The trained VAE of the run directory ``config.m1``, on which ``m1m2`` stacks M2, and the
    record from which :func:`rebuild_m1` rebuilds it (kept in the m1m2 checkpoint, whose model state
    holds M1's weights: an m1m2 run does not need M1's folder once it has started)."""
    if not (Path(config.m1) / "checkpoint.pt").is_file():
        raise ConfigError(f"--m1 {config.m1}: no checkpoint.pt there; train M1 first with "
                          f"'pyro-vae train --model vae --dataset {config.dataset} --out {config.m1}'")
    m1, m1_config, checkpoint = load_run(config.m1, data_dir=config.data_dir)
    if m1_config.model != "vae" or m1_config.dataset != config.dataset or m1_config.likelihood != config.likelihood:
        raise ConfigError(f"--m1 {config.m1} is a {m1_config.model} with a {m1_config.likelihood} likelihood on "
                          f"{m1_config.dataset}: M1 must be a vae trained on {config.dataset} with a "
                          f"{config.likelihood} likelihood")
    return m1, {key: checkpoint.get(key) for key in ("config", "data_dim", "image_shape", "num_data")}


def rebuild_m1(record: dict) -> VAE:
    """M1's network as :func:`load_m1`'s record describes it, with untrained weights."""
    config = TrainConfig.from_dict(record["config"])
    config.data_dir = None  # not read: only the architecture is rebuilt
    return build_model(config.resolved(), record["data_dim"], tuple(record["image_shape"]), record["num_data"])


def _stacked_on(config: TrainConfig, checkpoint: Optional[dict]) -> tuple[Optional[VAE], Optional[dict]]:
    """``m1m2``'s M1 and its record: from the checkpoint where it has one, else from ``--m1``."""
    if config.model != "m1m2":
        return None, None
    if checkpoint is not None and checkpoint.get("m1") is not None:
        return rebuild_m1(checkpoint["m1"]), checkpoint["m1"]
    return load_m1(config)


def prepare_data(config: TrainConfig, device: torch.device) -> tuple[ImageData, bool, tuple]:
    """The data as the configuration asks: binarized, on the device, checked against the likelihood.

    Returns the data, whether training batches are binarized dynamically, and the fixed subset
    of training images (and their labels, or ``None``) on which the train ELBO is estimated.
    """
    data = load_dataset(config.dataset, config.data_dir)
    if config.train_size is not None:
        if config.train_size > len(data.train):
            raise ConfigError(f"train-size {config.train_size} exceeds the {len(data.train)} training images of "
                              f"{config.dataset}: pass --train-size {len(data.train)} or less")
        subset = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(TRAIN_SUBSET_SEED))
        subset = subset[:config.train_size].sort().values
        labels = None if data.train_labels is None else data.train_labels[subset]
        data = replace(data, train=data.train[subset], train_labels=labels)
    data, dynamic = prepare_binarization(data.to(device), config.binarize)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(TRAIN_EVAL_SEED))
    subset = order[:TRAIN_EVAL_SIZE].to(device)
    train_eval_x = data.train[subset]
    if dynamic:
        train_eval_x = binarize_once(train_eval_x)
    train_eval = (train_eval_x, None if data.train_labels is None else data.train_labels[subset])
    likelihood = LIKELIHOODS[config.likelihood]
    if not dynamic:
        likelihood.check_support(data.train, f"the {config.dataset} training data")
    likelihood.check_support(data.test, f"the {config.dataset} test data")
    if config.batch_size > len(data.train):
        raise ConfigError(f"batch-size {config.batch_size} exceeds the {len(data.train)} training images: "
                          f"pass --batch-size {len(data.train)} or less")
    return data, dynamic, train_eval


def training_parts(config: TrainConfig, model: VAE, data: ImageData) -> list[tuple]:
    """The parts of the training data as ``(images, labels or None, size)``, the largest first.

    An unsupervised model trains on all images; a model that takes labels, on all images with
    their labels; a semi-supervised one on two parts, the images without labels and a
    class-balanced subset of ``labels_per_class`` labelled images per class (seeded by
    :data:`LABELLED_SEED`, the same for every run).

    ``size`` is how many datapoints the part counts as in the objective (the ``num_data`` its
    minibatches are scaled to): its number of images, times ``labelled_weight`` for the labelled
    part. Kingma et al.'s objective sums the bounds of all images, each counted once
    (``labelled_weight = 1``); with 100 labelled images among 60,000 their terms are then 0.17%
    of it, and ``labelled_weight = N_unlabelled / N_labelled`` gives both parts equal weight.
    """
    if model.labels != "some" and config.labelled_weight != 1:
        raise ConfigError(f"--labelled-weight is for the semi-supervised models (m2, m1m2), not {config.model}")
    if model.labels == "none":
        return [(data.train, None, len(data.train))]
    if data.train_labels is None:
        raise ConfigError(f"the {config.model} model needs class labels, which {config.dataset} does not have: "
                          "use --dataset mnist" + (" or --condition top-half" if config.model == "cvae" else ""))
    if model.labels == "all":
        return [(data.train, data.train_labels, len(data.train))]
    labelled = labelled_subset(data.train_labels, config.labels_per_class, LABELLED_SEED).to(data.train.device)
    unlabelled = torch.ones(len(data.train), dtype=torch.bool, device=data.train.device)
    unlabelled[labelled] = False
    return [(data.train[unlabelled], None, int(unlabelled.sum())),
            (data.train[labelled], data.train_labels[labelled], len(labelled) * config.labelled_weight)]


def environment(device: torch.device) -> dict:
    """Versions and device, recorded with every run for reproducibility."""
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
            "torchvision": torchvision.__version__, "device": str(device), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@dataclass
class Run:
    """The result of :func:`train`: the trained model, its data and its figures."""

    model: VAE
    config: TrainConfig
    data: ImageData
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    out: Optional[Path] = None


def train(config: TrainConfig, progress: bool = True, overwrite: bool = False) -> Run:
    """Train a model as ``config`` says and write its run directory ``config.out``.

    ``config.out = None`` writes to a fresh folder under ``runs/``. A folder that holds a run
    already is refused unless ``overwrite``, which deletes that run's files first
    (:mod:`pyro_vae.rundir`). On SIGTERM or SIGINT training stops at the next step with a
    checkpoint from which :func:`resume` continues exactly, and :class:`TrainingInterrupted` is raised.
    """
    config = config.resolved()
    if config.out is None:
        config.out = str(rundir.fresh_folder(DEFAULT_RUNS, f"{config.dataset}-{config.model}").resolve())
    if distributed.launched_rank() == 0:  # the other processes start once rank 0 may have written
        rundir.check_new_run(config.out, overwrite)
    _stacked_on(config, None)  # a missing or unsuitable --m1 is refused before any data is loaded
    return _fit(config, None, progress, overwrite)


def resume(run_dir, epochs: Optional[int] = None, data_dir: Optional[str] = None, progress: bool = True,
           checkpoint_every: Optional[int] = None) -> Run:
    """Continue the run in ``run_dir`` from its last checkpoint, up to ``epochs`` (default: as configured).

    The checkpoint holds the model and optimizer states, the history, every process's random
    states (the global torch generator that Pyro samples from, and the generator of minibatch order
    and binarization draws) and, for a run stopped mid-epoch, the epoch's order and step, so on the
    same device type and number of processes the resumed run ends exactly as an uninterrupted run
    with the same configuration would (apart from wall times). ``checkpoint_every`` replaces the
    run's own setting.
    """
    checkpoint = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    config = TrainConfig.from_dict(checkpoint["config"])
    config.out = str(run_dir)
    if data_dir is not None:
        config.data_dir = data_dir
    if checkpoint_every is not None:
        config.checkpoint_every = checkpoint_every
    if epochs is not None:
        if epochs < checkpoint["epoch"]:
            raise ConfigError(f"{run_dir} already trained {checkpoint['epoch']} epochs: pass --epochs "
                              f"{checkpoint['epoch']} or more")
        config.epochs = epochs
    return _fit(config.resolved(), checkpoint, progress)


def _fit(config: TrainConfig, checkpoint: Optional[dict], progress: bool, overwrite: bool = False) -> Run:
    out = Path(config.out)
    processes, device = distributed.start(resolve_device(config.device), config.batch_size)
    try:
        with contextlib.ExitStack() as stack:
            if processes.main:
                stack.enter_context(rundir.RunLock(out))
                if checkpoint is None and overwrite:
                    rundir.clear_run(out)
            return _train_processes(config, checkpoint, progress, processes, device, out)
    finally:
        distributed.stop(processes)


def _train_processes(config: TrainConfig, checkpoint: Optional[dict], progress: bool,
                     processes: distributed.Processes, device: torch.device, out: Path) -> Run:
    pyro.set_rng_seed(config.seed)
    data, dynamic, train_eval = prepare_data(config, device)
    m1, m1_record = _stacked_on(config, checkpoint)
    model = build_model(config, data.data_dim, data.image_shape, len(data.train), m1).to(device)
    check_objective(config.objective, model)
    parts = training_parts(config, model, data)
    objective = make_objective(config.objective, config.particles)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    step_fn = TrainingStep(processes.wrap(ObjectiveLoss(model, objective), device), optimizer, config.clip_grad_norm,
                           compile=config.compile)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    num_data = len(data.train)
    # A compiled objective is traced for one batch shape: it drops a smaller last batch.
    main_batches = IndexCycle(len(parts[0][0]), config.batch_size, generator, config.objective.startswith("jit"))
    steps_per_epoch = main_batches.batches_per_pass
    history: list[dict] = []
    first_epoch, first_step, samples_seen, seconds_before = 1, 0, 0, 0.0
    position = None
    if checkpoint is not None:
        first_epoch, samples_seen, history = checkpoint["epoch"] + 1, checkpoint["samples_seen"], checkpoint["history"]
        seconds_before = checkpoint.get("seconds", history[-1]["seconds"] if history else 0.0)
        position = checkpoint.get("position")
        _restore(checkpoint, model, optimizer, generator, device, processes)
    elif processes.main:
        write_json(out / "config.json", {"config": asdict(config), "environment": environment(device)})
    if checkpoint is None and processes.rank > 0:  # its own draws of z; the data generator stays shared
        pyro.set_rng_seed(config.seed + 7919 * processes.rank + 1)
    start = time.perf_counter() - seconds_before

    def save(epoch: int, step: int = 0, others: Sequence[IndexCycle] = (), total_loss: float = 0.0) -> None:
        """A checkpoint after ``step`` steps of epoch ``epoch + 1`` (0: at the end of epoch ``epoch``)."""
        random_states = processes.gather({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device)
                                          if device.type == "cuda" else torch.zeros(0, dtype=torch.uint8)})
        if not processes.main:
            return
        state = {"config": asdict(config), "data_dim": data.data_dim, "image_shape": list(data.image_shape),
                 "num_data": num_data, "device_type": device.type, "world_size": processes.world_size,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(), "m1": m1_record,
                 "epoch": epoch, "samples_seen": samples_seen, "history": history,
                 "seconds": time.perf_counter() - start,
                 "rng": {**random_states[0], "generator": generator.get_state(), "ranks": random_states}}
        if step:
            state["position"] = {"step": step, "main": main_batches.state(), "others": [o.state() for o in others],
                                 "total_loss": total_loss}
        save_checkpoint(out / "checkpoint.pt", state)

    def batch(part: tuple, index: torch.Tensor) -> tuple[tuple, int]:
        """This process's share of a minibatch of a data part, as (model arguments, part size)."""
        x, y, size = part
        x_batch = draw_batch(x, index, generator, dynamic)
        mine = processes.shard(torch.arange(len(index), device=device))
        return (x_batch[mine],) if y is None else (x_batch[mine], y[index][mine]), size

    def stop_requested(signals: StopSignals) -> int:
        """The signal that asked every process to stop, or 0 (a sync across processes when distributed)."""
        return processes.max(torch.tensor(signals.signal or 0)) if processes.distributed else (signals.signal or 0)

    # A private parameter store: the networks register in it under their own names (Pyro's JIT
    # objectives read parameters from it) without touching the caller's global store.
    with pyro.get_param_store().scope(), StopSignals() as signals, \
            tqdm(total=config.epochs * steps_per_epoch, initial=(first_epoch - 1) * steps_per_epoch,
                 desc=f"{config.dataset} {config.model} {config.objective}", unit="step",
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
                at_sync = step % 50 == 0 or step == steps_per_epoch
                if at_sync:
                    bad_step = processes.max(first_bad_step)
                    if bad_step:
                        raise TrainingError(
                            f"the loss or its gradient became non-finite in epoch {epoch} at step {bad_step}: "
                            f"lower --lr or set --clip-grad-norm; the last good checkpoint is kept in {out}")
                    bar.set_postfix(epoch=epoch, objective=f"{-total_loss.item() / step / num_data:.2f}")
                if step < steps_per_epoch:
                    stop = stop_requested(signals) if at_sync or not processes.distributed else 0
                    if stop or (config.checkpoint_every and step % config.checkpoint_every == 0):
                        save(epoch - 1, step, others, total_loss.item())
                    if stop:
                        raise _interrupted(stop, out, f"epoch {epoch}, after step {step} of {steps_per_epoch}")
            evaluated = epoch % config.eval_every == 0 or epoch == config.epochs
            if processes.main and evaluated:
                record = {"epoch": epoch, "samples_seen": samples_seen, **evaluate(model, train_eval, "train"),
                          **evaluate(model, (data.test, data.test_labels), "test"),
                          "seconds": time.perf_counter() - start}
                history.append(record)
                bar.set_postfix(epoch=epoch, train=f"{record['train_elbo']:.2f}", test=f"{record['test_elbo']:.2f}")
                write_json(out / "history.json", history)
            stop = stop_requested(signals)
            if evaluated or stop:
                save(epoch)
            if stop:
                raise _interrupted(stop, out, f"the end of epoch {epoch}")
    training_seconds = time.perf_counter() - start
    if not processes.main:
        return Run(model, config, data, history, {}, out)

    test_inputs = model.inputs(data.test, data.test_labels)
    test_ll = evaluation.log_likelihood(model.model, model.guide, test_inputs, config.eval_particles,
                                        progress=progress)
    final = {key: value for key, value in history[-1].items() if key.startswith(("train_", "test_"))}
    metrics = {**final, "test_log_likelihood": test_ll.mean, "test_log_likelihood_stderr": test_ll.stderr,
               "test_log_likelihood_particles": test_ll.num_particles, "samples_seen": samples_seen,
               "seconds": training_seconds, "seconds_per_epoch": training_seconds / config.epochs,
               "config": asdict(config), "environment": environment(device)}
    write_json(out / "metrics.json", metrics)
    draw_pictures(model, data, history, out)
    return Run(model, config, data, history, metrics, out)


def _interrupted(signal_number: int, out: Path, where: str) -> TrainingInterrupted:
    return TrainingInterrupted(f"stopped by {signal.Signals(signal_number).name} at {where}; the checkpoint is "
                               f"saved: continue with 'pyro-vae train --resume {out}'", signal_number)


def evaluate(model: VAE, data: tuple, split: str) -> dict:
    """``{split}_elbo`` per datapoint (one draw each) of images and labels ``data``, and for a model
    with a classifier ``{split}_accuracy``."""
    x, y = data
    figures = {f"{split}_elbo": evaluation.elbo(model.model, model.guide, model.inputs(x, y)).mean}
    if hasattr(model, "classify") and y is not None:
        figures[f"{split}_accuracy"] = evaluation.accuracy(model, x, y)
    return figures


def _restore(checkpoint: dict, model: VAE, optimizer: torch.optim.Optimizer, generator: torch.Generator,
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


def draw_pictures(model: VAE, data: ImageData, history: list, out: Path) -> None:
    """The run's pictures: learning curves, reconstructions, samples, and the model's own pictures
    (:func:`pyro_vae.plots.plot_model_pictures`: for a 2-D latent space, the manifold)."""
    model.eval()
    plots.plot_learning_curves(history, out / "learning_curve.png", f"{data.name}, Nz = {model.latent_dim}")
    plots.plot_reconstructions(model, data.test, data.image_shape, out / "reconstructions.png",
                               labels=data.test_labels)
    plots.plot_samples(model, data.image_shape, out / "samples.png")
    plots.plot_model_pictures(model, data.test, data.test_labels, data.image_shape, out)


def load_run(run_dir, device: str = "cpu", data_dir: Optional[str] = None) -> tuple[VAE, TrainConfig, dict]:
    """The trained model of a run directory, its configuration and its checkpoint."""
    checkpoint = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    config = TrainConfig.from_dict(checkpoint["config"])
    if data_dir is not None:
        config.data_dir = data_dir
    config.device = device
    config = config.resolved()
    model = build_model(config, checkpoint["data_dim"], checkpoint.get("image_shape", (28, 28)),
                        checkpoint.get("num_data"), _stacked_on(config, checkpoint)[0])
    model.load_state_dict(checkpoint["model"])
    return model.to(resolve_device(device)), config, checkpoint
