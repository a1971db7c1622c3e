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

A recipe read from a run folder is data, not a command: :func:`check_recipe` refuses it, before
anything is imported, unless each factory it names is trusted (:func:`is_trusted`: a built-in, an
installed entry point, or one this user trained with or trusted, :mod:`pyro_vae.trust`) and its
keyword arguments are plain JSON values; :func:`build` checks that the factory is a callable
attribute of its module and that the arguments fit its signature before calling it.
"""

import importlib
import inspect
import json
from importlib.metadata import entry_points
from typing import Any, Callable, Optional

from torch import nn

from . import trust
from .errors import CheckpointError, ConfigError

ENTRY_POINT_GROUP = "pyro_vae.models"
#: Arguments the engine offers every factory; each factory receives those it declares.
COMMON_ARGUMENTS = ("data_dim", "latent_dim", "hidden_dims", "activation", "likelihood", "init_std", "image_shape",
                    "num_data", "num_classes")
#: The built-in models' factories.
BUILT_IN = {"vae": "pyro_vae.models:vae", "hierarchical": "pyro_vae.models:hierarchical", "m2": "pyro_vae.models:m2",
            "m1m2": "pyro_vae.models:m1m2", "cvae": "pyro_vae.models:cvae"}


def registered_factories() -> dict:
    """The factories installed packages register in the ``pyro_vae.models`` entry-point group, by name
    (read from their metadata: nothing is imported)."""
    return {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}


def factory_path(name: str) -> str:
    """The import path ``module:attribute`` of a built-in name, a registered name or an import path."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    registered = registered_factories()
    if name in registered:
        return registered[name]
    if ":" not in name:
        known = sorted({*BUILT_IN, *registered})
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(known)}, or give an import path "
                          "package.module:factory")
    return name


def is_trusted(path: str) -> bool:
    """Whether the factory ``module:attribute`` may be imported and called: a built-in, an installed
    entry point's, or one this user trained with or trusted (:mod:`pyro_vae.trust`)."""
    return path in BUILT_IN.values() or path in registered_factories().values() or trust.is_remembered(path)


def name_factory(name: str) -> str:
    """The import path of a factory the user names to train with, remembered as trusted (:mod:`pyro_vae.trust`)."""
    path = factory_path(name)
    if not is_trusted(path):
        trust.remember(path)
    return path


def check_recipe(model_recipe, where: str) -> None:
    """Refuse, before anything is imported, a recipe read from ``where`` that is not plain data naming
    trusted factories; the recipes nested in its arguments (M1's in an ``m1m2`` run) too.

    Within :func:`pyro_vae.trust.trusting` (``--trust-recipe``) untrusted factories are remembered instead.
    """
    for nested in _recipes_in(model_recipe, where):
        path = nested["factory"]
        module_name = path.partition(":")[0]
        found = trust.module_origin(module_name)
        if found is None or is_trusted(path):  # a module that is not found runs nothing: importing it says so
            continue
        if trust.trusting_now():
            trust.remember(path)
            continue
        raise CheckpointError(f"{where} names the model factory {path} (module {module_name}: {found}), which you "
                              "have not trained with or trusted, and opening the run would run it: if you trust "
                              "whoever wrote the run, pass --trust-recipe (trust_recipe=True in Python), or pass the "
                              "model yourself (load_run(RUN, model=...))")


def _recipes_in(model_recipe, where: str) -> list:
    """``model_recipe`` and the recipes in its arguments, each checked to be a recipe of plain JSON values."""
    if (not isinstance(model_recipe, dict) or set(model_recipe) != {"factory", "kwargs"}
            or not isinstance(model_recipe["factory"], str) or model_recipe["factory"].count(":") != 1
            or not isinstance(model_recipe["kwargs"], dict)):
        raise CheckpointError(f"{where}: its model recipe is not {{'factory': 'module:attribute', 'kwargs': {{...}}}}; "
                              "pass a run directory written by 'pyro-vae train'")
    if not _is_plain(model_recipe["kwargs"]):
        raise CheckpointError(f"{where}: the arguments of its model factory {model_recipe['factory']} are not plain "
                              "JSON values (numbers, strings, lists, dicts); pass a run directory written by "
                              "'pyro-vae train'")
    nested = [value for value in model_recipe["kwargs"].values() if isinstance(value, dict) and "factory" in value]
    return [model_recipe] + [inner for value in nested for inner in _recipes_in(value, where)]


def _is_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_is_plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str))


def import_factory(name: str) -> Callable[..., nn.Module]:
    """The factory ``name`` refers to (see :func:`factory_path`), which must be trusted (:func:`is_trusted`)."""
    path = factory_path(name)
    check_recipe({"factory": path, "kwargs": {}}, f"model {path}")
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

    ``None`` values of common arguments are left out, so that the factory's own defaults apply. The
    arguments are kept as JSON holds them (a tuple as a list), so that the model is built from the
    same values the run folder records and :func:`check_recipe` reads back.
    """
    check_arguments(name, model_args)
    names, _ = declared(import_factory(name))
    kwargs = {key: value for key, value in common.items() if key in names and value is not None}
    kwargs.update(model_args or {})
    try:
        kwargs = json.loads(json.dumps(kwargs))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model {factory_path(name)}: its arguments must be JSON values (numbers, strings, "
                          f"lists): {error}") from None
    return {"factory": factory_path(name), "kwargs": kwargs}


def make(name: str, common: dict, model_args: Optional[dict] = None) -> tuple[dict, nn.Module]:
    """The recipe of factory ``name`` (:func:`recipe`) and the untrained model it builds (:func:`build`)."""
    model_recipe = recipe(name, common, model_args)
    return model_recipe, build(model_recipe)


def build(model_recipe: dict, where: str = "the model recipe") -> nn.Module:
    """The model a recipe read from ``where`` describes (untrained: the weights come from a checkpoint or
    from training); the recipe is checked first (:func:`check_recipe`)."""
    check_recipe(model_recipe, where)
    factory = import_factory(model_recipe["factory"])
    try:
        inspect.signature(factory).bind(**model_recipe["kwargs"])
    except TypeError as error:
        raise ConfigError(f"model {model_recipe['factory']} cannot be built with {model_recipe['kwargs']}: "
                          f"{error}") from None
    except ValueError:  # a callable without a signature Python can read: its call will say
        pass
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
