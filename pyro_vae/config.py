"""The configuration of a training run, its defaults and its checks.

:class:`TrainConfig` is one run's settings as the command line gives them: the data (a built-in
data set or a ``.npz``/``.pt`` file), the model (a factory by name or import path, the common
network arguments and the factory's own ``model_args``, :mod:`pyro_vae.recipes`) and the training
settings. ``None`` means a default: the factory's own where its signature has one, else the data
set's (:data:`DATASET_DEFAULTS`: the paper's networks, one hidden layer of 500 units for MNIST and
200 for Frey Face). Every check here runs before any data is loaded.
"""

import inspect
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional


from . import recipes
from .batches import BINARIZATIONS
from .datasets import DATASETS
from .distributed import resolve_device
from .errors import ConfigError
from .likelihoods import LIKELIHOODS
from .networks import ACTIVATIONS
from .objectives import OBJECTIVES, make_objective
from .precision import PRECISIONS, check_precision
from .step import COMPILE_MODES

OPTIMIZERS = ("adam", "adagrad")
#: Learning-rate schedules (:mod:`pyro_vae.callbacks.schedules`).
LR_SCHEDULES = ("constant", "cosine", "step", "iwae")
DEVICES = ("auto", "cpu", "cuda")
#: Compile modes by the names runs saved before they were renamed, and their names now.
OLD_COMPILE_MODES = {"none": "eager", "trace": "replay"}

#: Settings that depend on the data set when left unset (and the model's factory has no default).
DATASET_DEFAULTS = {
    "mnist": {"latent_dim": 20, "hidden_dims": [500], "epochs": 10, "likelihood": "bernoulli", "binarize": "dynamic",
              "activation": "tanh"},
    "frey-face": {"latent_dim": 2, "hidden_dims": [200], "epochs": 500, "likelihood": "gaussian", "binarize": "none",
                  "activation": "tanh"},
}
#: The same for a user's data file; its likelihood is chosen from the data (Bernoulli for binary images).
FILE_DEFAULTS = {"latent_dim": 20, "hidden_dims": [500], "epochs": 10, "binarize": "none", "activation": "tanh"}
#: The network arguments a factory is offered from the configuration (see :data:`pyro_vae.recipes.COMMON_ARGUMENTS`).
NETWORK_ARGUMENTS = ("latent_dim", "hidden_dims", "activation", "likelihood", "init_std")


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means a default (see the module's docstring)."""

    dataset: str = "frey-face"
    data_dir: Optional[str] = None
    model: str = "vae"
    model_args: dict = field(default_factory=dict)
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    latent_dim: Optional[int] = None
    hidden_dims: Optional[list] = None
    activation: Optional[str] = None
    likelihood: Optional[str] = None
    binarize: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: int = 100
    objective: Optional[str] = None
    particles: int = 0
    allow_mc_kl: bool = False
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    init_std: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    eval_particles: int = 1000
    clip_grad_norm: Optional[float] = None
    lr_schedule: str = "constant"
    early_stopping: Optional[int] = None
    kl_warmup: int = 0
    compile: str = "auto"
    precision: str = "fp32"
    validate: bool = False
    checkpoint_every: Optional[int] = None
    out: Optional[str] = None

    @property
    def is_file(self) -> bool:
        """Whether ``dataset`` names a data file rather than a built-in data set."""
        return self.dataset not in DATASETS

    def resolved(self, in_memory: bool = False, factory: bool = True) -> "TrainConfig":
        """A copy with the defaults filled in, checked for consistency: the one resolver of :func:`pyro_vae.fit`,
        :func:`pyro_vae.train` and ``pyro-vae train``.

        ``in_memory``: the data is an object given to :func:`~pyro_vae.fit` (``dataset`` is its name);
        ``factory``: ``model`` names a factory, whose own defaults come first (else the model is an object,
        which takes no network settings).
        """
        if not in_memory and self.is_file and Path(self.dataset).suffix not in (".npz", ".pt"):
            raise ConfigError(f"unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}, or give a "
                              ".npz or .pt file")
        if factory:
            recipes.name_factory(self.model)  # the user's own factory: trusted when its runs are opened
        values = asdict(self)
        factory_defaults = _factory_defaults(self.model) if factory else set(NETWORK_ARGUMENTS)
        dataset_defaults = FILE_DEFAULTS if in_memory or self.is_file else DATASET_DEFAULTS[self.dataset]
        for key in ("latent_dim", "hidden_dims", "activation", "likelihood", "binarize", "epochs"):
            if values[key] is None and key not in factory_defaults:
                values[key] = dataset_defaults.get(key)
        if values["likelihood"] == "bernoulli" and self.dataset == "frey-face" and self.binarize is None:
            values["binarize"] = "dynamic"
        if values["binarize"] == "none" and self.dataset == "mnist" and self.likelihood is None:
            values["likelihood"] = "gaussian"
        for key in ("data_dir",) + (("dataset",) if self.is_file and not in_memory else ()):  # usable from anywhere
            if values[key] is not None:
                values[key] = str(Path(values[key]).expanduser().resolve())
        config = TrainConfig(**values)
        config.check(in_memory, factory)
        return config

    def check(self, in_memory: bool = False, factory: bool = True) -> None:
        """Raise :class:`ConfigError` on an impossible configuration: its settings, data and model."""
        self.check_settings()
        if self.data_dir is not None and Path(self.data_dir).exists() and not Path(self.data_dir).is_dir():
            raise ConfigError(f"--data-dir {self.data_dir} is a file, not a folder: pass the folder that holds "
                              "MNIST/raw or FreyFace/frey_rawface.mat")
        if self.is_file and not in_memory and not Path(self.dataset).is_file():
            raise ConfigError(f"--dataset {self.dataset}: no such file; pass a .npz or .pt file with arrays train "
                              "and test")
        if factory:
            recipes.check_arguments(self.model, self.model_args)

    def check_settings(self) -> None:
        """Raise :class:`ConfigError` on impossible settings (everything but the data and the model)."""
        choices = {"compile": COMPILE_MODES, "optimizer": OPTIMIZERS, "likelihood": LIKELIHOODS,
                   "binarize": BINARIZATIONS, "activation": ACTIVATIONS, "device": DEVICES,
                   "precision": PRECISIONS, "lr_schedule": LR_SCHEDULES}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                renamed = f" ({value!r} is now {OLD_COMPILE_MODES[value]!r})" \
                    if name == "compile" and value in OLD_COMPILE_MODES else ""
                raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}{renamed}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        for name in ("latent_dim", "epochs", "batch_size", "eval_every", "eval_particles", "particles", "seed",
                     "train_size", "test_size", "checkpoint_every", "early_stopping", "kl_warmup"):
            value, least = getattr(self, name), 0 if name in ("particles", "seed", "kl_warmup") else 1
            if value is None and name in ("train_size", "test_size", "checkpoint_every", "latent_dim", "epochs",
                                          "early_stopping"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                kind = "a positive integer" if least else "an integer, zero or more"
                raise ConfigError(f"{name.replace('_', '-')} must be {kind}, got {value!r}")
        for name in ("lr", "weight_decay", "clip_grad_norm", "init_std"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ConfigError(f"{name.replace('_', '-')} must be a number, got {value!r}")
        if self.hidden_dims is not None and (not self.hidden_dims or any(not isinstance(h, int) or h < 1
                                                                         for h in self.hidden_dims)):
            raise ConfigError(f"hidden-dim must be one or more positive integers, got {self.hidden_dims!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight-decay must be zero or positive, got {self.weight_decay!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(f"clip-grad-norm must be positive, got {self.clip_grad_norm!r}")
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"init-std must be positive, got {self.init_std!r}")
        if not isinstance(self.model_args, dict):
            raise ConfigError(f"model_args must be a dict of the factory's keyword arguments, got {self.model_args!r}")
        if self.objective is not None:
            make_objective(self.objective, self.particles)  # checks the particle count
        if self.precision == "bf16":  # refused where the hardware has no bfloat16 matrix unit
            check_precision(self.precision, resolve_device(self.device))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The configuration a run saved (``config.json``, a checkpoint), in today's names: a compile
        mode saved under its old name (:data:`OLD_COMPILE_MODES`) is read as its new one."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        if values.get("compile") in OLD_COMPILE_MODES:
            values["compile"] = OLD_COMPILE_MODES[values["compile"]]
        return cls(**values)


def _factory_defaults(model: str) -> set:
    """The network arguments that ``model``'s factory gives defaults of its own."""
    parameters = inspect.signature(recipes.import_factory(model)).parameters
    return {name for name in NETWORK_ARGUMENTS
            if name in parameters and parameters[name].default is not inspect.Parameter.empty}
