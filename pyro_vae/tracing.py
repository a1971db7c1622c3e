"""Tracing a Pyro computation to one graph of ATen operations, to replay it or compile it.

Pyro runs a model and guide as ordinary Python: every call pays for its effect handlers, and
Pyro's ``differentiable_loss`` reads the loss on the host (``torch_item``) and checks it for NaN
(``warn_if_nan``). :func:`trace` runs a function once on real tensors under
:func:`torch.fx.experimental.proxy_tensor.make_fx`, as JAX traces a NumPyro program, and records
every ATen operation it performs, the backward pass and in-place updates included. Replaying the
graph gives the same numbers and draws the same random numbers as the Python function for the
same seed; :func:`compile_graph` hands it to TorchInductor, which fuses the elementwise work.
:func:`for_replay` and :func:`compile_graph` send a graph's large float32 matrix products to oneDNN
on CPUs where PyTorch's default BLAS (MKL) is the slower of the two (:func:`onednn_pays`).

A traced graph is valid for the shapes, dtypes and devices it was traced with and for the values
of non-tensor arguments (:func:`signature`): what every traced program assumes, as Pyro's
``JitTrace*`` objectives do. Data-dependent control flow cannot be traced.
"""

import contextlib
import functools
import logging
import platform
import sys
from typing import Callable, Optional, Sequence

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
    not change. What the function computed and did not use (Pyro computes log-densities that an
    objective may not read) is left out of the graph; random draws and in-place updates stay.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    devices = sorted({t.device.index or 0 for t in inputs if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), traceable(), pyro.get_param_store().scope():
        graph = make_fx(function)(*inputs)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def compile_graph(graph: torch.fx.GraphModule) -> Callable:
    """``graph`` compiled by TorchInductor for its traced shapes (compiled at its first call), its
    large products in oneDNN where that pays (:func:`onednn_pays`).

    A CUDA build of PyTorch on a machine without CUDA logs "No CUDA runtime is found" when
    Inductor builds its C++ kernels; that line is silenced (nothing is wrong with the CPU build).
    """
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if onednn_pays():
        graph = route_matmuls_to_onednn(graph, for_inductor=True)
    return torch.compile(graph, backend="inductor", fullgraph=True, dynamic=False)


#: Matrix products of at least this many multiply-adds go to oneDNN; below it the two libraries are
#: level or MKL is ahead (measured for the MNIST step's products on an AMD EPYC, docs/speed.md).
ONEDNN_MIN_MACS = 2 ** 22


def cpu_vendor() -> str:
    """The CPU's vendor as Linux reports it (``GenuineIntel``, ``AuthenticAMD``); "" where unknown."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":")[1].strip() for line in cpuinfo if line.startswith("vendor_id")), "")
    except OSError:
        return ""


@functools.lru_cache(maxsize=None)
def onednn_pays() -> bool:
    """Whether float32 matrix products on the CPU are faster through oneDNN than through MKL.

    MKL picks its fast kernels on Intel CPUs only; on other x86 CPUs (AMD's) oneDNN's own kernels
    run the MNIST step's large products about twice as fast (docs/speed.md). False where the
    vendor is Intel or unknown, and where PyTorch lacks either library.
    """
    return platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available() \
        and torch.backends.mkl.is_available() and cpu_vendor() not in ("", "GenuineIntel")


@torch.library.custom_op("pyro_vae::onednn_linear", mutates_args=())
def onednn_linear(a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``a @ weight.T + bias`` by oneDNN, as an operation Inductor calls without looking inside
    (its own lowering of oneDNN's linear takes only constant weights, as in inference)."""
    return torch.ops.mkldnn._linear_pointwise(a, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _onednn_linear_shape(a, weight, bias):
    return a.new_empty((a.shape[0], weight.shape[0]))


def route_matmuls_to_onednn(graph: torch.fx.GraphModule, for_inductor: bool = False) -> torch.fx.GraphModule:
    """``graph`` with its large float32 CPU ``mm`` and ``addmm`` run by oneDNN, in place.

    ``addmm(bias, a, b)`` becomes oneDNN's ``linear(a, b.T, bias)`` (``torch.ops.mkldnn.
    _linear_pointwise``, or :func:`onednn_linear` in a graph for Inductor; ``mm`` the same without
    bias). oneDNN reads strided operands, so a transposed operand is not copied. The results are
    float32 products summed in another order: equal to MKL's up to rounding, not to the bit.
    """
    aten = torch.ops.aten
    linear_op, options = (torch.ops.pyro_vae.onednn_linear.default, ()) if for_inductor \
        else (torch.ops.mkldnn._linear_pointwise.default, ("none", [], ""))
    nodes = graph.graph
    for node in list(nodes.nodes):
        if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
            continue
        bias, a, b = (None, *node.args) if node.target is aten.mm.default else node.args
        left, right = a.meta["val"], b.meta["val"]
        if node.kwargs or left.dtype != torch.float32 or left.device.type != "cpu" \
                or left.shape[0] * left.shape[1] * right.shape[1] < ONEDNN_MIN_MACS:
            continue
        with nodes.inserting_before(node):
            weight = nodes.call_function(aten.t.default, (b,))
            linear = nodes.call_function(linear_op, (a, weight, bias, *options))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        nodes.erase_node(node)
    nodes.lint()
    graph.recompile()
    return graph


def for_replay(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` as it is best replayed on this machine: its large products in oneDNN where that pays."""
    return route_matmuls_to_onednn(graph) if onednn_pays() else graph
