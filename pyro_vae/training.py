"""Runs from a configuration, continued and opened: :func:`train`, :func:`resume`, :func:`load_run`, :func:`evaluate`.

:func:`train` is :func:`pyro_vae.fit` of a :class:`~pyro_vae.TrainConfig` (what ``pyro-vae train``
gives). A run directory records its model's recipe (:mod:`pyro_vae.recipes`), so :func:`resume`,
:func:`load_run` and :func:`evaluate` rebuild any model whose factory can be imported; a model that
cannot be (defined in ``__main__``) is passed to them as ``model=``, and data given in memory as
``data=``. They import and call a factory only if it is trusted
(:func:`pyro_vae.recipes.check_recipe`): a run folder someone else wrote that names another factory
is refused unless ``trust_recipe=True``.
"""

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence, Union

import pyro
import torch
from torch import nn

from . import engine, evaluation, param_sites, recipes, trust
from .batches import TRAIN_SUBSET_SEED, Data, Prepared, prepare, subset
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .distributed import resolve_device
from .datasets import load_dataset
from .engine import Run
from .errors import CheckpointError, ConfigError, first_line


def train(config: TrainConfig, progress: bool = True, overwrite: bool = False, callbacks: Sequence = ()) -> Run:
    """Train the model ``config`` names on its data set and write its run directory ``config.out``:
    :func:`pyro_vae.fit` with the configuration's fields as settings."""
    settings = {key: value for key, value in asdict(config).items()
                if key not in ("dataset", "model", "model_args", "out")}
    return engine.fit(config.model, config.dataset, model_args=config.model_args, out=config.out, overwrite=overwrite,
                      progress=progress, callbacks=callbacks, **settings)


def resume(run_dir, epochs: Optional[int] = None, data_dir: Optional[str] = None, progress: bool = True,
           checkpoint_every: Optional[int] = None, data: Optional[Data] = None, model: Optional[nn.Module] = None,
           trust_recipe: bool = False, callbacks: Sequence = ()) -> Run:
    """Continue the run in ``run_dir`` from its last checkpoint, up to ``epochs`` (default: as configured).

    On the same device type and number of processes the resumed run ends exactly as an uninterrupted
    run with the same configuration would (apart from wall times; :mod:`pyro_vae.runstate`).
    ``checkpoint_every`` replaces the run's own setting; ``data`` is needed for a run trained on data
    given in memory, ``model`` for a model whose factory cannot be imported; ``trust_recipe`` trusts
    (and remembers) a factory that this user has not trained with, as for :func:`load_run`.
    """
    checkpoint = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    config = TrainConfig.from_dict(checkpoint["config"])
    config.out = str(run_dir)
    config.data_dir = data_dir or config.data_dir
    config.checkpoint_every = checkpoint_every or config.checkpoint_every
    if epochs is not None:
        if epochs < checkpoint["epoch"]:
            raise ConfigError(f"{run_dir} already trained {checkpoint['epoch']} epochs: pass --epochs "
                              f"{checkpoint['epoch']} or more")
        config.epochs = epochs
    config.check_settings()
    module = rebuild(checkpoint, run_dir, model, trust_recipe)
    return engine.run(module, run_data(config, checkpoint, data), config, checkpoint.get("recipe"), checkpoint,
                      in_memory=bool(checkpoint.get("data_in_memory")), progress=progress,
                      callbacks=engine.check_callbacks(callbacks))


def run_data(config: TrainConfig, checkpoint: dict, data: Optional[Data] = None) -> Data:
    """The data a run was trained on: ``data`` if given, else its data set or file, loaded again; with the
    run's ``train_size`` subset."""
    if data is None and checkpoint.get("data_in_memory"):
        raise ConfigError(f"{config.out} was trained on data given in memory ({config.dataset}): pass the same data "
                          "(data=...), or save it with numpy.savez and train with --dataset FILE.npz")
    data = data if data is not None else load_dataset(config.dataset, config.data_dir)
    return subset(data, "train", config.train_size, TRAIN_SUBSET_SEED)


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
    architecture) for a model whose factory cannot be imported; its weights come from the checkpoint,
    and its ``pyro.param`` sites go to Pyro's param store, as SVI leaves them. A recipe is data: its
    factory is imported and called only if it is a built-in, an installed entry point's, or one this
    user trained with or trusted before; ``trust_recipe=True`` trusts (and remembers) the factory of a
    run someone else wrote, which runs its code.
    """
    checkpoint = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    config = TrainConfig.from_dict(checkpoint["config"])
    config.data_dir = data_dir or config.data_dir
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


def evaluation_data(model: nn.Module, config: TrainConfig, checkpoint: dict, device: torch.device,
                    data: Optional[Data] = None) -> Prepared:
    """A run's data prepared as in training (binarized test set, the run's test subset, on ``device``)."""
    return prepare(model, run_data(config, checkpoint, data), config, device)


def evaluate(run: Union[Run, str, Path], data: Optional[Data] = None, particles: int = 1000,
             compare: Union[Run, str, Path, None] = None, seed: int = 0, device: str = "cpu",
             precision: str = "fp32", test_size: Optional[int] = None, progress: bool = False,
             trust_recipe: bool = False, model: Optional[nn.Module] = None) -> dict:
    """The test ELBO and the importance-sampled test log p(x) with K = ``particles`` of a run (a
    :class:`~pyro_vae.engine.Run` or its directory), as ``pyro-vae evaluate`` computes them.

    ``data`` is the run's data when it was given in memory; ``test_size`` evaluates a fixed subset
    of the test set (default: the run's own). With ``compare`` (another run on the same test data),
    also log p(x) of this run minus the other's, paired by test datapoint, on the same draws. Returns
    a dict of :class:`~pyro_vae.evaluation.Estimate` s (``test_elbo``, ``test_log_likelihood``,
    ``difference``, ``other_log_likelihood``; ``test_accuracy`` for a classifier) and how sites were
    scored; writes nothing.
    """
    this = _opened(run, data, device, test_size, trust_recipe, model)
    other = None if compare is None else _opened(compare, data, device, test_size, trust_recipe, None)
    if other is not None and not _same_test_data(this[1].test, other[1].test):
        raise ConfigError(f"compare {compare}: its test images differ from this run's ({other[2].dataset}, binarize "
                          f"{other[2].binarize} against {this[2].dataset}, binarize {this[2].binarize}): compare runs "
                          "on the same data")
    pyro.set_rng_seed(seed)
    result = {"scoring": evaluation.SCORING, "test_elbo": _estimate(evaluation.elbo, this, 1, precision, progress)}
    draws = pyro.util.get_rng_state()  # a compared run's log p(x) gets the same draws
    result["test_log_likelihood"] = _estimate(evaluation.log_likelihood, this, particles, precision, progress)
    module, prepared, _ = this
    if hasattr(module, "classify") and len(prepared.test) > 1:
        result["test_accuracy"] = evaluation.accuracy(module, prepared.test[0], prepared.test[1])
    if other is not None:
        pyro.util.set_rng_state(draws)
        result["other_log_likelihood"] = _estimate(evaluation.log_likelihood, other, particles, precision, progress)
        result["difference"] = evaluation.paired_difference(result["test_log_likelihood"],
                                                            result["other_log_likelihood"])
    return result


def _opened(run, data, device: str, test_size: Optional[int], trust_recipe: bool, model) -> tuple:
    """(model, prepared data, configuration) of a run or run directory, for evaluation."""
    torch_device = resolve_device(device)
    if isinstance(run, Run):
        module, config, checkpoint = run.model.to(torch_device), run.config, {"data_in_memory": True}
        data = run.data if data is None else data
    else:
        module, config, checkpoint = load_run(run, device, model=model, trust_recipe=trust_recipe)
        config.out = str(run)
    if test_size is not None:
        config.test_size = test_size
    return module, evaluation_data(module, config, checkpoint, torch_device, data), config


def _same_test_data(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def _estimate(estimator, opened: tuple, particles: int, precision: str, progress: bool) -> evaluation.Estimate:
    """``estimator`` (:func:`~pyro_vae.evaluation.elbo` or :func:`~pyro_vae.evaluation.log_likelihood`) of an
    opened run's test data, with the run's compile setting."""
    module, prepared, config = opened
    scored = param_sites.served(module)
    return estimator(scored.model, scored.guide, prepared.test_arguments, particles, progress=progress,
                     precision=precision, compile=config.compile)
