"""The run directory: which folder a run writes, what it may replace, and who writes it.

A folder *holds a run* when it has any of :data:`RUN_MARKERS`. Training into such a folder is
refused unless the caller asks to overwrite it, which first deletes the files a run writes
(:func:`clear_run`), so that no picture of the old run stays beside the new one. Resuming writes
into the folder of the run it continues.

A run holds the folder's lock (:class:`RunLock`, a file ``.lock`` naming the process) while it
trains: a second training into the same folder is refused. A lock left by a process that no
longer exists on this machine is taken over, so a crashed run never blocks its folder.
"""

import errno
import os
import socket
import time
from pathlib import Path
from typing import Optional

from .errors import ConfigError, RunLockError

#: Files whose presence means a folder holds a run.
RUN_MARKERS = ("checkpoint.pt", "config.json", "history.json", "metrics.json")
#: Files a run writes besides its pictures (``*.png``).
RUN_FILES = (*RUN_MARKERS, "evaluation.json")
LOCK_NAME = ".lock"


def holds_run(folder: os.PathLike) -> bool:
    """Whether ``folder`` has the files of a run."""
    return any((Path(folder) / name).exists() for name in RUN_MARKERS)


def fresh_folder(parent: os.PathLike, name: str) -> Path:
    """``parent/name-YYYYmmdd-HHMMSS``, with ``-2``, ``-3``, ... appended if that exists already."""
    stem = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = stem, 1
    while candidate.exists():
        number += 1
        candidate = stem.with_name(f"{stem.name}-{number}")
    return candidate


def check_new_run(folder: os.PathLike, overwrite: bool) -> None:
    """Refuse a folder that holds a run unless ``overwrite``; a file is never a run folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file, not a folder: pass a folder for the run")
    if holds_run(folder) and not overwrite:
        raise ConfigError(f"{folder} holds a run already: continue it with --resume {folder}, pass a new --out, "
                          "or --overwrite to replace it")


def clear_run(folder: os.PathLike) -> None:
    """Delete the files a run writes in ``folder`` (its :data:`RUN_FILES` and pictures), nothing else."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and (path.name in RUN_FILES or path.suffix == ".png"):
            path.unlink()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder, held from ``__enter__`` to ``__exit__``.

    The lock is a file created with ``O_EXCL`` holding ``host pid``. If it exists and names a
    process of this host that has ended, it is stale and is replaced; a lock from another host
    is respected (its process cannot be checked from here) and the message says how to clear it.
    A lock that is held raises :class:`~pyro_vae.errors.RunLockError`.
    """

    def __init__(self, folder: os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner[0] == socket.gethostname() and not _process_exists(owner[1]):
                    self.path.unlink(missing_ok=True)
                    continue
                holder = f"process {owner[1]} on {owner[0]}" if owner else "another process"
                raise RunLockError(f"{self.path.parent} is being written by {holder}: wait for it to finish or "
                                  f"pass another --out (if no such process runs, delete {self.path})") from None
            with os.fdopen(descriptor, "w") as stream:
                stream.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return self
        raise RunLockError(f"could not take the lock {self.path}: another run took it first; pass another --out")

    def _owner(self) -> Optional[tuple[str, int]]:
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc_info) -> None:
        if self.held:
            try:
                self.path.unlink()
            except OSError as error:
                if error.errno != errno.ENOENT:
                    raise
            self.held = False
