"""One training step: the loss of a minibatch, its gradient and an optimizer update.

The loss of a step is a sum over the parts of the training data (one part for an unsupervised
model; unlabelled and labelled parts for a semi-supervised one): for each part a minibatch
``args`` (passed to model and guide as ``model(*args, num_data=num_data)``) and the part's
size ``num_data``, with which the minibatch loss estimates the part's full-data loss
(:meth:`pyro_vae.models.VAE.data_plate`).

:class:`TrainingStep` returns device tensors and never reads them on the host, so the loop can
run many steps before it synchronises.

**Compiled steps** (``TrainingStep(..., compile="trace" | "inductor")``). Pyro runs a model and
guide as ordinary Python: every step pays for its effect handlers (a few hundred microseconds),
and Pyro's ``differentiable_loss`` reads the loss on the host (``torch_item``) and checks it and
its gradient for NaN (``warn_if_nan``), which synchronises with the device two or three times a
step. A compiled step traces, once per batch shape, the *whole* computation that the objective
performs (model, guide, objective and the backward pass) down to ATen operations with
:func:`torch.fx.experimental.proxy_tensor.make_fx`, as JAX traces a NumPyro program; model and
guide stay ordinary Pyro programs, run once by Pyro's own handlers while tracing.

* ``"trace"`` replays the traced graph of operations: no Pyro overhead and no host sync per step,
  the same random draws as the eager step for the same seed (tested), no compiler needed.
* ``"inductor"`` compiles the traced graph with TorchInductor (:func:`torch.compile`), which fuses
  the elementwise work around the matrix products (C++ on the CPU, Triton on CUDA). The first
  step of each batch shape compiles (seconds to tens of seconds; cached on disk after). Random
  draws come from Inductor's own generator, seeded from PyTorch's: reproducible for a seed, but
  not the same numbers as the eager step (the same distribution).

Both assume what every traced program assumes (as Pyro's ``JitTrace*`` objectives do): the
program's structure depends only on the shapes of its inputs and on its non-tensor arguments,
not on values. A step that cannot be traced (data-dependent control flow, ``.item()`` in a model)
falls back to the eager step with a warning. Why not :func:`torch.compile` of the eager loss
directly: Dynamo breaks the graph inside Pyro's handlers (17 breaks for ``meanfield`` in PyTorch
2.x, at ``pyro/poutine/subsample_messenger.py``, "TypedDict with optional keys"), so it compiles
18 small pieces and does not remove the overhead.
"""

import contextlib
import sys
import warnings
from typing import Callable, Iterable, Optional, Sequence

import pyro
import torch
from pyro.infer import ELBO
from torch import nn

from .errors import first_line

Batch = tuple[tuple, int]  # (args for model and guide, size of the data part)

#: Values of ``TrainingStep(compile=...)``; ``"auto"`` is ``"trace"`` (see :class:`TrainingStep`).
COMPILE_MODES = ("auto", "none", "trace", "inductor")


class ObjectiveLoss(nn.Module):
    """The objective's loss of a model as a module: ``forward(batches)`` sums it over data parts.

    Being an :class:`~torch.nn.Module` whose parameters are the model's, it can be wrapped by
    :class:`torch.nn.parallel.DistributedDataParallel`, which then averages its gradients across
    processes during the backward pass.
    """

    def __init__(self, model: nn.Module, objective: ELBO):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batches: Sequence[Batch]) -> torch.Tensor:
        return sum(self.objective.differentiable_loss(self.model.model, self.model.guide, *args, num_data=num_data)
                   for args, num_data in batches)


def make_optimizer(name: str, parameters: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0,
                   fused: Optional[bool] = None) -> torch.optim.Optimizer:
    """Adam or Adagrad, fused where PyTorch has a fused kernel for the parameters' device.

    The loss estimates the full-data negative ELBO (a sum over the training set), so
    ``weight_decay = 1`` adds exactly the gradient of the paper's N(0, I) prior on the
    parameters, ``-theta``.

    ``fused=None`` (the default) uses the fused implementation (one kernel per parameter
    tensor for the whole update) when PyTorch supports it for these parameters (CPU and CUDA
    for Adam; CPU for Adagrad in recent PyTorch), else the ``foreach`` one. Both compute the
    same update up to floating-point rounding (``tests/test_step.py``); the fused one is
    about 3x faster on the CPU for the MNIST network (``docs/speed.md``). ``fused=False``
    forces ``foreach``; ``fused=True`` raises where fused is unsupported.
    """
    optimizers = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(optimizers)}")
    parameters = list(parameters)
    if fused is None or fused:
        try:
            return optimizers[name](parameters, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError, TypeError):
            if fused:
                raise
    return optimizers[name](parameters, lr=lr, weight_decay=weight_decay, foreach=True)


@contextlib.contextmanager
def _traceable():
    """Pyro's per-step host reads, switched off while a step is traced.

    ``torch_item`` (``.item()`` of the loss) becomes ``detach`` and ``warn_if_nan`` (a NaN check
    of the loss and a backward hook checking its gradient) is dropped; both would read values
    that do not exist while tracing. The compiled step checks the loss for finiteness itself.
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


def _signature(value) -> object:
    """What a traced graph is specialised to: shapes, dtypes and devices of tensors; other values."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _signature(v)) for k, v in value.items())))
    return ("value", value)


def _flatten(batches: Sequence[Batch]) -> tuple[list[torch.Tensor], Callable]:
    """The tensors of ``batches`` and a function rebuilding ``batches`` from (other) tensors."""
    tensors: list[torch.Tensor] = []

    def template(value):
        if torch.is_tensor(value):
            tensors.append(value)
            return len(tensors) - 1, None
        if isinstance(value, (tuple, list)):
            return None, type(value)([template(v) for v in value])
        return None, value

    structure = [(template(args), num_data) for args, num_data in batches]

    def rebuild(values: Sequence[torch.Tensor]) -> list[Batch]:
        def fill(node):
            index, rest = node
            if index is not None:
                return values[index]
            if isinstance(rest, (tuple, list)):
                return type(rest)(fill(v) for v in rest)
            return rest
        return [(fill(args), num_data) for args, num_data in structure]

    return tensors, rebuild


class CompiledLoss:
    """``batches -> (loss, gradients)`` of an :class:`ObjectiveLoss`, traced once per batch signature.

    :param loss: the :class:`ObjectiveLoss` to trace.
    :param backend: ``"trace"`` to replay the traced ATen graph, ``"inductor"`` to compile it.

    ``parameters`` are the loss's trainable parameters, in the order of the gradients returned.
    Graphs are cached by the shapes, dtypes and devices of the batch tensors, the non-tensor
    arguments, ``num_data`` and the module's training flag. :attr:`fallback_reason` is set
    (and the loss runs eagerly) when tracing fails.
    """

    def __init__(self, loss: ObjectiveLoss, backend: str = "inductor"):
        if backend not in ("trace", "inductor"):
            raise ValueError(f"unknown backend {backend!r}: choose trace or inductor")
        self.loss = loss
        self.backend = backend
        named = list(loss.named_parameters())
        self.names = [name for name, p in named if p.requires_grad]
        self.parameters = [p for _, p in named if p.requires_grad]
        self.frozen = {name: p for name, p in named if not p.requires_grad}
        self.buffer_names = [name for name, _ in loss.named_buffers()]
        self.graphs: dict = {}
        self.fallback_reason: Optional[str] = None

    def _trace(self, batches: Sequence[Batch]) -> Callable:
        tensors, rebuild = _flatten(batches)
        num_params, num_buffers = len(self.parameters), len(self.buffer_names)

        def loss_and_grads(*inputs):
            params = inputs[:num_params]
            buffers = inputs[num_params:num_params + num_buffers]
            data = inputs[num_params + num_buffers:]
            substitutes = {**dict(zip(self.names, params)), **dict(zip(self.buffer_names, buffers)), **self.frozen}
            with torch.nn.utils.stateless._reparametrize_module(self.loss, substitutes):
                loss = self.loss(rebuild(data))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            return (loss.detach(), *grads)

        from torch.fx.experimental.proxy_tensor import make_fx

        devices = sorted({t.device.index or 0 for t in [*self.parameters, *tensors] if t.device.type == "cuda"})
        # Tracing runs the step once on real tensors; it must not advance the random streams, so that
        # the traced step draws what the eager step would. A private parameter store keeps the
        # tracing's substitute tensors out of the caller's (PyroModule registers parameters there).
        with torch.random.fork_rng(devices=devices), _traceable(), torch.enable_grad(), \
                pyro.get_param_store().scope():
            graph = make_fx(loss_and_grads)(*[p.detach().requires_grad_() for p in self.parameters],
                                            *[b for _, b in self.loss.named_buffers()], *tensors)
        if self.backend == "inductor":
            return torch.compile(graph, backend="inductor", fullgraph=True, dynamic=False)
        return graph

    def __call__(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        key = (_signature([(args, num_data) for args, num_data in batches]), self.loss.training)
        graph = self.graphs.get(key)
        if graph is None:
            try:
                graph = self.graphs[key] = self._trace(batches)
            except Exception as error:  # noqa: BLE001 - anything untraceable runs eagerly
                self._fall_back(f"tracing failed ({type(error).__name__}: {first_line(error)[:200]}); running eagerly")
                raise _Untraceable from error
        tensors, _ = _flatten(batches)
        try:
            with torch.no_grad():
                loss, *grads = graph(*self.parameters, *[b for _, b in self.loss.named_buffers()], *tensors)
        except Exception as error:  # noqa: BLE001 - e.g. no C++ compiler for Inductor
            if self.backend != "inductor":
                raise
            self._fall_back(f"Inductor failed ({type(error).__name__}: {str(error)[:200]}); replaying the traced "
                            "graph instead")
            self.backend = "trace"
            self.graphs.clear()
            return self(batches)
        return loss, grads

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        warnings.warn(f"compiled training step: {reason}", RuntimeWarning, stacklevel=3)


class _Untraceable(Exception):
    """Raised by :class:`CompiledLoss` when a step cannot be traced; the step then runs eagerly."""


class TrainingStep:
    """Loss, gradient, optional clipping and an optimizer step, without host synchronisation.

    :param loss: an :class:`ObjectiveLoss` (or a wrapper of one, such as DDP).
    :param optimizer: a torch optimizer over the model's parameters.
    :param clip_grad_norm: clip the gradient's total norm to this value, if given.
    :param compile: ``"none"`` (default): Pyro runs model, guide and objective every step;
        ``"trace"`` or ``"inductor"``: a compiled step (see the module's docstring); ``"auto"``, the
        training loop's default, is ``"trace"``: the same draws and figures as eager and no compile
        time, falling back to eager with one warning for a step that cannot be traced (Inductor,
        which compiles for tens of seconds first and draws other random numbers, is used only when
        asked for). With a DDP-wrapped loss the compiled step all-reduces the gradients itself (DDP's
        backward hooks do not run on a traced gradient). ``True``/``False`` mean ``"inductor"``/``"none"``.
    """

    def __init__(self, loss: nn.Module, optimizer: torch.optim.Optimizer, clip_grad_norm: Optional[float] = None,
                 compile="none"):
        if compile is True:
            compile = "inductor"
        elif compile is False or compile is None:
            compile = "none"
        if compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile!r}: choose one of {', '.join(COMPILE_MODES)}")
        if compile == "auto":
            compile = "trace"
        self.loss = loss
        self.optimizer = optimizer
        self.clip_grad_norm = clip_grad_norm
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self.compile = compile
        self.distributed = isinstance(loss, nn.parallel.DistributedDataParallel)
        self.compiled: Optional[CompiledLoss] = None
        if compile != "none":
            inner = loss.module if self.distributed else loss
            if not isinstance(inner, ObjectiveLoss):
                raise ValueError("a compiled step needs an ObjectiveLoss (or DDP of one)")
            self.compiled = CompiledLoss(inner, compile)

    def __call__(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """Take one step; returns the detached loss and whether loss and gradient were finite."""
        if self.compiled is not None:
            try:
                return self._compiled_step(batches)
            except _Untraceable:
                self.compiled = None  # the warning said why; eager from now on
        loss = self.loss(batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return self._update(loss.detach())

    def _compiled_step(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grads = self.compiled(batches)
        if self.distributed:
            self._all_reduce(grads)
        self.optimizer.zero_grad(set_to_none=True)
        for parameter, grad in zip(self.compiled.parameters, grads):
            parameter.grad = grad
        return self._update(loss)

    @staticmethod
    def _all_reduce(grads: list[torch.Tensor]) -> None:
        """Average gradients across processes, as DDP's backward hooks would."""
        import torch.distributed as dist
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _update(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad_norm)
        else:  # a finite loss can have an infinite gradient: check it too, on the device
            norm = _total_norm([p.grad for p in self.parameters if p.grad is not None])
        self.optimizer.step()
        return loss, torch.isfinite(loss) & torch.isfinite(norm)


def _total_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, without a host sync."""
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # PyTorch 2.6 and later: one fused kernel per device
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
