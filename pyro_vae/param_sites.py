"""A model's ``pyro.param`` sites, trained, saved and restored as parameters of its module.

A model may declare a parameter with ``pyro.param(name, init, constraint=...)`` instead of as a
module parameter; :class:`pyro.infer.SVI` trains every param site it meets, and so does
:func:`pyro_vae.fit`. Before the first step :func:`adopt` runs guide and model once and gives the
module a submodule ``pyro_params`` (:class:`ParamSites`) holding the unconstrained value of each
param site that is not already one of the module's parameters, as Pyro's param store holds it.
The optimizer, DDP, the checkpoint (``state_dict``, with the constraints as plain data) and the
compiled step then treat them as any parameter. While model or guide run through
:func:`served`, ``pyro.param`` returns ``transform_to(constraint)`` of the module's tensor (so a
traced step sees the tensor it substitutes); :meth:`ParamSites.install` puts the same tensors
into Pyro's param store, where SVI would leave them.

Assumptions: the param sites are the same at every call (a site first met in a later step is
created by Pyro from its initial value and not trained, as in a JIT-compiled Pyro objective).
"""

import re
from typing import Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import constraints, transform_to

import pyro.distributions.constraints as pyro_constraints

from .errors import CheckpointError
from .handled import Handled

ATTRIBUTE = "pyro_params"
_CONSTRAINT_MODULES = (constraints, pyro_constraints)


def constraint_data(constraint: constraints.Constraint) -> dict:
    """A constraint as plain data (its class's name and attributes), to be saved with ``weights_only``."""
    def plain(value):
        return constraint_data(value) if isinstance(value, constraints.Constraint) else value
    return {"constraint": type(constraint).__name__, "attributes": {k: plain(v) for k, v in vars(constraint).items()}}


def constraint_from_data(data: dict) -> constraints.Constraint:
    """The constraint :func:`constraint_data` described; only classes of torch's and Pyro's constraint modules."""
    cls = next((getattr(module, data["constraint"]) for module in _CONSTRAINT_MODULES
                if isinstance(getattr(module, data["constraint"], None), type)), None)
    if cls is None or not issubclass(cls, constraints.Constraint):
        raise CheckpointError(f"the checkpoint names the constraint {data['constraint']!r}, which is not one of "
                              "torch's or Pyro's: pass a run directory written by 'pyro-vae train'")
    constraint = cls.__new__(cls)
    for key, value in data["attributes"].items():
        setattr(constraint, key, constraint_from_data(value) if isinstance(value, dict) else value)
    return constraint


class ParamSites(nn.Module):
    """The unconstrained values of named ``pyro.param`` sites, as parameters, with their constraints."""

    def __init__(self, values: dict, site_constraints: dict):
        super().__init__()
        self.names = list(values)
        self.constraints = dict(site_constraints)
        self.attributes = {}
        for name, value in values.items():
            attribute = re.sub(r"\W", "_", name)
            while attribute in self.attributes.values() or not attribute.isidentifier():
                attribute = "_" + attribute
            self.attributes[name] = attribute
            self.register_parameter(attribute, nn.Parameter(value.detach().clone()))

    def unconstrained(self, name: str) -> torch.Tensor:
        return getattr(self, self.attributes[name])

    def constrained(self, name: str) -> torch.Tensor:
        return transform_to(self.constraints[name])(self.unconstrained(name))

    def install(self) -> None:
        """Put the tensors themselves into Pyro's current param store, as SVI leaves them."""
        pyro.get_param_store().set_state({"params": {name: self.unconstrained(name) for name in self.names},
                                          "constraints": dict(self.constraints)})

    def get_extra_state(self) -> dict:
        return {"names": self.names, "constraints": [constraint_data(self.constraints[n]) for n in self.names]}

    def set_extra_state(self, state: dict) -> None:
        if state["names"] != self.names:
            raise CheckpointError(f"the checkpoint's pyro.param sites {state['names']} are not the model's "
                                  f"{self.names}: pass the model the run was trained with")
        self.constraints = {n: constraint_from_data(c) for n, c in zip(state["names"], state["constraints"])}

    @classmethod
    def from_state_dict(cls, state: dict, prefix: str = ATTRIBUTE + ".") -> Optional["ParamSites"]:
        """The sites a module's state dict holds under ``prefix`` (placeholders for its values), or None."""
        extra = state.get(prefix + "_extra_state")
        if extra is None:
            return None
        sites = cls({name: torch.zeros(0) for name in extra["names"]}, {})
        sites.set_extra_state(extra)
        for name in sites.names:
            sites.unconstrained(name).data = state[prefix + sites.attributes[name]].clone()
        return sites


class _Serve(Messenger):
    """Answers ``pyro.param`` for the sites of a :class:`ParamSites` from the module's own tensors."""

    def __init__(self, sites: ParamSites):
        super().__init__()
        self.sites = sites

    def _pyro_param(self, msg) -> None:
        name = msg["args"][0]
        if name in self.sites.attributes:
            msg["value"] = self.sites.constrained(name)
            msg["done"] = True


class _Served(Handled):
    """A model whose ``model`` and ``guide`` run with its :class:`ParamSites` answering ``pyro.param``."""

    def handler(self) -> Messenger:
        return _Serve(getattr(self.module, ATTRIBUTE))


def served(module: nn.Module) -> nn.Module:
    """``module``, or for one with ``pyro.param`` sites a wrapper whose ``model`` and ``guide`` read them
    from the module's tensors (what the training step and evaluation run)."""
    return _Served(module) if isinstance(getattr(module, ATTRIBUTE, None), ParamSites) else module


def adopt(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Give ``module`` a :class:`ParamSites` of the param sites its guide and model meet on ``args`` that
    are not its own parameters, at their initial values (no random draw leaves this call)."""
    if hasattr(module, ATTRIBUTE):
        return
    own = {id(p) for p in module.parameters()}
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=devices):
        guide = poutine.trace(module.guide).get_trace(*args, **kwargs)
        model = poutine.trace(poutine.replay(module.model, trace=guide)).get_trace(*args, **kwargs)
        state = pyro.get_param_store().get_state()
    names = [name for trace in (guide, model) for name, site in trace.nodes.items()
             if site["type"] == "param" and name in state["params"] and id(state["params"][name]) not in own]
    values = {name: state["params"][name] for name in dict.fromkeys(names)}
    if values:
        site_constraints = {name: state["constraints"][name] for name in values}
        setattr(module, ATTRIBUTE, ParamSites(values, site_constraints))


def restore(module: nn.Module, state: dict) -> None:
    """Give a rebuilt ``module`` the :class:`ParamSites` its checkpoint's ``state`` holds, if any, so that
    ``load_state_dict(state)`` fits."""
    if not hasattr(module, ATTRIBUTE):
        sites = ParamSites.from_state_dict(state)
        if sites is not None:
            setattr(module, ATTRIBUTE, sites)
