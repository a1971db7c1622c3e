"""Run files written atomically, and checkpoints loaded without executing code.

Every file of a run directory is written to a temporary file in the same folder, flushed to
disk and renamed over the old one (:func:`os.replace` is atomic on POSIX and Windows): a run
killed mid-write leaves the previous complete file in place, never a torn one.

Checkpoints are read with ``torch.load(..., weights_only=True)``, which only rebuilds tensors and
plain containers (dict, list, tuple, str, numbers, None) and refuses every other object: a
checkpoint cannot run code on the machine that loads it.
"""

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CheckpointError

CHECKPOINT_FORMAT = "pyro-vae-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the model's recipe, every process's random states, the position in the epoch


def _umask() -> int:
    """The process's file-creation mask, read where a file is written: from ``/proc/self/status`` on
    Linux, which leaves it alone, else by setting it and putting it back at once."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomically(path: os.PathLike, write: Callable[[Any], None], mode: str) -> None:
    """Write ``path`` through a temporary file; on any failure the old ``path`` is left as it was.

    An operating-system error (a full disk, a folder that cannot be written) becomes a
    :class:`CheckpointError` saying so.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide run files from a team
        with os.fdopen(handle, mode) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
            raise CheckpointError(f"could not write {path} ({error.strerror or error}): {kept}; free disk space "
                                  "or make the folder writable, then resume") from None
        raise


def write_json(path: os.PathLike, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically."""
    _write_atomically(path, lambda stream: stream.write(json.dumps(value, indent=2) + "\n"), "w")


def save_checkpoint(path: os.PathLike, state: dict) -> None:
    """Save ``state`` (tensors and plain containers only), atomically."""
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    _write_atomically(path, lambda stream: torch.save(state, stream), "wb")


def load_checkpoint(path: os.PathLike) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: pass a run directory written by 'pyro-vae train'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} was refused: it holds objects other than tensors and plain data, which could run code; "
            "only use checkpoints written by pyro-vae"
        ) from None
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}): "
                              "it is truncated or corrupt; use an intact copy") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint: pass a run directory written by 'pyro-vae train'")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, this pyro-vae reads "
                              f"version {CHECKPOINT_VERSION}: use the pyro-vae release that wrote it")
    return state
