"""Training speed: the project's Pyro training step against hand-written PyTorch and NumPyro.

One process, alternating repeats: every implementation is timed once per repeat, in turn, so
that a change in the machine's load touches all of them alike; the figure is the median over
repeats. The network and loss are the AEVB MNIST ones throughout: 784-500-20 with tanh units,
a Bernoulli decoder, a N(0, I) prior, the minibatch loss scaled to the full-data loss
(``num_data / batch_size``), Adam with step size 1e-3, MNIST in memory on the device,
dynamically binarized batches drawn by indexing.

Implementations (``impl`` in the JSON):

``pyro``        the project's :class:`pyro_vae.step.TrainingStep` with the objective named and fused
                Adam, in the variants (``--pyro-variants``)

                * ``default``: what ``pyro-vae train --dataset mnist`` runs (``compile="auto"``
                  resolved by :func:`pyro_vae.step.choose_compile` for 10 epochs at the batch size, fp32);
                * ``eager``: Pyro runs model, guide and objective every step (``compile="eager"``);
                * ``trace-split``: the traced graph returns loss and gradients, the optimizer runs
                  eagerly after it (mode ``replay``);
                * ``trace``: loss, gradients, clipping and the fused Adam update in one traced graph
                  (mode ``replay+update``), replayed as a CUDA graph on CUDA (``replay+update+cudagraph``);
                * ``trace-launches`` (CUDA only): the same graph replayed kernel by kernel, without a
                  CUDA graph;
                * ``trace-mkl`` (CPUs where :func:`pyro_vae.tracing.onednn_pays`): the same graph with
                  its large products left to MKL instead of oneDNN;
                * ``inductor``: the traced graph up to the gradients compiled by TorchInductor, the
                  fused Adam after it (mode ``inductor``);
                * ``eager-bf16``, ``trace-bf16``, ``inductor-bf16``: the same with the matrix
                  products in bfloat16 (``precision="bf16"``), skipped where the device has no
                  bfloat16 matrix unit (:func:`pyro_vae.precision.bf16_matrix_unit`).

                Each record has the step's ``mode`` as it ran and ``first_step_seconds`` (the first
                call, which traces or compiles; also ``compile_seconds`` for Inductor);
``torch``       a hand-written PyTorch step of the same network and estimator: ``eager`` (default
                Adam), ``fused`` (``Adam(fused=True)``) and ``compile`` (``torch.compile`` of the
                loss, fused Adam);
``numpyro``     NumPyro's SVI with ``TraceMeanField_ELBO`` / ``Trace_ELBO`` and the same network in
                plain JAX, a whole epoch jitted (``lax.fori_loop`` over its steps), if installed
                (``pip install -e .[bench]``).

Ratios: ``vs_torch_eager`` (hand-written PyTorch with default Adam), ``vs_torch_best`` (the fastest
hand-written variant of the same estimator), ``vs_numpyro`` (the same estimator's jitted NumPyro
epoch) and ``vs_pyro_eager`` (the project's eager fp32 step); below 1 is faster.

Also timed (unless ``--skip-eval``): the importance-sampled evaluation
:func:`pyro_vae.evaluation.log_likelihood` with K = ``--eval-particles`` (5000) over
``--eval-images`` test images, extrapolated to 10,000 and marked so in the JSON, for each
``--eval-chunk-sizes``: in fp32 with its chunks traced and eager, and in bf16 where the device has
a bfloat16 matrix unit (``precision`` and ``traced`` in each record).

With ``--epoch``: the wall time of one whole MNIST epoch through :func:`pyro_vae.train` with its
defaults (meanfield, ``compile="auto"``, fp32), training and the epoch's evaluation of the train
subset and the test set (``metrics["seconds"]``; the final log p(x), here with one particle, is not
part of it), beside the jitted NumPyro meanfield epoch at batch 100 (``epoch_vs_numpyro``).

The machine's CPU model, its AMX / AVX512-BF16 / AVX-512 flags, PyTorch's CPU capability, the
threads used and the load average at start and end are recorded in ``machine``.

It writes JSON and markdown only when given ``--out``; an existing file in ``benchmarks/results/``
is replaced only with ``--overwrite`` (refused before anything is timed). Usage::

    python benchmarks/speed.py --data-dir ../shared/data --out /tmp/speed.json
    python benchmarks/speed.py --data-dir ../shared/data --epoch --out benchmarks/results/speed_cpu.json --overwrite
"""

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

NUM_TRAIN = 60_000
NUM_TEST = 10_000
HIDDEN, LATENT, DATA_DIM = 500, 20, 784
LR = 1e-3

#: The project's step variants: name -> (compile mode, precision). ``auto`` is resolved as
#: ``pyro-vae train`` resolves it; ``trace-split`` stops the traced graph at the gradients.
PYRO_VARIANTS = {"default": ("auto", "fp32"), "eager": ("eager", "fp32"), "trace-split": ("replay", "fp32"),
                 "trace": ("replay", "fp32"), "trace-launches": ("replay", "fp32"),
                 "trace-mkl": ("replay", "fp32"), "inductor": ("inductor", "fp32"),
                 "eager-bf16": ("eager", "bf16"),
                 "trace-bf16": ("replay", "bf16"), "inductor-bf16": ("inductor", "bf16")}

# ------------------------------------------------------------------------------------ helpers


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("PYRO_VAE_DATA"),
                        help="folder with MNIST in torchvision layout (default: $PYRO_VAE_DATA)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per configuration")
    parser.add_argument("--steps", type=int, default=0,
                        help="timed steps per repeat (default: 200 at batch 100 or less, 30 above)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="untimed steps before the first repeat (at least one: the first step, timed alone)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--objectives", nargs="+", default=["meanfield", "trace", "iwae"],
                        help="meanfield, trace, iwae (K=5); others run on the pyro side only")
    parser.add_argument("--pyro-variants", nargs="+", default=list(PYRO_VARIANTS), choices=list(PYRO_VARIANTS),
                        metavar="VARIANT", help=f"of {', '.join(PYRO_VARIANTS)} (default: all; bf16 ones are "
                        "skipped without a bfloat16 matrix unit)")
    parser.add_argument("--torch-variants", nargs="+", default=["eager", "fused", "compile"])
    parser.add_argument("--skip-numpyro", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch and XLA (0: their default)")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--eval-images", type=int, default=NUM_TEST,
                        help="test images to evaluate; the time is extrapolated to 10,000")
    parser.add_argument("--eval-particles", type=int, default=5000)
    parser.add_argument("--eval-chunk-sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--epoch", action="store_true",
                        help="also time one whole MNIST epoch through pyro_vae.train, with its evaluation")
    parser.add_argument("--profile", action="store_true",
                        help="add a torch.profiler summary of each pyro variant at the first batch size")
    parser.add_argument("--out", default=None, help="JSON file; a .md summary is written beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out in benchmarks/results/")
    return parser.parse_args(argv)


def synchronize(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of what runs inside: RSS on the CPU (VmHWM, reset by /proc/self/clear_refs),
    ``torch.cuda.max_memory_allocated`` on CUDA."""

    def __init__(self, device):
        self.device = device

    def reset(self) -> None:
        import torch
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def read_mb(self) -> float:
        import torch
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @property
    def kind(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "peak RSS of the process (VmHWM)"


def cpuinfo() -> dict:
    """The first CPU's fields in /proc/cpuinfo ({} where there is none)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model_and_flags() -> tuple[str, set]:
    """The CPU's model name and its flags, from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    fields = cpuinfo()
    return fields.get("model name") or platform.processor(), set(fields.get("flags", "").split())


def load_average() -> Optional[tuple]:
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info(device) -> dict:
    import torch
    from pyro_vae.precision import bf16_matrix_unit
    cpu_model, flags = cpu_model_and_flags()
    fields = cpuinfo()
    info = {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_model": cpu_model, "cpu_family": f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}",
            "cpu_count": os.cpu_count(),
            "cpu_amx": bool(flags & {"amx_tile", "amx_bf16"}), "cpu_avx512_bf16": "avx512_bf16" in flags,
            "cpu_avx512": "avx512f" in flags, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_matrix_unit": bf16_matrix_unit(device), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "load_average_at_start": load_average()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    import pyro
    info["pyro"] = pyro.__version__
    try:
        import jax
        import numpyro
        info["jax"], info["numpyro"] = jax.__version__, numpyro.__version__
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except ImportError:
        info["numpyro"] = None
    return info


# ------------------------------------------------------------------------- torch implementations


class Batches:
    """Dynamically binarized minibatches of the training images, indexed on the device."""

    def __init__(self, train, batch_size: int, seed: int = 0):
        import torch
        from pyro_vae.batches import binarize
        self.train, self.batch_size, self.binarize = train, batch_size, binarize
        self.generator = torch.Generator(device=train.device).manual_seed(seed)
        self.order, self.position = None, len(train)

    def __call__(self):
        import torch
        if self.position + self.batch_size > len(self.train):
            self.order = torch.randperm(len(self.train), generator=self.generator, device=self.train.device)
            self.position = 0
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return self.binarize(self.train[index], self.generator)


class PyroStep:
    """The project's training step for one objective and variant; ``step(batch)`` returns the loss."""

    def __init__(self, objective: str, variant: str, device, batch_size: int):
        import torch
        from pyro_vae.config import DATASET_DEFAULTS
        from pyro_vae.models import build_vae
        from pyro_vae.objectives import make_objective
        from pyro_vae.step import CompiledStep, ObjectiveLoss, TrainingStep, choose_compile, make_optimizer

        compile_mode, precision = PYRO_VARIANTS[variant]
        self.variant = variant
        if compile_mode == "auto":  # as `pyro-vae train --dataset mnist` resolves it for its epochs
            compile_mode = choose_compile("auto", DATASET_DEFAULTS["mnist"]["epochs"] * (NUM_TRAIN // batch_size))
        model = build_vae(DATA_DIM, LATENT, [HIDDEN], "bernoulli", "tanh").to(device)
        loss = ObjectiveLoss(model, make_objective(objective), precision)
        self.step = TrainingStep(loss, make_optimizer("adam", model.parameters(), LR), compile=compile_mode)
        if variant == "trace-split":  # no optimizer in the graph: it returns loss and gradients
            self.step.compiled = CompiledStep(loss, "replay")
        elif variant == "trace-launches":
            self.step.compiled = CompiledStep(loss, "replay", self.step.optimizer, cuda_graphs=False)
        cuda_graph = "+cudagraph" if torch.device(device).type == "cuda" and variant != "trace-launches" else ""
        expected = {"eager": "eager", "replay": "replay" if variant == "trace-split" else "replay+update" + cuda_graph,
                    "inductor": "inductor"}[compile_mode]
        assert self.step.mode == expected, (variant, self.step.mode)

    @property
    def mode(self) -> str:
        """The step that runs (eager after a fallback)."""
        return self.step.mode

    def __call__(self, batch):
        if self.variant == "trace-mkl" and not self.step.compiled.graphs:  # traced here: keep MKL's products
            from unittest import mock
            from pyro_vae import tracing
            with mock.patch.object(tracing, "onednn_pays", lambda: False):
                return self.step([((batch,), NUM_TRAIN)])[0]
        return self.step([((batch,), NUM_TRAIN)])[0]


def pyro_variants(args, device) -> list:
    """The ``--pyro-variants`` that can run on ``device``: bf16 ones need a bfloat16 matrix unit,
    ``trace-launches`` CUDA (elsewhere it is ``trace``), ``trace-mkl`` a CPU where oneDNN's products
    are used (elsewhere it is ``trace`` too)."""
    import torch
    from pyro_vae.precision import bf16_matrix_unit
    from pyro_vae.tracing import onednn_pays
    variants = list(args.pyro_variants)
    if torch.device(device).type != "cuda" and "trace-launches" in variants:
        variants.remove("trace-launches")
    if (torch.device(device).type != "cpu" or not onednn_pays()) and "trace-mkl" in variants:
        variants.remove("trace-mkl")
    if bf16_matrix_unit(device) is not None:
        return variants
    skipped = [v for v in variants if PYRO_VARIANTS[v][1] == "bf16"]
    if skipped:
        print(f"note: skipping {', '.join(skipped)}: {device} has no bfloat16 matrix unit (AMX, AVX512-BF16, CUDA)",
              file=sys.stderr, flush=True)
    return [v for v in variants if v not in skipped]


def hand_written_step(objective: str, variant: str, device, particles: int = 5) -> Callable:
    """A hand-written PyTorch step of the same network and estimator; returns ``step(batch)``."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class HandVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc_hidden, self.enc_out = nn.Linear(DATA_DIM, HIDDEN), nn.Linear(HIDDEN, 2 * LATENT)
            self.dec_hidden, self.dec_out = nn.Linear(LATENT, HIDDEN), nn.Linear(HIDDEN, DATA_DIM)

        def forward(self, x):
            loc, raw = self.enc_out(torch.tanh(self.enc_hidden(x))).split(LATENT, -1)
            scale = F.softplus(raw) + 1e-4
            k = particles if objective == "iwae" else 1
            eps = torch.randn((k,) + loc.shape, device=x.device, dtype=x.dtype)
            z = loc + scale * eps                                            # (k, B, Nz)
            logits = self.dec_out(torch.tanh(self.dec_hidden(z)))
            log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
            if objective == "meanfield":                                     # analytic KL
                kl = (0.5 * (loc ** 2 + scale ** 2 - 1) - scale.log()).sum(-1)
                elbo = log_lik[0] - kl
            else:                                                            # log p(z) - log q(z|x), MC
                log_prior = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
                log_q = (-0.5 * eps ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
                log_w = log_lik + log_prior - log_q
                elbo = log_w[0] if objective == "trace" else torch.logsumexp(log_w, 0) - math.log(k)
            return -elbo.sum() * (NUM_TRAIN / x.shape[0])

    model = HandVAE().to(device)
    if variant == "eager":
        optimizer = torch.optim.Adam(model.parameters(), LR)
    else:
        optimizer = torch.optim.Adam(model.parameters(), LR, fused=True)
    loss_fn = torch.compile(model) if variant == "compile" else model

    def step(batch):
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


# --------------------------------------------------------------------------------------- NumPyro


def numpyro_epoch(objective: str, train_numpy, batch_size: int, steps: int) -> Optional[Callable]:
    """A jitted NumPyro epoch of ``steps`` SVI steps; returns ``run()`` that blocks until done."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from jax import lax
    from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

    elbo = {"meanfield": TraceMeanField_ELBO, "trace": Trace_ELBO}.get(objective)
    if elbo is None:
        return None

    def linear_init(key, n_in, n_out):  # PyTorch's default nn.Linear initialisation
        bound = 1 / math.sqrt(n_in)
        kw, kb = jax.random.split(key)
        return (jax.random.uniform(kw, (n_in, n_out), minval=-bound, maxval=bound),
                jax.random.uniform(kb, (n_out,), minval=-bound, maxval=bound))

    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    init = {"enc_hidden": linear_init(keys[0], DATA_DIM, HIDDEN), "enc_out": linear_init(keys[1], HIDDEN, 2 * LATENT),
            "dec_hidden": linear_init(keys[2], LATENT, HIDDEN), "dec_out": linear_init(keys[3], HIDDEN, DATA_DIM)}

    def layer(name):
        w, b = init[name]
        return numpyro.param(name + "_w", w), numpyro.param(name + "_b", b)

    def model(x):
        (w1, b1), (w2, b2) = layer("dec_hidden"), layer("dec_out")
        with numpyro.plate("data", NUM_TRAIN, subsample_size=x.shape[0]):
            z = numpyro.sample("z", ndist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
            logits = jnp.tanh(z @ w1 + b1) @ w2 + b2
            numpyro.sample("x", ndist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        (w1, b1), (w2, b2) = layer("enc_hidden"), layer("enc_out")
        with numpyro.plate("data", NUM_TRAIN, subsample_size=x.shape[0]):
            out = jnp.tanh(x @ w1 + b1) @ w2 + b2
            loc, raw = out[:, :LATENT], out[:, LATENT:]
            numpyro.sample("z", ndist.Normal(loc, jax.nn.softplus(raw) + 1e-4).to_event(1))

    train = jnp.asarray(train_numpy)
    svi = SVI(model, guide, numpyro.optim.Adam(LR), elbo())
    state = svi.init(jax.random.PRNGKey(1), train[:batch_size])

    @jax.jit
    def epoch(state, key):
        order = jax.random.permutation(key, train.shape[0])

        def body(i, carry):
            state, total = carry
            index = lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
            batch = jax.random.bernoulli(jax.random.fold_in(key, i), train[index]).astype(train.dtype)
            state, loss = svi.update(state, batch)
            return state, total + loss

        return lax.fori_loop(0, steps, body, (state, jnp.zeros(())))

    holder = {"state": state, "key": jax.random.PRNGKey(2)}

    def run():
        holder["key"], key = jax.random.split(holder["key"])
        holder["state"], total = epoch(holder["state"], key)
        total.block_until_ready()
        return total

    return run


# ----------------------------------------------------------------------------------- timing loop


def profile_step(step: Callable, batches: Callable, device, steps: int = 50) -> str:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(batches())
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=15)


def time_training(args, device, train) -> tuple[list, dict]:
    import torch
    memory = PeakMemory(device)
    records, profiles = [], {}
    numpyro_ok = not args.skip_numpyro
    train_numpy = None
    if numpyro_ok:
        try:
            import numpyro  # noqa: F401
            train_numpy = train.cpu().numpy()
        except ImportError:
            numpyro_ok = False
    variants = pyro_variants(args, device)
    for batch_size in args.batch_sizes:
        steps = args.steps or (200 if batch_size <= 100 else 30)
        steps_per_epoch = NUM_TRAIN // batch_size
        configs = []  # (impl, objective, variant, make)
        for objective in args.objectives:
            for variant in variants:
                configs.append(("pyro", objective, variant,
                                lambda o=objective, v=variant: PyroStep(o, v, device, batch_size)))
            if objective in ("meanfield", "trace", "iwae"):
                for variant in args.torch_variants:
                    configs.append(("torch", objective, variant,
                                    lambda o=objective, v=variant: hand_written_step(o, v, device)))
            if numpyro_ok and objective in ("meanfield", "trace"):
                configs.append(("numpyro", objective, "jit-epoch",
                                lambda o=objective: numpyro_epoch(o, train_numpy, batch_size, steps_per_epoch)))
        state = []
        for impl, objective, variant, make in configs:
            torch.manual_seed(0)
            start = time.perf_counter()
            memory.reset()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runner = make()
                if runner is None:
                    continue
                batches = Batches(train, batch_size)
                first_step = None
                if impl == "numpyro":
                    runner()  # compiles
                else:
                    synchronize(device)
                    first_start = time.perf_counter()
                    runner(batches())  # traces or compiles a compiled step
                    synchronize(device)
                    first_step = time.perf_counter() - first_start
                    for _ in range(args.warmup - 1):
                        runner(batches())
                    synchronize(device)
            setup = time.perf_counter() - start
            state.append({"impl": impl, "objective": objective, "variant": variant, "run": runner,
                          "batches": batches, "setup_s": setup, "first_step_s": first_step, "times": [],
                          "peak_mb": memory.read_mb()})
            print(f"  ready: batch {batch_size} {impl:8s} {objective:10s} {variant:14s} setup {setup:6.1f} s",
                  file=sys.stderr, flush=True)
        for repeat in range(args.repeats):
            for entry in state:
                memory.reset()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if entry["impl"] == "numpyro":
                        start = time.perf_counter()
                        entry["run"]()
                        entry["times"].append((time.perf_counter() - start) / steps_per_epoch)
                    else:
                        run, batches = entry["run"], entry["batches"]
                        synchronize(device)
                        start = time.perf_counter()
                        for _ in range(steps):
                            loss = run(batches())
                        synchronize(device)
                        entry["times"].append((time.perf_counter() - start) / steps)
                        if not torch.isfinite(loss).item():
                            raise RuntimeError(f"non-finite loss in {entry['impl']} {entry['variant']}")
                entry["peak_mb"] = max(entry["peak_mb"], memory.read_mb())
        for entry in state:
            ms = statistics.median(entry["times"]) * 1e3
            record = {"impl": entry["impl"], "objective": entry["objective"], "variant": entry["variant"],
                      "batch_size": batch_size, "ms_per_step": ms,
                      "ms_per_step_repeats": [t * 1e3 for t in entry["times"]],
                      "s_per_epoch": ms * steps_per_epoch / 1e3, "samples_per_s": batch_size / ms * 1e3,
                      "peak_memory_mb": entry["peak_mb"], "setup_s": entry["setup_s"],
                      "first_step_seconds": entry["first_step_s"],
                      "steps_per_repeat": steps_per_epoch if entry["impl"] == "numpyro" else steps}
            if entry["impl"] == "pyro":
                record["mode"] = entry["run"].mode
                record["precision"] = PYRO_VARIANTS[entry["variant"]][1]
                if record["mode"].startswith("inductor"):
                    record["compile_seconds"] = entry["first_step_s"]
            records.append(record)
        if args.profile and batch_size == args.batch_sizes[0]:
            for entry in state:
                if entry["impl"] == "pyro" and entry["objective"] == args.objectives[0]:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        profiles[f"pyro {entry['objective']} {entry['variant']} batch {batch_size}"] = \
                            profile_step(entry["run"], entry["batches"], device)
        del state
    add_ratios(records)
    return records, profiles


def add_ratios(records: list) -> None:
    def find(impl, objective, batch_size, variant=None):
        found = [r for r in records if r["impl"] == impl and r["objective"] == objective
                 and r["batch_size"] == batch_size and (variant is None or r["variant"] == variant)]
        return min(found, key=lambda r: r["ms_per_step"]) if found else None

    for record in records:
        key = record["objective"], record["batch_size"]
        for name, reference in (("vs_torch_eager", find("torch", *key, "eager")),
                                ("vs_torch_best", find("torch", *key)),
                                ("vs_numpyro", find("numpyro", *key)),
                                ("vs_pyro_eager", find("pyro", *key, "eager"))):
            record[name] = record["ms_per_step"] / reference["ms_per_step"] if reference else None
        record["fastest_of_objective"] = False
    for key in {(r["objective"], r["batch_size"]) for r in records}:
        best = min((r for r in records if (r["objective"], r["batch_size"]) == key), key=lambda r: r["ms_per_step"])
        best["fastest_of_objective"] = True


@contextlib.contextmanager
def evaluation_probe(eager: bool):
    """Collect the chunk evaluators that :func:`~pyro_vae.evaluation.log_likelihood` makes, to see
    whether they traced; ``eager`` keeps them from tracing. Restores the module as it was."""
    from pyro_vae import evaluation
    original, threshold = evaluation._LogWeights, evaluation._LogWeights.MIN_CHUNKS_TO_TRACE
    made = []

    class Probe(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    evaluation._LogWeights = Probe
    if eager:
        original.MIN_CHUNKS_TO_TRACE = 10**9
    try:
        yield made
    finally:
        evaluation._LogWeights = original
        original.MIN_CHUNKS_TO_TRACE = threshold


def time_evaluation(args, device, test) -> list:
    """log p(x) with K = ``--eval-particles`` per chunk size: fp32 traced and eager, bf16 traced."""
    import torch
    from pyro_vae.evaluation import log_likelihood
    from pyro_vae.models import build_vae
    from pyro_vae.precision import bf16_matrix_unit
    memory = PeakMemory(device)
    torch.manual_seed(0)
    model = build_vae(DATA_DIM, LATENT, [HIDDEN], "bernoulli", "tanh").to(device)
    x = torch.bernoulli(test[:args.eval_images], generator=torch.Generator(device=device).manual_seed(0))
    runs = [("fp32", False), ("fp32", True)] + ([("bf16", False)] if bf16_matrix_unit(device) is not None else [])
    results = []
    for chunk_size in args.eval_chunk_sizes:
        for precision, eager in runs:
            if eager and not results[-1]["traced"]:
                continue  # too few chunks to trace: the fp32 run above was eager already
            memory.reset()
            with evaluation_probe(eager) as made:
                synchronize(device)
                start = time.perf_counter()
                estimate = log_likelihood(model.model, model.guide, x, num_particles=args.eval_particles,
                                          chunk_size=chunk_size, precision=precision)
                synchronize(device)
                seconds = time.perf_counter() - start
            traced = bool(made) and all(m.trace_graphs and m.graphs for m in made)
            results.append({"num_particles": args.eval_particles, "images_timed": len(x), "chunk_size": chunk_size,
                            "precision": precision, "traced": traced, "seconds": seconds,
                            "seconds_for_10000_images": seconds * NUM_TEST / len(x),
                            "extrapolated": len(x) != NUM_TEST, "peak_memory_mb": memory.read_mb(),
                            "log_likelihood_untrained": estimate.mean})
            print(f"  eval chunk {chunk_size} {precision} {'traced' if traced else 'eager'}: {seconds:.1f} s for "
                  f"{len(x)} images", file=sys.stderr, flush=True)
    return results


def time_epoch(args, device, training: list) -> dict:
    """One MNIST epoch through :func:`pyro_vae.train` with its defaults, beside NumPyro's epoch."""
    from pyro_vae import TrainConfig, train
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train(TrainConfig(dataset="mnist", data_dir=args.data_dir, device=device.type, epochs=1,
                                eval_particles=1, out=str(Path(folder) / "run")), progress=False, overwrite=True)
    seconds = run.metrics["seconds"]
    numpyro = next((r for r in training if r["impl"] == "numpyro" and r["objective"] == "meanfield"
                    and r["batch_size"] == 100), None)
    numpyro_seconds = numpyro["ms_per_step"] * (NUM_TRAIN // 100) / 1e3 if numpyro else None
    result = {"objective": run.config.objective, "batch_size": run.config.batch_size,
              "mode": run.metrics["environment"]["training_step"], "precision": run.config.precision,
              "seconds": seconds, "numpyro_epoch_seconds": numpyro_seconds,
              "epoch_vs_numpyro": seconds / numpyro_seconds if numpyro_seconds else None}
    print(f"  epoch through pyro_vae.train: {seconds:.1f} s ({result['mode']})", file=sys.stderr, flush=True)
    return result


# ------------------------------------------------------------------------------------- reporting


def fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def yes_no(value) -> str:
    return "yes" if value else "no"


def table(records: list) -> str:
    lines = ["| batch | objective | impl | variant | mode | ms/step | s/epoch | samples/s | vs torch eager | "
             "vs torch best | vs NumPyro | vs Pyro eager | first step s | peak MB |",
             "| ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(records, key=lambda r: (r["batch_size"], r["objective"], r["impl"] != "pyro", r["impl"],
                                            r["variant"] != "default", r["ms_per_step"])):
        variant = "**default** (pyro-vae train)" if r["impl"] == "pyro" and r["variant"] == "default" else r["variant"]
        mark = " **(fastest)**" if r["fastest_of_objective"] else ""
        lines.append(f"| {r['batch_size']} | {r['objective']} | {r['impl']} | {variant}{mark} | {r.get('mode', '-')} | "
                     f"{r['ms_per_step']:.2f} | {r['s_per_epoch']:.2f} | {r['samples_per_s']:.0f} | "
                     f"{fmt(r['vs_torch_eager'])} | {fmt(r['vs_torch_best'])} | {fmt(r['vs_numpyro'])} | "
                     f"{fmt(r['vs_pyro_eager'])} | {fmt(r.get('first_step_seconds'))} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


def evaluation_table(evaluation: list) -> str:
    lines = ["| K | images timed | chunk size | precision | traced | seconds | seconds for 10,000 images | peak MB |",
             "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    for e in evaluation:
        lines.append(f"| {e['num_particles']} | {e['images_timed']} | {e['chunk_size']} | {e['precision']} | "
                     f"{yes_no(e['traced'])} | {e['seconds']:.1f} | {e['seconds_for_10000_images']:.0f}"
                     f"{' (extrapolated)' if e['extrapolated'] else ''} | {e['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


def epoch_table(epoch: dict) -> str:
    return "\n".join([
        "| objective | batch | mode | precision | seconds (training + epoch evaluation) | NumPyro epoch s | "
        "epoch vs NumPyro |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: |",
        f"| {epoch['objective']} | {epoch['batch_size']} | {epoch['mode']} | {epoch['precision']} | "
        f"{epoch['seconds']:.1f} | {fmt(epoch['numpyro_epoch_seconds'], 1)} | {fmt(epoch['epoch_vs_numpyro'])} |"])


def markdown(result: dict) -> str:
    machine = result["machine"]
    parts = [f"# Training speed ({machine['device']})", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {machine.get('cpu_model') or 'unknown CPU'} (AMX: {yes_no(machine.get('cpu_amx'))}, "
             f"AVX512-BF16: {yes_no(machine.get('cpu_avx512_bf16'))}, AVX-512: {yes_no(machine.get('cpu_avx512'))}; "
             f"bfloat16 matrix unit: {machine.get('bf16_matrix_unit')}; PyTorch CPU capability "
             f"{machine.get('torch_cpu_capability')}), {machine['cpu_count']} CPUs, "
             f"torch {machine['torch']} ({machine['torch_threads']} threads), "
             f"pyro {machine['pyro']}, numpyro {machine.get('numpyro')}; load average at start "
             f"{machine.get('load_average_at_start')}, at end {machine.get('load_average_at_end')}.", "",
             f"Median of {result['settings']['repeats']} alternating repeats; peak memory is "
             f"{result['memory_kind']}. Ratios below 1 are faster than the reference. **default** is the step "
             "`pyro-vae train --dataset mnist` runs; mode is the step that ran (replay+update: the optimizer's "
             "update inside the traced graph); first step s is the first call, which traces or compiles.", "",
             table(result["training"])]
    if result.get("evaluation"):
        parts += ["", "## Importance-sampled evaluation", "", evaluation_table(result["evaluation"])]
    if result.get("epoch"):
        parts += ["", "## One epoch through pyro_vae.train", "",
                  "MNIST with `pyro-vae train`'s defaults, one epoch: training and the epoch's evaluation (ELBO of "
                  "the train subset and the test set), `metrics[\"seconds\"]`. The final log p(x) (here with one "
                  "particle) is not part of it. NumPyro's epoch is its jitted meanfield steps at batch 100 "
                  "(steps x ms/step), without an evaluation.", "", epoch_table(result["epoch"])]
    for name, text in result.get("profiles", {}).items():
        parts += ["", f"## Profile: {name}", "", "```", text, "```"]
    return "\n".join(parts) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.out:
        from committed import exit_if_refused
        exit_if_refused(Path(args.out), args.overwrite)
    if args.threads:
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
                              if args.threads == 1 else "")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from pyro_vae.datasets import load_dataset
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    data = load_dataset("mnist", args.data_dir, download=False)
    train, test = data.train.to(device), data.test.to(device)
    result = {"command": " ".join([Path(sys.argv[0]).name if argv is None else "speed.py"] +
                                  (sys.argv[1:] if argv is None else list(argv))),
              "machine": machine_info(device), "settings": vars(args),
              "memory_kind": PeakMemory(device).kind}
    start = time.perf_counter()
    result["training"], result["profiles"] = time_training(args, device, train)
    if args.epoch:
        result["epoch"] = time_epoch(args, device, result["training"])
    if not args.skip_eval:
        result["evaluation"] = time_evaluation(args, device, test)
    result["wall_seconds"] = time.perf_counter() - start
    result["machine"]["load_average_at_end"] = load_average()
    print(table(result["training"]))
    if result.get("evaluation"):
        print(evaluation_table(result["evaluation"]))
    if result.get("epoch"):
        print(epoch_table(result["epoch"]))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str))
        out.with_suffix(".md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()
