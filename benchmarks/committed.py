"""The committed results in ``benchmarks/results/``: a benchmark replaces them only when asked.

Every benchmark that can write there refuses, before it computes anything, to replace a file
that already exists in :data:`RESULTS` unless it is given ``--overwrite``. Files
elsewhere are the user's own and are written as asked.
"""

import sys
from pathlib import Path
from typing import Iterable

from pyro_vae import ConfigError

RESULTS = Path(__file__).resolve().parent / "results"
#: Scratch folders of the benchmarks, relative to the working directory (``runs/`` is ignored by git).
SCRATCH = Path("runs") / "benchmarks"


def is_committed(path: Path) -> bool:
    """Whether ``path`` lies in :data:`RESULTS`."""
    return Path(path).resolve().is_relative_to(RESULTS)


def refuse_to_replace(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise :class:`~pyro_vae.ConfigError` if one of ``paths`` is an existing file in
    :data:`RESULTS` and ``overwrite`` is false."""
    existing = sorted(path.name for path in map(Path, paths) if is_committed(path) and path.exists())
    if existing and not overwrite:
        raise ConfigError(f"{RESULTS} holds the committed results ({', '.join(existing)}): pass --overwrite to "
                          "replace them, or --out to write elsewhere")


def exit_if_refused(out: Path, overwrite: bool) -> None:
    """:func:`refuse_to_replace` for the JSON file ``out`` and the markdown beside it, as a one-line
    error and exit status 2."""
    try:
        refuse_to_replace([Path(out), Path(out).with_suffix(".md")], overwrite)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
