"""What mapping PyTorch's kernel constants in (:mod:`pyro_vae.torch_constants`) is worth.

Fresh processes, alternating: in every repeat one process with the constants mapped first (as a
CPU training run does when it starts) and one with ``PYRO_VAE_MAP_TORCH_CONSTANTS=0``, each timing

* ``log_sigmoid`` of a 100x784 float32 tensor (the Bernoulli log-density's kernel), µs per call,
  median of 200 calls, and
* the default MNIST training step (784-500-20, batch 100, ``meanfield``, the traced step with its
  minibatch drawn and binarized), ms per step: the median of ``--steps`` steps timed in blocks of 50,

on ``--threads`` threads. Figures are medians over ``--repeats``; ``ratio`` is mapped / not mapped.
The training images are uniform grey levels (the kernels' speed does not depend on the data).
It writes JSON and markdown only when given ``--out``; an existing file in ``benchmarks/results/``
is replaced only with ``--overwrite``. Usage::

    python benchmarks/torch_constants.py --out benchmarks/results/torch_constants_cpu.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {"mapped": "1", "not mapped": "0"}
#: Steps are timed in blocks of this many; a process's figure is its median block.
STEPS_PER_BLOCK = 50


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=1000, help="timed training steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="JSON file to write (and a markdown summary beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace committed results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(steps: int, threads: int) -> dict:
    """One process's figures (the environment says whether the constants are mapped)."""
    import torch
    import torch.nn.functional as F

    from pyro_vae.batches import binarize
    from pyro_vae.models import build_vae
    from pyro_vae.objectives import make_objective
    from pyro_vae.step import ObjectiveLoss, TrainingStep, make_optimizer
    from pyro_vae.torch_constants import map_torch_constants
    map_torch_constants()  # where a run would map them: before any kernel runs (PYRO_VAE_MAP_TORCH_CONSTANTS=0: not)
    torch.set_num_threads(threads)
    logits = torch.randn(100, 784, generator=torch.Generator().manual_seed(0))
    calls = []
    for _ in range(200):
        start = time.perf_counter()
        F.logsigmoid(logits)
        calls.append(time.perf_counter() - start)

    torch.manual_seed(0)
    train = torch.rand(10_000, 784)
    generator = torch.Generator().manual_seed(0)
    model = build_vae(784, 20, [500], "bernoulli", "tanh")
    step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")),
                        make_optimizer("adam", model.parameters(), 1e-3), compile="replay")

    def one_step():
        index = torch.randint(0, len(train), (100,), generator=generator)
        step([((binarize(train[index], generator),), 60_000)])

    one_step()  # traces
    blocks = []
    for _ in range(max(1, steps // STEPS_PER_BLOCK)):
        start = time.perf_counter()
        for _ in range(STEPS_PER_BLOCK):
            one_step()
        blocks.append((time.perf_counter() - start) / STEPS_PER_BLOCK)
    return {"log_sigmoid_us": 1e6 * statistics.median(calls), "step_ms": 1e3 * statistics.median(blocks),
            "mode": step.mode,
            "bytes_mapped": map_torch_constants()}


def markdown(result: dict) -> str:
    rows = ["| figure | mapped | not mapped | ratio |", "| --- | ---: | ---: | ---: |"]
    for key, label in (("log_sigmoid_us", "log_sigmoid, 100x784, µs per call"),
                       ("step_ms", "default MNIST step (traced, meanfield, batch 100), ms")):
        mapped, unmapped = result["median"]["mapped"][key], result["median"]["not mapped"][key]
        rows.append(f"| {label} | {mapped:.3g} | {unmapped:.3g} | {mapped / unmapped:.2f} |")
    return "\n".join([
        "# PyTorch's kernel constants mapped at import", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {result['machine']['cpu_model']} ({result['machine']['cpu_family']}), {result['threads']} threads, "
        f"torch {result['machine']['torch']}. "
        f"Median of {result['repeats']} alternating pairs of fresh processes; "
        f"{result['median']['mapped']['bytes_mapped'] / 2**20:.0f} MB mapped.", "", *rows, ""])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.steps, args.threads)))
        return {}
    if args.out:
        from committed import exit_if_refused
        exit_if_refused(Path(args.out), args.overwrite)
    import torch
    from speed import machine_info
    runs = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        for name, switch in SETTINGS.items():
            child = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps),
                                    "--threads", str(args.threads)], capture_output=True, text=True, check=True,
                                   env={**os.environ, "PYRO_VAE_MAP_TORCH_CONSTANTS": switch})
            runs[name].append(json.loads(child.stdout.splitlines()[-1]))
            figures = runs[name][-1]
            print(f"repeat {repeat + 1}/{args.repeats} {name}: log_sigmoid {figures['log_sigmoid_us']:.0f} µs, "
                  f"step {figures['step_ms']:.2f} ms", file=sys.stderr, flush=True)
    median = {name: {key: statistics.median(run[key] for run in records)
                     for key in ("log_sigmoid_us", "step_ms", "bytes_mapped")} for name, records in runs.items()}
    result = {"command": " ".join(["torch_constants.py"] + (sys.argv[1:] if argv is None else list(argv))),
              "machine": machine_info(torch.device("cpu")), "threads": args.threads, "repeats": args.repeats, "steps": args.steps,
              "runs": runs, "median": median}
    print(markdown(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()
