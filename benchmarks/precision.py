"""bfloat16 against float32 training: a paired comparison of the models they learn.

Two runs of the default MNIST VAE (784-500-20, tanh, Bernoulli decoder, dynamic binarization,
``meanfield``, Adam 1e-3, batch 100) from the same seed, one with ``precision="fp32"`` and one
with ``precision="bf16"`` (:mod:`pyro_vae.precision`), through :func:`pyro_vae.train`. Both
models are then evaluated by the same float32 evaluator with the same random draws: the test
ELBO (``--elbo-particles`` draws per image) and the importance-sampled test log p(x)
(``--particles``), each as bf16 minus fp32 paired by test image (:func:`pyro_vae.evaluation.paired_difference`).
The bf16 model is also evaluated by the bf16 evaluator, to show what evaluating in bf16 changes.
Training and evaluation seconds are wall times on this machine, in one process.

Run directories go to ``--runs-dir`` (default ``runs/benchmarks/precision``); a finished run there
is read back instead of trained again. Results go to ``--out`` (JSON and a markdown table beside
it); an existing file in ``benchmarks/results/`` is replaced only with ``--overwrite``::

    python benchmarks/precision.py --data-dir ../shared/data --out benchmarks/results/precision_cpu.json
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pyro
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from committed import SCRATCH, refuse_to_replace  # noqa: E402
from speed import cpu_model_and_flags  # noqa: E402
from pyro_vae import PyroVAEError, TrainConfig, evaluation, load_run, train  # noqa: E402
from pyro_vae.precision import bf16_matrix_unit, check_precision  # noqa: E402
from pyro_vae.training import evaluation_data  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="bfloat16 against float32 MNIST training, paired by test image.")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PYRO_VAE_DATA)")
    parser.add_argument("--epochs", type=int, default=10, help="(default: %(default)s)")
    parser.add_argument("--particles", type=int, default=1000, help="K of the test log p(x) (default: %(default)s)")
    parser.add_argument("--elbo-particles", type=int, default=10, help="draws per image of the test ELBO "
                                                                        "(default: %(default)s)")
    parser.add_argument("--train-size", type=int, help="train on this many images (default: all 60,000)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--runs-dir", default=str(SCRATCH / "precision"), help="(default: %(default)s)")
    parser.add_argument("--out", required=True, help="JSON file of the results; a markdown table is written beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in benchmarks/results/")
    return parser.parse_args(argv)


def trained(config: TrainConfig) -> tuple[torch.nn.Module, dict]:
    """The run of ``config``: read back if it finished before, else trained now."""
    metrics_file = Path(config.out) / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        stored = TrainConfig.from_dict(metrics["config"])
        if (stored.precision, stored.epochs, stored.seed, stored.train_size) == \
                (config.precision, config.epochs, config.seed, config.train_size):
            model, _, _ = load_run(config.out, "cpu", config.data_dir)
            return model, metrics
    run = train(config, progress=True, overwrite=True)
    return run.model, run.metrics


def evaluate(model, test: torch.Tensor, args, precision: str) -> dict:
    """Test ELBO and log p(x) of ``model``, with draws seeded by ``args.seed`` (the same for every model)."""
    model.eval()
    figures = {}
    for name, estimator, particles in (("elbo", evaluation.elbo, args.elbo_particles),
                                       ("log_likelihood", evaluation.log_likelihood, args.particles)):
        pyro.set_rng_seed(args.seed)
        start = time.perf_counter()
        figures[name] = estimator(model.model, model.guide, test, particles, precision=precision)
        figures[f"{name}_seconds"] = time.perf_counter() - start
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        refuse_to_replace([out, out.with_suffix(".md")], args.overwrite)
        check_precision("bf16", torch.device("cpu"))
        if args.threads:
            torch.set_num_threads(args.threads)
        load_start = os.getloadavg()
        models, metrics = {}, {}
        for precision in ("fp32", "bf16"):
            config = TrainConfig(dataset="mnist", data_dir=args.data_dir, epochs=args.epochs, precision=precision,
                                 train_size=args.train_size, seed=args.seed, eval_particles=1, device="cpu",
                                 out=str(Path(args.runs_dir) / precision))
            models[precision], metrics[precision] = trained(config)
        data = evaluation_data(models["fp32"], TrainConfig.from_dict(metrics["fp32"]["config"]), {},
                               torch.device("cpu")).data
        figures = {"fp32": evaluate(models["fp32"], data.test, args, "fp32"),
                   "bf16": evaluate(models["bf16"], data.test, args, "fp32"),
                   "bf16 evaluated in bf16": evaluate(models["bf16"], data.test, args, "bf16")}
    except PyroVAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = {
        "command": "python benchmarks/precision.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": cpu_model_and_flags()[0], "bf16_matrix_unit": bf16_matrix_unit("cpu"),
                    "threads": torch.get_num_threads(), "load_average_start": load_start,
                    "load_average_end": os.getloadavg(), "torch": torch.__version__, "pyro": pyro.__version__},
        "epochs": args.epochs, "particles": args.particles, "elbo_particles": args.elbo_particles,
        "training_seconds": {p: metrics[p]["seconds"] for p in metrics},
        "training_step": {p: metrics[p]["environment"].get("training_step") for p in metrics},
        "rows": {name: {key: value.as_dict() if isinstance(value, evaluation.Estimate) else value
                        for key, value in row.items()} for name, row in figures.items()},
        "bf16_minus_fp32": {name: evaluation.paired_difference(figures["bf16"][name], figures["fp32"][name]).as_dict()
                            for name in ("elbo", "log_likelihood")},
        "bf16_evaluator_minus_fp32_evaluator": {
            name: evaluation.paired_difference(figures["bf16 evaluated in bf16"][name], figures["bf16"][name]).as_dict()
            for name in ("elbo", "log_likelihood")},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    rows, machine = result["rows"], result["machine"]
    lines = [f"# bfloat16 against float32 training (MNIST, {result['epochs']} epochs)", "",
             f"`{result['command']}`", "",
             f"CPU {machine['cpu']}, bf16 matrix unit {machine['bf16_matrix_unit']}, {machine['threads']} threads, "
             f"load average {machine['load_average_start'][0]:.1f} at the start; torch {machine['torch']}, "
             f"pyro {machine['pyro']}. Training seconds include the per-epoch evaluation.", "",
             f"| model | evaluator | training s | test ELBO ({result['elbo_particles']} draws) | "
             f"test log p(x) (K = {result['particles']}) | log p(x) evaluation s |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, (model, evaluator) in (("fp32", ("fp32", "fp32")), ("bf16", ("bf16", "fp32")),
                                     ("bf16 evaluated in bf16", ("bf16", "bf16"))):
        row = rows[name]
        lines.append(f"| {model} | {evaluator} | {result['training_seconds'][model]:.0f} | "
                     f"{row['elbo']['mean']:.2f} ± {row['elbo']['stderr']:.2f} | "
                     f"{row['log_likelihood']['mean']:.2f} ± {row['log_likelihood']['stderr']:.2f} | "
                     f"{row['log_likelihood_seconds']:.1f} |")
    diff, evaluator = result["bf16_minus_fp32"], result["bf16_evaluator_minus_fp32_evaluator"]
    lines += ["", "Paired by test image, the same draws for both (nats per datapoint):", "",
              f"* bf16 model minus fp32 model, fp32 evaluator: test ELBO {diff['elbo']['mean']:+.3f} ± "
              f"{diff['elbo']['stderr']:.3f}, test log p(x) {diff['log_likelihood']['mean']:+.3f} ± "
              f"{diff['log_likelihood']['stderr']:.3f}",
              f"* the bf16 model, bf16 evaluator minus fp32 evaluator: test ELBO {evaluator['elbo']['mean']:+.3f} ± "
              f"{evaluator['elbo']['stderr']:.3f}, test log p(x) {evaluator['log_likelihood']['mean']:+.3f} ± "
              f"{evaluator['log_likelihood']['stderr']:.3f}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
