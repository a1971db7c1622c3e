"""A user's model run under a Pyro effect handler that the engine adds (its ``pyro.param`` sites, a
KL warm-up's beta), without changing the model: :class:`Handled` wraps it, and the objective, the
compiled step and the evaluations run the wrapper's ``model`` and ``guide``."""

from pyro.poutine.messenger import Messenger
from torch import nn


class Handled(nn.Module):
    """``module`` whose ``model`` and ``guide`` run under :meth:`handler`; its other attributes are the
    module's own (``inputs``, ``classify``, ``labels``, ...)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)

    def handler(self) -> Messenger:
        raise NotImplementedError

    def model(self, *args, **kwargs):
        with self.handler():
            return self.module.model(*args, **kwargs)

    def guide(self, *args, **kwargs):
        with self.handler():
            return self.module.guide(*args, **kwargs)
