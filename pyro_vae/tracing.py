"""Tracing a Pyro computation to one graph of ATen operations, to replay it or compile it.

Pyro runs a model and guide as ordinary Python: every call pays for its effect handlers, and
Pyro's ``differentiable_loss`` reads the loss on the host (``torch_item``) and checks it for NaN
(``warn_if_nan``). :func:`trace` runs a function once on real tensors under
:func:`torch.fx.experimental.proxy_tensor.make_fx`, as JAX traces a NumPyro program, and records
every ATen operation it performs, the backward pass and in-place updates included. Replaying the
graph gives the same numbers and draws the same random numbers as the Python function for the
same seed; :func:`compile_graph` hands it to TorchInductor, which fuses the elementwise work.
:func:`for_replay` and :func:`compile_graph` send a graph's large float32 matrix products to oneDNN
on CPUs where PyTorch's default BLAS (MKL) is the slower of the two (:func:`onednn_pays`), a
workaround for ``docs/upstream.md#mkl-on-cpus-not-made-by-intel``.

A traced graph is valid for the shapes, dtypes and devices it was traced with, for the values
of non-tensor arguments (:func:`signature`) and for the plain Python state of the modules it ran
(:func:`python_state`: a counter or a KL weight on a module). Data-dependent control flow cannot
be traced. Python state outside the modules (a global variable, an attribute of the objective)
is not seen: a graph that reads it replays the value it had when traced, as Pyro's ``JitTrace*``
objectives do ("models must not depend on any global data").
"""

import contextlib
import copy
import functools
import logging
import platform
import sys
from typing import Callable, Iterator, Optional, Sequence

import pyro
import torch


def _item(x):
    return x.detach() if torch.is_tensor(x) else x


def _no_check(value, *args, **kwargs):
    return value


@contextlib.contextmanager
def traceable():
    """Pyro's per-call host reads switched off inside the block, as they must be while tracing.

    A workaround for ``docs/upstream.md#pyros-torch_item-and-warn_if_nan-under-tracing``: Pyro's
    ELBOs call ``torch_item`` (``.item()`` of the loss) and ``warn_if_nan`` (a NaN check of the
    loss and a backward hook checking its gradient), which read values that do not exist under
    :func:`~torch.fx.experimental.proxy_tensor.make_fx`; only ``TraceMeanField_ELBO`` asks whether
    it is traced, and only TorchScript's tracer. So inside the block, in each loaded ``pyro.infer``
    module that imported Pyro's own two functions, ``torch_item`` becomes ``detach`` and
    ``warn_if_nan`` returns its value unchecked; each module gets its own functions back when the
    block ends, also on an error. Functions of those names that are not Pyro's are left alone. A
    traced training step checks finiteness on the device itself. Validation (argument checks that
    read values) is off as well, as in Pyro's JIT objectives. The patch is the process's while the
    block runs: another thread running Pyro then would skip its checks too.
    """
    from pyro.infer.util import torch_item
    from pyro.util import warn_if_nan

    saved = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "pyro.infer" or name.startswith("pyro.infer.")):
            continue
        for attr, original, new in (("torch_item", torch_item, _item), ("warn_if_nan", warn_if_nan, _no_check)):
            if getattr(module, attr, None) is original:
                saved.append((module, attr, original))
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


#: What every :class:`torch.nn.Module` keeps in its ``__dict__``: PyTorch's bookkeeping, not a model's state.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))
_OPAQUE = object()  # an attribute python_state does not look into


def _frozen(value) -> object:
    """A hashable copy of a plain value (numbers, strings, None, tuples, lists and dicts of them);
    a tensor by identity and version; ``_OPAQUE`` for anything else."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value
    if torch.is_tensor(value):
        return ("tensor", id(value), value._version)
    if isinstance(value, (tuple, list)):
        items = tuple(_frozen(v) for v in value)
        return _OPAQUE if any(v is _OPAQUE for v in items) else (type(value).__name__, items)
    if isinstance(value, dict):
        items = tuple((_frozen(k), _frozen(v)) for k, v in value.items())
        return _OPAQUE if any(_OPAQUE in kv for kv in items) else ("dict", items)
    return _OPAQUE


def _attributes(module: torch.nn.Module) -> Iterator[tuple[str, object, str, object]]:
    """``(path, owner, name, value)`` of each plain attribute in the module tree, as ``"model.beta"``."""
    for prefix, owner in module.named_modules():
        for name, value in vars(owner).items():
            if name not in _MODULE_INTERNALS and _frozen(value) is not _OPAQUE:
                yield (f"{prefix}.{name}" if prefix else name), owner, name, value


def python_state(module: torch.nn.Module) -> dict[str, object]:
    """The plain Python state of ``module`` and its submodules, which a traced graph bakes in.

    Per attribute path: a hashable copy of each number, string, bool or None attribute (and
    tuples, lists and dicts of them), and the identity and version of each tensor attribute that
    is neither parameter nor buffer. PyTorch's own attributes (``_parameters``, hooks, ``training``)
    and other objects are left out, as is anything outside the module tree (globals).
    """
    return {path: _frozen(value) for path, _, _, value in _attributes(module)}


def changed(before: dict, after: dict) -> list[str]:
    """The paths whose state differs between two :func:`python_state` results."""
    return [path for path in {**before, **after} if before.get(path, _OPAQUE) != after.get(path, _OPAQUE)]


@contextlib.contextmanager
def python_state_kept(module: torch.nn.Module) -> Iterator[list[str]]:
    """Run the block, then put back the plain attributes it changed (:func:`python_state`) and
    remove those it added; yields a list that then names them. A tensor changed in place stays so."""
    saved = {path: (owner, name, copy.deepcopy(value) if isinstance(value, (list, dict)) else value)
             for path, owner, name, value in _attributes(module)}
    before = python_state(module)
    names: list[str] = []
    try:
        yield names
    finally:
        after = {path: (owner, name) for path, owner, name, _ in _attributes(module)}
        names.extend(changed(before, python_state(module)))
        for path in names:
            if path in saved:
                owner, name, value = saved[path]
                setattr(owner, name, value)
            elif path in after:
                delattr(*after[path])


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
    Inductor builds its C++ kernels, at the first call; that line is silenced while the first call
    compiles (nothing is wrong with the CPU build), and the logger's level is put back after it.
    """
    if onednn_pays():
        graph = route_matmuls_to_onednn(graph, for_inductor=True)
    return _CompiledGraph(torch.compile(graph, backend="inductor", fullgraph=True, dynamic=False))


class _CompiledGraph:
    """A graph compiled at its first call, which runs with Inductor's C++ build quietened (:func:`compile_graph`)."""

    def __init__(self, compiled: Callable):
        self.compiled = compiled
        self.compiling = True

    def __call__(self, *inputs):
        if not self.compiling:
            return self.compiled(*inputs)
        with _logger_level("torch.utils.cpp_extension", logging.ERROR):
            outputs = self.compiled(*inputs)
        self.compiling = False
        return outputs


@contextlib.contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    """The logger ``name`` at ``level`` inside the block, at its own level again after it."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


#: Matrix products of at least this many multiply-adds go to oneDNN; below it the two libraries are
#: level or MKL is ahead (``docs/speed.md``).
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

    MKL picks its fast kernels on Intel CPUs only (``docs/upstream.md#mkl-on-cpus-not-made-by-intel``);
    on other x86 CPUs (AMD's) oneDNN's own kernels run the MNIST step's large products faster
    (``docs/speed.md``). False where the vendor is Intel or unknown, and where PyTorch lacks either library.
    """
    return platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available() \
        and torch.backends.mkl.is_available() and cpu_vendor() not in ("", "GenuineIntel")


#: The name of :func:`onednn_linear`'s operation in PyTorch's registry.
ONEDNN_LINEAR = "pyro_vae::onednn_linear"


@functools.lru_cache(maxsize=None)
def onednn_linear() -> torch._ops.OpOverload:
    """``torch.ops.pyro_vae.onednn_linear.default``: ``a @ weight.T + bias`` by oneDNN, as an
    operation Inductor calls without looking inside (its own lowering of oneDNN's linear takes only
    constant weights, as in inference). Registered with PyTorch at the first call, not at import."""
    if ONEDNN_LINEAR not in torch._C._dispatch_get_all_op_names():
        @torch.library.custom_op(ONEDNN_LINEAR, mutates_args=())
        def linear(a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(a, weight, bias, "none", [], "")

        @linear.register_fake
        def _shape(a, weight, bias):
            return a.new_empty((a.shape[0], weight.shape[0]))
    return torch.ops.pyro_vae.onednn_linear.default


def route_matmuls_to_onednn(graph: torch.fx.GraphModule, for_inductor: bool = False) -> torch.fx.GraphModule:
    """``graph`` with its large float32 CPU ``mm`` and ``addmm`` run by oneDNN, in place.

    ``addmm(bias, a, b)`` becomes oneDNN's ``linear(a, b.T, bias)`` (``torch.ops.mkldnn.
    _linear_pointwise``, or :func:`onednn_linear` in a graph for Inductor; ``mm`` the same without
    bias). oneDNN reads strided operands, so a transposed operand is not copied. The results are
    float32 products summed in another order: equal to MKL's up to rounding, not to the bit.
    """
    aten = torch.ops.aten
    linear_op, options = (onednn_linear(), ()) if for_inductor \
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
