"""Extra latent structure on MNIST: one against two stochastic layers, and M2 with 100 labels.

Runs, with :func:`pyro_vae.train` and the settings below (each one ``pyro-vae train`` command,
printed as it starts), and collects their ``metrics.json``:

* ``one-layer``: the VAE with Burda et al.'s one-layer network (784-200-200-50, tanh);
* ``two-layer``: their two-layer network (784-200-200-100-100-100-50,
  ``--model hierarchical``), same objective, optimiser, batch size and epochs (the objective is
  ``--objective``, ``trace`` by default; with another one, such as ``--objective iwae
  --objective-particles 5``, the runs and results are named ``one-layer-iwae5`` and so on);
* ``m2``: Kingma et al.'s M2 with 10 labels per class (``--model m2``, ``enum``), reporting the
  test accuracy of its classifier q(y|x); its 100 labelled images count 599 times each
  (``--labelled-weight 599``, ``--m2-labelled-weight``), so that they weigh as much as the
  59,900 unlabelled ones;
* ``m1``: a VAE with a 50-dimensional code behind two hidden layers of 600 softplus units, and
  ``m1m2``: M2 (z of 10) with the same 100 labels stacked on it (``--model m1m2 --m1 RUNS/m1``,
  Kingma et al.'s M1 + M2).

Both layered models are scored by the importance-sampled test log-likelihood with K particles
per test image on all 10,000 test images. Results are merged by name into ``--out`` (default
``runs/benchmarks/latent_structure/latent_structure.json`` under the working directory) and its
``.md``; run directories under ``--runs`` (reused when ``--reuse`` is given and complete). The
committed results, ``benchmarks/results/latent_structure.json``, are replaced only with
``--out benchmarks/results/latent_structure.json --overwrite``:

    python benchmarks/latent_structure.py --data-dir ../shared/data --epochs 50 --m2-epochs 30 \
        --out benchmarks/results/latent_structure.json --overwrite
"""

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from pyro_vae import PyroVAEError, TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from committed import SCRATCH, refuse_to_replace  # noqa: E402


def configurations(args) -> dict:
    common = dict(dataset="mnist", data_dir=args.data_dir, device=args.device, seed=args.seed,
                  eval_every=args.eval_every, eval_particles=args.particles)
    layered = dict(common, objective=args.objective, particles=args.objective_particles, epochs=args.epochs)
    return {
        "one-layer": TrainConfig(model="vae", latent_dim=50, hidden_dims=[200, 200], **layered),
        "two-layer": TrainConfig(model="hierarchical", latent_dim=100, hidden_dims=[200, 200], **layered),
        "m2": TrainConfig(model="m2", model_args={"labels_per_class": 10, "labelled_weight": args.m2_labelled_weight},
                          epochs=args.m2_epochs, **common),
        "m1": TrainConfig(model="vae", latent_dim=50, hidden_dims=[600, 600], activation="softplus",
                          epochs=args.m1_epochs, **common),
        "m1m2": TrainConfig(model="m1m2", model_args={"m1": str(Path(args.runs) / "m1"), "labels_per_class": 10},
                            latent_dim=10, epochs=args.m2_epochs, **common),
    }


def command(config: TrainConfig) -> str:
    """The ``pyro-vae train`` command line of a configuration."""
    words = ["pyro-vae", "train"]
    for key, value in vars(config).items():
        if value is None or key in ("data_dir", "out", "model_args") or value == getattr(TrainConfig(), key):
            continue
        values = value if isinstance(value, list) else [value]
        flag = "--hidden-dim" if key == "hidden_dims" else "--" + key.replace("_", "-")
        words += [flag, *map(str, values)]
    for key, value in config.model_args.items():  # the flags of the built-in models' own options
        words += ["--" + key.replace("_", "-"), str(value)]
    return " ".join(shlex.quote(word) for word in words + ["--data-dir", "DATA", "--out", config.out])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PYRO_VAE_DATA)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the one- and two-layer models")
    parser.add_argument("--objective", default="trace", help="objective of the one- and two-layer models")
    parser.add_argument("--objective-particles", type=int, default=0,
                        help="particles of that objective (default: its own default)")
    parser.add_argument("--m2-epochs", type=int, default=30, help="epochs of M2 and of M1 + M2")
    parser.add_argument("--m2-labelled-weight", type=float, default=599.0,
                        help="how many times each labelled image counts in M2's objective")
    parser.add_argument("--m1-epochs", type=int, default=100, help="epochs of M1")
    parser.add_argument("--particles", type=int, default=1000, help="K of the test log-likelihood")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="+", choices=("one-layer", "two-layer", "m2", "m1", "m1m2"), help="run only these")
    parser.add_argument("--runs", default="runs/latent_structure", help="folder of the run directories")
    parser.add_argument("--reuse", action="store_true", help="reuse finished run directories")
    parser.add_argument("--out", default=str(SCRATCH / "latent_structure" / "latent_structure.json"),
                        help="JSON file the results are merged into, a .md table beside it (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into an existing file in benchmarks/results/ (its entries of the same "
                             "names are replaced)")
    args = parser.parse_args(argv)
    try:
        run(args)
    except PyroVAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> None:
    """Train (or read back) every selected run and merge its metrics into ``args.out``."""
    out = Path(args.out)
    refuse_to_replace([out, out.with_suffix(".md")], args.overwrite)
    print(f"results to {out.resolve()}", flush=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name, config in configurations(args).items():
        if args.only and name not in args.only:
            continue
        if name in ("one-layer", "two-layer") and args.objective != "trace":
            name += f"-{args.objective}{args.objective_particles or ''}"
        config.out = str(Path(args.runs) / name)
        metrics_file = Path(config.out) / "metrics.json"
        print(command(config), flush=True)
        if args.reuse and metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
        else:
            metrics = train(config).metrics
        results[name] = {"command": command(config), **{key: metrics[key] for key in (
            "test_log_likelihood", "test_log_likelihood_stderr", "test_log_likelihood_particles", "test_elbo",
            "train_elbo", "seconds", "samples_seen") if key in metrics}}
        if "test_accuracy" in metrics:
            results[name]["test_accuracy"] = metrics["test_accuracy"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    write_table(results, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())


def write_table(results: dict, path: Path) -> None:
    lines = ["| run | test log p(x) (nats, ± s.e.) | K | test ELBO | train ELBO | test accuracy | minutes |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        accuracy = f"{100 * r['test_accuracy']:.2f}%" if "test_accuracy" in r else ""
        lines.append(f"| {name} | {r['test_log_likelihood']:.2f} ± {r['test_log_likelihood_stderr']:.2f} | "
                     f"{r['test_log_likelihood_particles']} | {r['test_elbo']:.2f} | {r['train_elbo']:.2f} | "
                     f"{accuracy} | {r['seconds'] / 60:.1f} |")
    lines += ["", "test log p(x): importance-sampled with K particles per test image on all 10,000 test images; "
              "minutes: wall-clock training time where the run was made (its config.json names the machine).",
              "", "Commands:", ""] + [f"    {r['command']}" for r in results.values()]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
