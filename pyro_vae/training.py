"""Runs from a configuration: :func:`train`, :func:`resume` and :func:`load_run`.

:func:`train` turns a :class:`~pyro_vae.TrainConfig` (what the command line gives) into what the
engine takes: the data (a built-in data set or a user's file, :func:`load_data`) and the model,
built from its recipe (:mod:`pyro_vae.recipes`: a factory by name or import path and its keyword
arguments), then trains it with :mod:`pyro_vae.engine`. A run directory records the recipe, so
:func:`resume` and :func:`load_run` rebuild any model whose factory can be imported; a model that
cannot be (defined in ``__main__``) is passed to them as ``model=``. They import and call a factory
only if it is trusted (:func:`pyro_vae.recipes.check_recipe`): a run folder someone else wrote that
names another factory is refused unless ``trust_recipe=True``.
"""

import contextlib
from pathlib import Path
from typing import Optional

import pyro
import torch
from torch import nn

from . import engine, param_sites, recipes, trust
from .checkpoint import load_checkpoint
from .config import TrainConfig, resolve_device
from .datasets import ImageData, load_dataset
from .engine import Run
from .errors import CheckpointError, ConfigError, first_line


def load_data(config: TrainConfig) -> ImageData:
    """The (resolved) configuration's data set or data file, with its ``train_size`` subset."""
    return engine.subset(load_dataset(config.dataset, config.data_dir), config.train_size)


def model_recipe(config: TrainConfig, data: ImageData) -> dict:
    """The recipe of the configuration's model for ``data``: its factory, with the network settings and
    the data's shape it declares, and the configuration's ``model_args``."""
    network = {key: getattr(config, key) for key in ("latent_dim", "hidden_dims", "activation", "likelihood",
                                                     "init_std")}
    return recipes.recipe(config.model, {**engine.data_arguments(data), **network}, config.model_args)


def train(config: TrainConfig, progress: bool = True, overwrite: bool = False) -> Run:
    """Train a model as ``config`` says and write its run directory ``config.out``.

    Every option is checked before any data is loaded. ``config.out = None`` writes to a fresh
    folder under ``runs/``; a folder that holds a run is refused unless ``overwrite``, which
    deletes that run's files first (:mod:`pyro_vae.rundir`). On SIGTERM or SIGINT training stops at
    the next step with a checkpoint from which :func:`resume` continues exactly, and
    :class:`~pyro_vae.TrainingInterrupted` is raised.
    """
    recipes.name_factory(config.model)  # the user's own factory: trusted when its runs are opened
    config = config.resolved()
    engine.claim_folder(config, overwrite)
    pyro.set_rng_seed(config.seed)  # the initial weights are the seed's
    data = load_data(config)
    if config.likelihood is None and config.is_file:  # a user's data: Bernoulli for binary images
        config.likelihood = "bernoulli" if data.is_binary() else "gaussian"
    recipe = model_recipe(config, data)
    return engine.run(recipes.build(recipe), data, config, recipe, None, progress=progress, overwrite=overwrite)


def resume(run_dir, epochs: Optional[int] = None, data_dir: Optional[str] = None, progress: bool = True,
           checkpoint_every: Optional[int] = None, data: Optional[ImageData] = None,
           model: Optional[nn.Module] = None, trust_recipe: bool = False) -> Run:
    """Continue the run in ``run_dir`` from its last checkpoint, up to ``epochs`` (default: as configured).

    The checkpoint holds the model and optimizer states, the history, every process's random
    states (the global torch generator that Pyro samples from, and the generator of minibatch order
    and binarization draws) and, for a run stopped mid-epoch, the epoch's order and step, so on the
    same device type and number of processes the resumed run ends exactly as an uninterrupted run
    with the same configuration would (apart from wall times). ``checkpoint_every`` replaces the
    run's own setting; ``data`` is needed for a run trained on data given in memory, ``model`` for
    a model whose factory cannot be imported; ``trust_recipe`` trusts (and remembers) a factory
    that this user has not trained with, as for :func:`load_run`.
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
    config.check_settings()
    module = rebuild(checkpoint, run_dir, model, trust_recipe)
    data = run_data(config, checkpoint, data)
    return engine.run(module, data, config, checkpoint.get("recipe"), checkpoint,
                      in_memory=bool(checkpoint.get("data_in_memory")), progress=progress)


def run_data(config: TrainConfig, checkpoint: dict, data: Optional[ImageData] = None) -> ImageData:
    """The data a run was trained on: ``data`` if given, else its data set or file, loaded again."""
    if data is not None:
        return data
    if checkpoint.get("data_in_memory"):
        raise ConfigError(f"{config.out} was trained on data given in memory ({config.dataset}): pass the same data "
                          "(resume(..., data=...)), or save it with numpy.savez and train with --dataset FILE.npz")
    return load_data(config)


def rebuild(checkpoint: dict, run_dir, model: Optional[nn.Module] = None, trust_recipe: bool = False) -> nn.Module:
    """The run's model, untrained: ``model`` if given, else rebuilt from the checkpoint's recipe, whose
    factory must be trusted (:func:`pyro_vae.recipes.check_recipe`) unless ``trust_recipe``."""
    if model is not None:
        return model
    recipe = checkpoint.get("recipe")
    if recipe is None:
        where = TrainConfig.from_dict(checkpoint["config"]).model
        raise ConfigError(f"{run_dir}: its model ({where}) has no recipe another process can import (defined in "
                          "__main__ or a notebook): pass the model object, load_run(RUN, model=...), or build it "
                          "with a factory in an importable module")
    with trust.trusting() if trust_recipe else contextlib.nullcontext():
        return recipes.build(recipe, str(run_dir))


def load_run(run_dir, device: str = "cpu", data_dir: Optional[str] = None, model: Optional[nn.Module] = None,
             trust_recipe: bool = False) -> tuple[nn.Module, TrainConfig, dict]:
    """The trained model of a run directory, its configuration and its checkpoint.

    The model is rebuilt from the run's recipe, or is ``model`` (an untrained instance of the same
    architecture) for a model whose factory cannot be imported; its weights come from the checkpoint.
    A recipe is data: its factory is imported and called only if it is a built-in, an installed
    entry point's, or one this user trained with or trusted before; ``trust_recipe=True`` trusts
    (and remembers) the factory of a run someone else wrote, which runs its code.
    """
    checkpoint = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    config = TrainConfig.from_dict(checkpoint["config"])
    if data_dir is not None:
        config.data_dir = data_dir
    config.device = device
    module = rebuild(checkpoint, run_dir, model, trust_recipe)
    param_sites.restore(module, checkpoint["model"])
    try:
        module.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{run_dir}: the checkpoint's weights do not fit the model "
                              f"({first_line(error)}): pass the model the run was trained with") from None
    if hasattr(module, param_sites.ATTRIBUTE):
        module.pyro_params.install()  # in Pyro's param store, where SVI would have left them
    return module.to(resolve_device(device)), config, checkpoint


def load_evaluation_data(config: TrainConfig, checkpoint: dict, device: torch.device) -> ImageData:
    """A run's data prepared as in training (binarized test set, on ``device``), for evaluation."""
    data, _, _ = engine.prepare(run_data(config, checkpoint), config, device)
    return data
