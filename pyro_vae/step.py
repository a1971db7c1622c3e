"""One training step: the loss of a minibatch, its gradient and an optimizer update.

The loss of a step is a sum over the parts of the training data (one part for an unsupervised
model; unlabelled and labelled parts for a semi-supervised one): for each part a minibatch
``args`` (passed to model and guide as ``model(*args, num_data=num_data)``) and the part's
size ``num_data``, with which the minibatch loss estimates the part's full-data loss
(:meth:`pyro_vae.models.VAE.data_plate`).

:class:`TrainingStep` returns device tensors and never reads them on the host, so the loop can
run many steps before it synchronises.

**Compiled steps** (``TrainingStep(..., compile="replay" | "inductor")``) trace the whole step
with :func:`pyro_vae.tracing.trace`, once per batch shape: model, guide, objective, the backward
pass, gradient clipping, the finiteness check and the optimizer's own fused update kernel
(``torch._fused_adam_`` / ``torch._fused_adagrad_``, applied in place to the parameters and the
optimizer's state), so one call of the graph is one step. Model and guide stay ordinary Pyro
programs, run once by Pyro's own handlers while tracing.

* ``"replay"`` replays the traced graph: no Pyro overhead and no host sync per step, the same
  random draws and the same parameters as the eager step for the same seed (tested). Where MKL
  is the slower BLAS (non-Intel x86 CPUs, :func:`pyro_vae.tracing.onednn_pays`) its large float32
  products run in oneDNN, equal to the eager step's up to rounding. On CUDA, with the update in
  the graph and ``cuda_graphs=True`` (off by default until it has run on a GPU), the replay is a
  CUDA graph (:class:`CUDAGraphReplay`): one launch per step instead of one per kernel.
* ``"inductor"`` compiles the traced graph with TorchInductor, which fuses the elementwise work
  around the matrix products (C++ on the CPU, Triton on CUDA). The first step of each batch shape
  compiles (``docs/speed.md`` says for how long). Random draws come from Inductor's
  own generator, seeded from PyTorch's: reproducible for a seed, the eager step's distribution,
  not its numbers.

Under DDP, with Inductor, or with an optimizer that has no fused kernel, the graph stops at the
gradients: the step all-reduces them under DDP (DDP's hooks do not run on a traced gradient) and
the optimizer's fused kernel runs after the graph.

A compiled step keeps the eager step's semantics or runs eagerly, saying why in one warning: where
it cannot be traced (data-dependent control flow, ``.item()`` in a model); where the first step of
a graph does not give the eager step's loss on the same draws; where model or guide change their
own plain Python state as they run (``self.calls += 1``). Plain Python state that outside code
changes between steps (a KL weight ``self.beta`` set by a callback) is part of a graph's key: the
step is traced again, or, where it changes within :data:`RETRACE_MIN_STEPS` steps of a trace, runs
eagerly. State outside the model's modules (globals, the objective's attributes) is not seen
(:mod:`pyro_vae.tracing`). ``validate=True`` (Pyro's checks at every step) runs eagerly.

Why the step is traced rather than compiled by :func:`torch.compile` from the eager loss, or run by
Pyro's JIT objectives: ``docs/speed.md#why-not-torchcompile-or-pyros-jit``.
"""

import contextlib
import re
import warnings
from typing import Iterable, NoReturn, Optional, Sequence

import pyro
import torch
from pyro.infer import ELBO
from torch import nn
from torch.optim.adagrad import adagrad as adagrad_update
from torch.optim.adam import adam as adam_update

from . import precision as precisions
from .errors import first_line
from .tracing import (changed, compile_graph, flatten, for_replay, python_state, python_state_kept, signature, trace,
                      traceable)

Batch = tuple[tuple, int]  # (args for model and guide, size of the data part)

#: Values of ``TrainingStep(compile=...)``: ``"eager"`` (Pyro runs every step), ``"replay"`` (the traced
#: step replayed), ``"inductor"`` (the traced step compiled); ``"auto"`` is resolved by :func:`choose_compile`.
COMPILE_MODES = ("auto", "eager", "replay", "inductor")
#: ``compile="auto"`` compiles with Inductor for runs of at least this many steps, and replays the
#: traced step for shorter ones: where Inductor's compile time is paid back (``docs/speed.md``).
INDUCTOR_MIN_STEPS = 60_000
#: A compiled step whose Python state (a KL weight on the model) changes again within this many steps
#: of its latest trace runs eagerly from then on: a trace of the MNIST step costs about as much as
#: this many steps save (``docs/speed.md``).
RETRACE_MIN_STEPS = 100


def choose_compile(compile: str, steps: int) -> str:
    """The step ``compile="auto"`` runs for a run of ``steps`` steps: ``"inductor"`` when the
    compile time is small beside the time it saves, else ``"replay"``; other modes as they are."""
    if compile != "auto":
        return compile
    return "inductor" if steps >= INDUCTOR_MIN_STEPS else "replay"


class ObjectiveLoss(nn.Module):
    """The objective's loss of a model as a module: ``forward(batches)`` sums it over data parts.

    Being an :class:`~torch.nn.Module` whose parameters are the model's, it can be wrapped by
    :class:`torch.nn.parallel.DistributedDataParallel`, which then averages its gradients across
    processes during the backward pass. ``precision="bf16"`` runs model and guide under
    bfloat16 autocast (:mod:`pyro_vae.precision`).
    """

    def __init__(self, model: nn.Module, objective: ELBO, precision: str = "fp32"):
        super().__init__()
        self.model = model
        self.objective = objective
        self.precision = precision

    def forward(self, batches: Sequence[Batch]) -> torch.Tensor:
        images = batches[0][0][0]  # the first part's first argument: its images
        with precisions.autocast(self.precision, images.device):
            return sum(self.objective.differentiable_loss(self.model.model, self.model.guide, *args,
                                                          num_data=num_data)
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
    the faster on the CPU (``docs/speed.md``). ``fused=False``
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


#: Per optimizer with a fused kernel: the names of its per-parameter state, in the order its
#: functional form takes them, and that functional form with a parameter group's options.
_FUSED_UPDATES = {
    torch.optim.Adam: (("exp_avg", "exp_avg_sq", "step"), lambda params, grads, states, group: adam_update(
        params, grads, states[0], states[1], [], states[2], foreach=False, capturable=group["capturable"],
        differentiable=False, fused=True, grad_scale=None, found_inf=None, has_complex=False,
        amsgrad=False, beta1=group["betas"][0],
        beta2=group["betas"][1], lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
        maximize=group["maximize"], **_decoupled(group))),
    torch.optim.Adagrad: (("sum", "step"), lambda params, grads, states, group: adagrad_update(
        params, grads, states[0], states[1], fused=True, grad_scale=None, found_inf=None, has_sparse_grad=False,
        foreach=False, differentiable=False, has_complex=False, lr=group["lr"], weight_decay=group["weight_decay"],
        lr_decay=group["lr_decay"], eps=group["eps"], maximize=group["maximize"])),
}


def _decoupled(group: dict) -> dict:
    """Adam's ``decoupled_weight_decay`` (AdamW's rule) where this PyTorch's Adam has the option."""
    return {"decoupled_weight_decay": group["decoupled_weight_decay"]} if "decoupled_weight_decay" in group else {}


def fused_update(optimizer: torch.optim.Optimizer) -> Optional[tuple]:
    """``(state names, update)`` when ``optimizer``'s step is one fused kernel that a traced
    graph can call, else None (then the optimizer steps eagerly after the graph)."""
    entry = _FUSED_UPDATES.get(type(optimizer))
    if entry is None or not all(group.get("fused") and not group.get("amsgrad") and not group.get("differentiable")
                                and isinstance(group["lr"], float) for group in optimizer.param_groups):
        return None
    return entry


def _initial_state(optimizer: torch.optim.Optimizer) -> None:
    """Create Adam's per-parameter state as its first step would (Adagrad creates it at once)."""
    if isinstance(optimizer, torch.optim.Adam):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if not optimizer.state[p]:
                    optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                          "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                          "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}


class CUDAGraphReplay:
    """A traced step replayed as one :class:`torch.cuda.CUDAGraph`.

    :param graph: the traced step; it updates its first ``num_static`` inputs (parameters, buffers,
        optimizer state) in place and takes the batch tensors after them.

    The first call runs ``graph`` as it is, on a side stream: the warm-up capture needs (cuBLAS
    workspaces, first allocations, made for that stream). The second captures it on the same stream
    and replays the capture; later calls copy the batch into the capture's own input buffers and
    replay. A step is captured again when an input tensor was replaced (an optimizer state loaded on
    resume). Random draws come from the device's generator, whose offset each replay advances as
    the eager kernels would. Outputs are cloned, as the next replay overwrites the capture's own.
    """

    def __init__(self, graph: torch.fx.GraphModule, num_static: int):
        self.graph = graph
        self.num_static = num_static
        self.cuda_graph: Optional[torch.cuda.CUDAGraph] = None
        self.addresses: tuple = ()
        self.batch: list[torch.Tensor] = []
        self.outputs: Sequence[torch.Tensor] = ()
        self.stream: Optional[torch.cuda.Stream] = None  # of the warm-up and the captures

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        static, batch = inputs[:self.num_static], inputs[self.num_static:]
        addresses = tuple(t.data_ptr() for t in static)
        if self.stream is None:
            self.stream = torch.cuda.Stream()
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                outputs = self.graph(*inputs)
            torch.cuda.current_stream().wait_stream(self.stream)
            return outputs
        if self.cuda_graph is None or addresses != self.addresses:
            self.batch = [t.clone() for t in batch]
            self.cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.cuda_graph, stream=self.stream):
                self.outputs = self.graph(*static, *self.batch)
            self.addresses = addresses
        else:
            for buffer, t in zip(self.batch, batch):
                buffer.copy_(t)
        self.cuda_graph.replay()
        return [t.clone() for t in self.outputs]


class CompiledStep:
    """One training step as one traced graph (see the module's docstring), per batch signature.

    :param loss: the :class:`ObjectiveLoss` to trace.
    :param backend: ``"replay"`` to replay the traced graph, ``"inductor"`` to compile it.
    :param optimizer: updated inside a ``"replay"`` graph when it has a fused kernel
        (:func:`fused_update`); None, one without, or ``"inductor"`` makes the graph return
        ``(loss, gradients)`` for the caller to apply.
    :param clip_grad_norm: with the update in the graph, the gradient's total norm is clipped there.
    :param cuda_graphs: replay the step as a CUDA graph where it can be (:class:`CUDAGraphReplay`:
        the update in a ``"replay"`` graph, parameters on CUDA). Off by default: it has not yet run
        on a GPU (``docs/speed.md``).

    Calling it returns ``(loss, finite, gradient norm)`` with the update inside, else ``(loss, gradients)``.
    Graphs are cached by the shapes, dtypes and devices of the batch tensors, the non-tensor
    arguments, ``num_data``, the module's training flag, the optimizer's options and the plain
    Python state of the module tree (:func:`pyro_vae.tracing.python_state`). The first step of each
    graph is checked against the eager step's loss on the same draws. The step runs eagerly from
    then on, after one warning, where it cannot be traced, where that check fails, where model or
    guide change their own Python state as they run (a counter), or where that state changes
    again within :data:`RETRACE_MIN_STEPS` steps of a trace (a KL weight set at every step);
    :attr:`fallback_reason` says why.
    """

    def __init__(self, loss: ObjectiveLoss, backend: str = "inductor", optimizer: Optional[torch.optim.Optimizer] = None,
                 clip_grad_norm: Optional[float] = None, cuda_graphs: bool = False):
        if backend not in ("replay", "inductor"):
            raise ValueError(f"unknown backend {backend!r}: choose replay or inductor")
        self.loss = loss
        self.backend = backend
        self.clip_grad_norm = clip_grad_norm
        named = list(loss.named_parameters())
        self.names = [name for name, p in named if p.requires_grad]
        self.parameters = [p for _, p in named if p.requires_grad]
        self.frozen = {name: p for name, p in named if not p.requires_grad}
        self.buffer_names = [name for name, _ in loss.named_buffers()]
        # Inductor cannot take the fused kernels (docs/speed.md), so its graph stops at the gradients.
        self.update_rule = fused_update(optimizer) if backend == "replay" and optimizer is not None else None
        self.optimizer = optimizer if self.update_rule is not None else None
        if self.optimizer is not None:
            _initial_state(self.optimizer)
        self.cuda_graphs = cuda_graphs and self.updates and all(p.is_cuda for p in self.parameters)
        self.graphs: dict = {}
        self.steps = 0
        self.traced_at: dict = {}  # per key less the Python state: the step of its latest trace
        self.fallback_reason: Optional[str] = None

    @property
    def updates(self) -> bool:
        """Whether the graph applies the optimizer's update itself."""
        return self.optimizer is not None

    def _states(self) -> list[torch.Tensor]:
        """The optimizer's state tensors the graph updates, group by group and name by name."""
        names = self.update_rule[0]
        return [self.optimizer.state[p][name] for group in self.optimizer.param_groups
                for name in names for p in group["params"]]

    def _inputs(self, batches: Sequence[Batch]) -> list[torch.Tensor]:
        states = self._states() if self.updates else []
        return [*self.parameters, *[b for _, b in self.loss.named_buffers()], *states, *flatten(batches)[0]]

    def _trace(self, batches: Sequence[Batch]) -> torch.fx.GraphModule:
        data, rebuild = flatten(batches)
        num_params, num_buffers = len(self.parameters), len(self.buffer_names)
        position = {id(p): i for i, p in enumerate(self.parameters)}
        groups = self.optimizer.param_groups if self.updates else []
        names, update = self.update_rule if self.updates else ((), None)
        num_states = sum(len(names) * len(group["params"]) for group in groups)

        def step(*inputs):
            params = inputs[:num_params]
            buffers = inputs[num_params:num_params + num_buffers]
            states = inputs[num_params + num_buffers:num_params + num_buffers + num_states]
            substitutes = {**dict(zip(self.names, params)), **dict(zip(self.buffer_names, buffers)), **self.frozen}
            loss = torch.func.functional_call(self.loss, substitutes, (rebuild(inputs[num_params + num_buffers
                                                                                      + num_states:]),))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            if not self.updates:
                return (loss.detach(), *[torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
            with torch.no_grad():
                used = [g for g in grads if g is not None]
                norm = _total_norm(used)
                if self.clip_grad_norm is not None:  # as torch.nn.utils.clip_grad_norm_ does
                    torch._foreach_mul_(used, torch.clamp(self.clip_grad_norm / (norm + 1e-6), max=1.0))
                offset = 0
                for group in groups:
                    members = group["params"]
                    group_states = [states[offset + k * len(members):offset + (k + 1) * len(members)]
                                    for k in range(len(names))]
                    offset += len(names) * len(members)
                    # Parameters without a gradient are left alone, as the eager optimizer leaves them.
                    keep = [i for i, p in enumerate(members) if grads[position[id(p)]] is not None]
                    if keep:
                        update([params[position[id(members[i])]] for i in keep],
                               [grads[position[id(members[i])]] for i in keep],
                               [[column[i] for i in keep] for column in group_states], group)
                return loss.detach(), torch.isfinite(loss) & torch.isfinite(norm), norm

        # Tracing runs the step on copies: the real parameters and state change only when the graph runs.
        inputs = [p.detach().clone().requires_grad_() for p in self.parameters] \
            + [b for _, b in self.loss.named_buffers()] \
            + [t.clone() for t in (self._states() if self.updates else [])] + data
        return trace(step, *inputs)

    def _key(self, batches: Sequence[Batch]) -> tuple:
        options = tuple(tuple(sorted((k, v) for k, v in group.items() if k != "params"))
                        for group in self.optimizer.param_groups) if self.updates else ()
        return signature(list(batches)), self.loss.training, options, tuple(python_state(self.loss).items())

    def _new_graph(self, key: tuple, batches: Sequence[Batch]):
        """The graph of a step not traced before: traced, checked against the eager step, made
        ready for its backend. Raises :class:`_Untraceable`, after one warning, for an eager step."""
        self._drop_stale_graphs(key)
        try:
            with python_state_kept(self.loss) as side_effects:  # the trace run leaves them as they were
                graph = self._trace(batches)
        except Exception as error:  # noqa: BLE001 - anything untraceable runs eagerly
            self._run_eagerly(f"tracing failed ({type(error).__name__}: {_first_sentence(error)})", error)
        if side_effects:
            self._run_eagerly(f"the model changed {_listed(side_effects)} as it ran, which a traced graph does not "
                              "replay")
        if self.backend == "replay":
            graph = for_replay(graph)
        mismatch = self._eager_mismatch(graph, batches)
        if mismatch:
            self._run_eagerly(mismatch)
        if self.backend == "inductor":
            return compile_graph(graph)
        return CUDAGraphReplay(graph, len(self._inputs(batches)) - len(flatten(batches)[0])) \
            if self.cuda_graphs else graph

    def _drop_stale_graphs(self, key: tuple) -> None:
        """Forget the graphs traced for other Python state of the module tree; if that state changed
        soon after the latest trace, re-tracing does not pay: raise :class:`_Untraceable`."""
        base = key[:-1]
        stale = [k for k in self.graphs if k[:-1] == base]
        since = self.steps - self.traced_at.get(base, self.steps)
        self.traced_at[base] = self.steps
        if not stale:
            return
        names = _listed(changed(dict(stale[-1][-1]), dict(key[-1])))
        for k in stale:
            del self.graphs[k]
        if since < RETRACE_MIN_STEPS:
            self._run_eagerly(f"{names} changed {since} step{'' if since == 1 else 's'} after the step was traced, "
                              f"too often for tracing to pay (a trace pays after about {RETRACE_MIN_STEPS} steps)")

    def _eager_mismatch(self, graph: torch.fx.GraphModule, batches: Sequence[Batch]) -> Optional[str]:
        """Why the graph's loss departs from the eager loss on the same random draws, or None.

        Both run from the current random state and leave it as it was; the graph runs on copies of
        parameters, buffers and optimizer state, so nothing is updated. Pyro runs the eager loss as
        it ran while tracing (:func:`pyro_vae.tracing.traceable`: no host reads, no validation),
        which changes no value. One host read per graph.
        """
        devices = sorted({p.device.index or 0 for p in self.parameters if p.is_cuda})
        with torch.random.fork_rng(devices=devices), traceable():
            eager = self.loss(batches).detach()
        inputs = self._inputs(batches)
        num_static = len(inputs) - len(flatten(batches)[0])
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            traced = graph(*[t.detach().clone() for t in inputs[:num_static]], *inputs[num_static:])[0]
        # The same operations on the same draws, some summed in another order (oneDNN's products
        # where it pays): float32 rounding, ~1e-6 of the loss. rtol 1e-4 is well above it and far below
        # what a value frozen into the graph (a KL weight, a counter) changes.
        if bool(torch.isclose(traced, eager, rtol=1e-4, atol=1e-4, equal_nan=True)):
            return None
        return f"the traced step's loss ({traced.item():.7g}) is not the eager step's ({eager.item():.7g}) on the " \
               "same draws"

    def __call__(self, batches: Sequence[Batch]):
        self.steps += 1
        key = self._key(batches)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._new_graph(key, batches)
        try:
            with torch.no_grad():
                loss, *rest = graph(*self._inputs(batches))
        except Exception as error:  # noqa: BLE001 - e.g. no C++ compiler for Inductor
            reason = f"{type(error).__name__}: {_first_sentence(error)}"
            if isinstance(graph, CUDAGraphReplay):
                # A capture runs nothing, so the plain replay takes this step; a warm-up that failed
                # fails there again and raises.
                self._fall_back(f"CUDA graph capture failed ({reason}); replaying the traced graph without it")
                self.cuda_graphs = False
                self.graphs = {k: g.graph if isinstance(g, CUDAGraphReplay) else g for k, g in self.graphs.items()}
                self.steps -= 1
                return self(batches)
            if self.backend != "inductor":
                raise
            self._fall_back(f"Inductor failed ({reason}); replaying the traced graph instead")
            self.backend = "replay"
            self.graphs.clear()
            self.steps -= 1
            return self(batches)
        return (loss, *rest) if self.updates else (loss, rest)

    def _run_eagerly(self, reason: str, cause: Optional[BaseException] = None) -> NoReturn:
        self._fall_back(f"{reason}; running eagerly")
        raise _Untraceable(reason) from cause

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        warnings.warn(f"compiled training step: {reason}", RuntimeWarning, stacklevel=4)


def _first_sentence(error: BaseException) -> str:
    """The first sentence of an error's first line: a whole sentence for a one-line report."""
    line = first_line(error)
    match = re.search(r"[.!?](\s|$)", line)
    return (line[:match.start()] if match else line).rstrip(".")


def _listed(paths: Sequence[str]) -> str:
    """Attribute paths as a message names them: ``'model.beta'``, ``'a', 'b' and 'c'``."""
    quoted = [repr(p) for p in sorted(paths)]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


class _Untraceable(Exception):
    """Raised by :class:`CompiledStep` when a step cannot be traced; the step then runs eagerly."""


class TrainingStep:
    """Loss, gradient, optional clipping and an optimizer step, without host synchronisation.

    :param loss: an :class:`ObjectiveLoss` (or a wrapper of one, such as DDP).
    :param optimizer: a torch optimizer over the model's parameters.
    :param clip_grad_norm: clip the gradient's total norm to this value, if given.
    :param compile: ``"eager"`` (default): Pyro runs model, guide and objective every step;
        ``"replay"`` or ``"inductor"``: the compiled step (see the module's docstring), falling back
        to eager with one warning where it would depart from the eager step (:class:`CompiledStep`).
        ``"auto"`` is ``"replay"`` here; the training loop resolves it by the run's length first
        (:func:`choose_compile`). ``True``/``False`` mean ``"inductor"``/``"eager"``.
    :param validate: run Pyro's validation checks (arguments, supports) at every step. They read
        values on the host, which a traced graph cannot, so a compiled step then runs eagerly, with
        one warning. With ``False`` the eager step follows Pyro's global switch and a compiled
        step runs without checks, as Pyro's ``JitTrace*`` objectives do.
    :param cuda_graphs: replay a traced step on CUDA as a CUDA graph (:class:`CUDAGraphReplay`);
        off by default until it has run on a GPU.
    """

    def __init__(self, loss: nn.Module, optimizer: torch.optim.Optimizer, clip_grad_norm: Optional[float] = None,
                 compile="eager", validate: bool = False, cuda_graphs: bool = False):
        if compile is True:
            compile = "inductor"
        elif compile is False or compile is None:
            compile = "eager"
        if compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile!r}: choose one of {', '.join(COMPILE_MODES)}")
        if compile == "auto":
            compile = "replay"
        self.loss = loss
        self.optimizer = optimizer
        self.clip_grad_norm = clip_grad_norm
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self.compile = compile
        self.validate = validate
        self.distributed = isinstance(loss, nn.parallel.DistributedDataParallel)
        self.compiled: Optional[CompiledStep] = None
        #: The last step's total gradient norm before clipping (a device tensor), for callbacks.
        self.grad_norm: Optional[torch.Tensor] = None
        if compile != "eager" and validate:
            warnings.warn(f"training step: validate=True runs Pyro's checks at every step, which a traced graph "
                          f"cannot; running eagerly instead of compile={compile!r}", RuntimeWarning, stacklevel=2)
        elif compile != "eager":
            inner = loss.module if self.distributed else loss
            if not isinstance(inner, ObjectiveLoss):
                raise ValueError("a compiled step needs an ObjectiveLoss (or DDP of one)")
            # Under DDP the gradients are all-reduced between the graph and the update.
            self.compiled = CompiledStep(inner, compile, None if self.distributed else optimizer, clip_grad_norm,
                                         cuda_graphs)

    @property
    def mode(self) -> str:
        """The step that runs: "eager", "replay" or "inductor", "+update" where the
        optimizer's update is inside the traced graph, "+cudagraph" where it is replayed as a CUDA graph."""
        if self.compiled is None:
            return "eager"
        return (self.compiled.backend + ("+update" if self.compiled.updates else "")
                + ("+cudagraph" if self.compiled.cuda_graphs else ""))

    def __call__(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """Take one step; returns the detached loss and whether loss and gradient were finite."""
        if self.compiled is not None:
            try:
                return self._compiled_step(batches)
            except _Untraceable:
                self.compiled = None  # the warning said why; eager from now on
        with pyro.validation_enabled(True) if self.validate else contextlib.nullcontext():
            loss = self.loss(batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return self._update(loss.detach())

    def _compiled_step(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compiled.updates:
            loss, finite, self.grad_norm = self.compiled(batches)
            return loss, finite
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
        self.grad_norm = norm
        return loss, torch.isfinite(loss) & torch.isfinite(norm)


def _total_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, without a host sync."""
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # PyTorch 2.6 and later: one fused kernel per device
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
