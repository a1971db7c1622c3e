"""Errors that pyro-vae reports to its users.

Every error raised on bad input derives from :class:`PyroVAEError`; its message is one line
naming the problem and what to do about it. The command line prints that line and exits with
status 2, without a traceback.
"""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, for a one-line report of a deeper error."""
    return next((line for line in str(error).splitlines() if line.strip()), "")


class PyroVAEError(Exception):
    """Base class of the errors that carry a user-facing, one-line message."""


class ConfigError(PyroVAEError, ValueError):
    """An impossible or inconsistent configuration (negative sizes, unknown names, ...)."""


class DataError(PyroVAEError, RuntimeError):
    """Missing, corrupt or unsuitable data."""


class CheckpointError(PyroVAEError, RuntimeError):
    """A run directory or checkpoint that cannot be read or trusted."""


class RunLockError(PyroVAEError, RuntimeError):
    """A run folder that another process is writing (it holds the folder's lock, :class:`pyro_vae.rundir.RunLock`)."""


class TrainingError(PyroVAEError, RuntimeError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary on a signal (SIGTERM, SIGINT), after saving a checkpoint.

    Not a :class:`PyroVAEError`: nothing was wrong with the input. ``signal_number`` is the signal;
    the command line exits with ``128 + signal_number``, as a shell reports a process ended by it.
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message, signal_number)  # both in args: it pickles (to a benchmark's parent process)
        self.signal_number = signal_number

    def __str__(self) -> str:
        return self.args[0]
