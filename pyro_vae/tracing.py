"""Tracing a Pyro computation to one graph of ATen operations, to replay it or compile it.

Pyro runs a model and guide as ordinary Python: every call pays for its effect handlers, and
Pyro's ``differentiable_loss`` reads the loss on the host (``torch_item``) and checks it for NaN
(``warn_if_nan``). :func:`trace` runs a function once on real tensors under
:func:`torch.fx.experimental.proxy_tensor.make_fx`, as JAX traces a NumPyro program, and records
every ATen operation it performs, the backward pass and in-place updates included. Replaying the
graph gives the same numbers and draws the same random numbers as the Python function for the
same seed; :func:`compile_graph` hands it to TorchInductor, which fuses the elementwise work.

A traced graph is valid for the shapes, dtypes and devices it was traced with and for the values
of non-tensor arguments (:func:`signature`): what every traced program assumes, as Pyro's
``JitTrace*`` objectives do. Data-dependent control flow cannot be traced.
"""

import contextlib
import logging
import sys
from typing import Callable, Sequence

import pyro
import torch


@contextlib.contextmanager
def traceable():
    """Pyro's per-call host reads switched off, as they must be while tracing.

    ``torch_item`` (``.item()`` of the loss) becomes ``detach`` and ``warn_if_nan`` (a NaN check
    of the loss and a backward hook checking its gradient) is dropped: both read values that do
    not exist while tracing; a traced training step checks finiteness on the device itself.
    Validation (argument checks that read values) is off as well, as in Pyro's JIT objectives.
    """
    def item(x):
        return x.detach() if torch.is_tensor(x) else x

    def no_check(value, *args, **kwargs):
        return value

    saved = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("pyro.infer", "pyro_vae")):
            continue
        for attr, new in (("torch_item", item), ("warn_if_nan", no_check)):
            if callable(getattr(module, attr, None)):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, new)
    try:
        with pyro.validation_enabled(False):
            yield
    finally:
        for module, attr, old in reversed(saved):
            setattr(module, attr, old)


def signature(value) -> object:
    """What a traced graph is specialised to: shapes, dtypes and devices of tensors; other values."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, signature(v)) for k, v in value.items())))
    return ("value", value)


def flatten(value) -> tuple[list[torch.Tensor], Callable]:
    """The tensors in a nest of tuples and lists, and a function rebuilding the nest from (other) tensors."""
    tensors: list[torch.Tensor] = []

    def template(node):
        if torch.is_tensor(node):
            tensors.append(node)
            return len(tensors) - 1, None
        if isinstance(node, (tuple, list)):
            return None, type(node)([template(v) for v in node])
        return None, node

    structure = template(value)

    def rebuild(values: Sequence[torch.Tensor]):
        def fill(node):
            index, rest = node
            if index is not None:
                return values[index]
            if isinstance(rest, (tuple, list)):
                return type(rest)(fill(v) for v in rest)
            return rest
        return fill(structure)

    return tensors, rebuild


def trace(function: Callable, *inputs: torch.Tensor) -> torch.fx.GraphModule:
    """The graph of ATen operations ``function(*inputs)`` performs, recorded by running it once.

    The run does not advance the random streams (the graph's first replay draws what the
    function would have drawn) and keeps its parameters out of Pyro's global parameter store.
    In-place operations on ``inputs`` happen during the run: pass copies of anything that must
    not change.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    devices = sorted({t.device.index or 0 for t in inputs if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), traceable(), pyro.get_param_store().scope():
        return make_fx(function)(*inputs)


def compile_graph(graph: torch.fx.GraphModule) -> Callable:
    """``graph`` compiled by TorchInductor for its traced shapes (compiled at its first call).

    A CUDA build of PyTorch on a machine without CUDA logs "No CUDA runtime is found" when
    Inductor builds its C++ kernels; that line is silenced (nothing is wrong with the CPU build).
    """
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(graph, backend="inductor", fullgraph=True, dynamic=False)
