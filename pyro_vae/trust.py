"""The model factories this user trusts: those they trained with, and those they said they trust.

A run folder names its model's factory by import path (:mod:`pyro_vae.recipes`), and opening the
run imports and calls it. A folder someone else wrote could name any callable (``os:system``), so
a factory outside pyro-vae and the installed ``pyro_vae.models`` entry points is opened only if it
is *remembered* here: named by this user in a training command or call, or trusted by them when
opening a run (``--trust-recipe``, ``trust_recipe=True``), as direnv remembers the folders it was
allowed to load.

The record is a per-user JSON file, :func:`trust_file` (``$XDG_CONFIG_HOME/pyro-vae/`` or
``~/.config/pyro-vae/``). Each entry pairs the import path with the file its module is found in,
located without importing it (:func:`module_origin`): a module of the same name found elsewhere,
in a run folder or the current directory, is not trusted.
"""

import contextlib
import importlib.machinery
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

from .checkpoint import write_json
from .errors import CheckpointError

TRUST_FILE_NAME = "trusted_factories.json"
_remembered_now: set[tuple[str, str]] = set()  # this process's, in case the file cannot be written
_trusting = False


def trust_file() -> Path:
    """The per-user file of remembered factories."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "pyro-vae" / TRUST_FILE_NAME


def module_origin(module_name: str) -> Optional[str]:
    """The file that ``import module_name`` would load, found without running any module's code.

    Parent packages are searched for, not imported (``importlib.util.find_spec`` would import
    them). ``None`` if no finder knows the module.
    """
    if module_name in sys.modules:
        module = sys.modules[module_name]
        return getattr(module, "__file__", None) or f"<{module_name}>"
    search_path, spec = None, None
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        loaded = sys.modules.get(prefix)
        if loaded is not None:
            search_path = getattr(loaded, "__path__", None)
            continue
        spec = _find_spec(prefix, search_path)
        if spec is None:
            return None
        search_path = spec.submodule_search_locations
    if spec is None:
        return None
    return spec.origin if spec.origin not in (None, "namespace") else f"<{module_name}>"


def _find_spec(name: str, search_path) -> Optional[importlib.machinery.ModuleSpec]:
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(name, search_path) if find_spec is not None else None
        if spec is not None:
            return spec
    return None


def _entry(factory: str) -> Optional[tuple[str, str]]:
    origin = module_origin(factory.partition(":")[0])
    return None if origin is None else (factory, str(origin))


def _read() -> set[tuple[str, str]]:
    try:
        entries = json.loads(trust_file().read_text())
        return {(entry["factory"], entry["module_file"]) for entry in entries}
    except (OSError, ValueError, TypeError, KeyError):
        return set()


def is_remembered(factory: str) -> bool:
    """Whether this user trained with or trusted ``factory`` (``module:attribute``), from the module found now."""
    entry = _entry(factory)
    return entry is not None and (entry in _remembered_now or entry in _read())


def remember(factory: str) -> None:
    """Remember that this user trusts ``factory`` as its module is found now (nothing if it is not found)."""
    entry = _entry(factory)
    if entry is None or is_remembered(factory):
        return
    _remembered_now.add(entry)
    entries = sorted(_read() | {entry})
    try:
        write_json(trust_file(), [{"factory": name, "module_file": origin} for name, origin in entries])
    except CheckpointError as error:  # a read-only home: trusted for this process only
        warnings.warn(f"could not remember the model factory {factory} in {trust_file()} ({error}); runs of it "
                      "will need --trust-recipe to be opened", stacklevel=2)


@contextlib.contextmanager
def trusting():
    """Within this block, the factories of the runs opened are trusted and remembered (``--trust-recipe``)."""
    global _trusting
    before, _trusting = _trusting, True
    try:
        yield
    finally:
        _trusting = before


def trusting_now() -> bool:
    """Whether the user said, for the command or call under way, that they trust the runs it opens."""
    return _trusting
