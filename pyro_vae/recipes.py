"""How a run rebuilds its model: a factory named by import path, and its keyword arguments.

A *recipe* is ``{"factory": "package.module:function", "kwargs": {...}}`` with JSON-able keyword
arguments. A run directory stores the recipe of its model, so that ``pyro-vae evaluate RUN``,
``pyro-vae train --resume RUN`` and :func:`pyro_vae.load_run` rebuild a user's model from any
importable module; the weights come from the checkpoint.

A factory is named by

* a built-in name (``vae``, ``hierarchical``, ``m2``, ``m1m2``, ``cvae``: :mod:`pyro_vae.models`),
* a name another package registers in the ``pyro_vae.models`` entry-point group, or
* an import path ``package.module:attribute`` (a function or a class).

:func:`build` calls it with those of the *common arguments* (:data:`COMMON_ARGUMENTS`: the data's
shape and size, and the usual network settings) that its signature declares, plus the user's own
keyword arguments (``--model-arg KEY=VALUE``). A factory whose module is ``__main__`` (a script or
a notebook) cannot be imported by another process: such a run is rebuilt by passing the model
object to :func:`pyro_vae.load_run`.
"""

import importlib
import inspect
import json
from importlib.metadata import entry_points
from typing import Any, Callable, Optional

from torch import nn

from .errors import ConfigError

ENTRY_POINT_GROUP = "pyro_vae.models"
#: Arguments the engine offers every factory; each factory receives those it declares.
COMMON_ARGUMENTS = ("data_dim", "latent_dim", "hidden_dims", "activation", "likelihood", "init_std", "image_shape",
                    "num_data", "num_classes")
#: The built-in models' factories.
BUILT_IN = {"vae": "pyro_vae.models:vae", "hierarchical": "pyro_vae.models:hierarchical", "m2": "pyro_vae.models:m2",
            "m1m2": "pyro_vae.models:m1m2", "cvae": "pyro_vae.models:cvae"}


def factory_path(name: str) -> str:
    """The import path ``module:attribute`` of a built-in name, a registered name or an import path."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    registered = {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}
    if name in registered:
        return registered[name]
    if ":" not in name:
        known = sorted({*BUILT_IN, *registered})
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(known)}, or give an import path "
                          "package.module:factory")
    return name


def import_factory(name: str) -> Callable[..., nn.Module]:
    """The factory ``name`` refers to (see :func:`factory_path`)."""
    path = factory_path(name)
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"model {path}: cannot import {module_name} ({error}); put it on PYTHONPATH or install "
                          "its package") from None
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"model {path}: {module_name} has no {attribute!r}") from None
    if not callable(factory):
        raise ConfigError(f"model {path} is a {type(factory).__name__}, not a function or class that builds a model")
    return factory


def declared(factory: Callable) -> tuple[set, bool]:
    """The keyword names ``factory`` declares, and whether it takes ``**kwargs``."""
    parameters = inspect.signature(factory).parameters.values()
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def check_arguments(name: str, model_args: Optional[dict] = None) -> None:
    """Refuse, before any data is loaded, a factory that cannot be imported or ``model_args`` it does not take.

    A factory may check its arguments further with an attribute ``check_arguments(**model_args)``
    that raises :class:`~pyro_vae.ConfigError` (``m1m2`` checks that its M1 run exists).
    """
    factory = import_factory(name)
    names, takes_any = declared(factory)
    unknown = sorted(key for key in (model_args or {}) if key not in names and not takes_any)
    if unknown:
        raise ConfigError(f"model {factory_path(name)} takes no argument {', '.join(unknown)}: it takes "
                          f"{', '.join(sorted(names)) or 'none'}")
    extra_check = getattr(factory, "check_arguments", None)
    if extra_check is not None:
        extra_check(**(model_args or {}))


def recipe(name: str, common: dict, model_args: Optional[dict] = None) -> dict:
    """The recipe calling factory ``name`` with the ``common`` arguments it declares and ``model_args``.

    ``None`` values of common arguments are left out, so that the factory's own defaults apply.
    """
    check_arguments(name, model_args)
    names, _ = declared(import_factory(name))
    kwargs = {key: value for key, value in common.items() if key in names and value is not None}
    kwargs.update(model_args or {})
    try:
        json.dumps(kwargs)
    except TypeError as error:
        raise ConfigError(f"model {factory_path(name)}: its arguments must be JSON values (numbers, strings, "
                          f"lists): {error}") from None
    return {"factory": factory_path(name), "kwargs": kwargs}


def build(model_recipe: dict) -> nn.Module:
    """The model a recipe describes (untrained: the weights come from a checkpoint or from training)."""
    factory = import_factory(model_recipe["factory"])
    try:
        module = factory(**model_recipe["kwargs"])
    except ConfigError:
        raise
    except TypeError as error:
        raise ConfigError(f"model {model_recipe['factory']} could not be built with {model_recipe['kwargs']}: "
                          f"{error}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model {model_recipe['factory']} returned a {type(module).__name__}, not a torch.nn.Module "
                          "with model and guide methods")
    return module


def recipe_of(module: nn.Module, model_recipe: Optional[dict]) -> Optional[dict]:
    """The recipe a run stores for ``module``: ``model_recipe`` with the module's own ``rebuild_kwargs``
    (a dict, optional) laid over its arguments, for a model that is rebuilt from other arguments than
    it was built with (``m1m2`` rebuilds M1 from its recipe, not from M1's run directory)."""
    if model_recipe is None:
        return None
    return {**model_recipe, "kwargs": {**model_recipe["kwargs"], **getattr(module, "rebuild_kwargs", {})}}


def parse_model_args(pairs) -> dict:
    """``["KEY=VALUE", ...]`` as a dict; each VALUE is read as JSON if it parses (numbers, lists, true), else a string."""
    values: dict[str, Any] = {}
    for pair in pairs or ():
        key, separator, text = pair.partition("=")
        if not separator or not key.isidentifier():
            raise ConfigError(f"--model-arg {pair!r} is not KEY=VALUE with KEY a Python name")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


def importable(module: nn.Module) -> Optional[str]:
    """Why ``module``'s class cannot be rebuilt in another process, or ``None`` if it can."""
    where = type(module).__module__
    if where == "__main__":
        return (f"{type(module).__name__} is defined in __main__ (a script or notebook), which another process "
                "cannot import")
    return None
