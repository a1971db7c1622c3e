"""Stopping training at a step boundary when the process is asked to stop (SIGTERM, SIGINT).

Clusters stop jobs with SIGTERM and users with Ctrl-C (SIGINT). Inside :class:`StopSignals` both
only record that a stop was asked for; the training loop looks at :attr:`StopSignals.signal` between
steps, saves a checkpoint there and ends, so that a resumed run continues exactly where it stopped.
Handlers can only be installed from the main thread; elsewhere the signals keep their usual effect.
"""

import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """A context in which SIGTERM and SIGINT set :attr:`signal` instead of ending the process.

    A second signal of the same kind while the first is being handled ends the process as usual
    (for a user who does not want to wait for the checkpoint).
    """

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, number: int, frame) -> None:
        if self.signal == number:  # asked twice: stop now
            signal.signal(number, self._previous.get(number, signal.SIG_DFL))
            signal.raise_signal(number)
        self.signal = number

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
