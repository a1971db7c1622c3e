"""The ``pyro-vae`` command: ``pyro-vae train`` and ``pyro-vae evaluate RUN_DIR``.

Bad input of any kind (unknown names, impossible sizes, missing or corrupt data, a foreign
checkpoint) ends the command with one line on standard error naming the problem and what to do,
and exit status 2. A training stopped by SIGTERM or Ctrl-C (SIGINT) saves a checkpoint at the next
step boundary and exits with 128 + the signal's number (143, 130); ``--resume`` continues it exactly.
"""

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import trust
from .batches import BINARIZATIONS
from .datasets import DATASETS
from .recipes import BUILT_IN, parse_model_args
from .errors import ConfigError, PyroVAEError, TrainingInterrupted
from .likelihoods import LIKELIHOODS
from .models import CONDITIONS
from .networks import ACTIVATIONS
from .objectives import OBJECTIVES
from .precision import PRECISIONS
from .step import COMPILE_MODES
from .config import LR_SCHEDULES, OPTIMIZERS, TrainConfig
from .distributed import resolve_device

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _number(text: str, kind: type, positive: bool):
    """``text`` parsed as an ``int`` or ``float`` first, then checked: finite, and > 0 or >= 0."""
    noun = "integer" if kind is int else "number"
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an' if kind is int else 'a'} {noun}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise argparse.ArgumentTypeError(f"{text} is not {'a positive' if positive else 'zero or a positive'} {noun}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, positive=True)


def _non_negative_int(text: str) -> int:
    return _number(text, int, positive=False)


def _positive_float(text: str) -> float:
    return _number(text, float, positive=True)


def _non_negative_float(text: str) -> float:
    return _number(text, float, positive=False)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyro-vae", description="Auto-Encoding Variational Bayes as Pyro programs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    train = commands.add_parser("train", help="train a VAE and write a run directory",
                                description="Train a VAE with AEVB and write checkpoint, history, metrics and pictures.")
    defaults = TrainConfig()
    _data_and_model_options(train, defaults)
    _training_options(train, defaults)
    _model_shorthands(train)
    _run_options(train, defaults)
    _evaluate_parser(commands)
    return parser


def _data_and_model_options(train: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    train.add_argument("--dataset", default=defaults.dataset, metavar="{" + ",".join(DATASETS) + "} or FILE",
                       help="a built-in data set, or a .npz or .pt file of your own with arrays train and test of "
                            "images (N, H, W) or (N, D), uint8 or in [0, 1], and optional train_labels and "
                            "test_labels (default: %(default)s, bundled with the package)")
    train.add_argument("--data-dir", help="folder holding MNIST/raw or FreyFace/frey_rawface.mat "
                                          "(default: $PYRO_VAE_DATA, else ~/.cache/pyro-vae)")
    train.add_argument("--model", default=defaults.model, metavar="{" + ",".join(BUILT_IN) + "} or MODULE:FACTORY",
                       help="vae: z -> x; hierarchical: h2 -> h1 -> x (Burda et al.); m2: semi-supervised with a "
                            "class y (Kingma et al. 2014); m1m2: m2 stacked on a trained vae (--m1); cvae: "
                            "conditioned on a label or the top half of the image; or your own model's factory "
                            "by import path, package.module:function, or by a name registered in the "
                            "pyro_vae.models entry-point group (default: %(default)s)")
    train.add_argument("--model-arg", action="append", default=[], dest="model_arg", metavar="KEY=VALUE",
                       help="a keyword argument of the model's factory, VALUE read as JSON where it parses "
                            "(numbers, lists, true) and as a string otherwise; repeat for several")
    train.add_argument("--latent-dim", type=_positive_int,
                       help="dimension Nz of z (default: 20 for mnist, 2 for frey-face; hierarchical: 100 for h1, "
                            "h2 has half; m2 and m1m2: 50)")
    train.add_argument("--hidden-dim", type=_positive_int, nargs="+", dest="hidden_dims", metavar="N",
                       help="hidden layer sizes of encoder and decoder (default: 500 for mnist, 200 for frey-face; "
                            "hierarchical: 200 200, halved for the top layer)")
    train.add_argument("--activation", choices=sorted(ACTIVATIONS),
                       help="hidden activation (default: tanh; softplus for m2)")
    train.add_argument("--likelihood", choices=sorted(LIKELIHOODS),
                       help="p(x|z) (default: bernoulli for binarized data, gaussian otherwise)")
    train.add_argument("--binarize", choices=BINARIZATIONS,
                       help="binarization of grey levels (default: dynamic for mnist, none for frey-face)")


def _training_options(train: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    train.add_argument("--epochs", type=_positive_int, help="passes over the training set (default: 10 for mnist, 500 for frey-face)")
    train.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help="minibatch size M (default: %(default)s)")
    train.add_argument("--objective", choices=list(OBJECTIVES), default=defaults.objective,
                       help="ELBO estimator (default: meanfield, analytic KL; trace for hierarchical, enum for m2)")
    train.add_argument("--particles", type=_non_negative_int, default=defaults.particles,
                       help="samples of z per datapoint in the objective (default: 1; 5 for iwae)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer, help="(default: %(default)s)")
    train.add_argument("--lr", type=_positive_float, default=defaults.lr, help="step size (default: %(default)s)")
    train.add_argument("--weight-decay", type=_non_negative_float, default=defaults.weight_decay,
                       help="L2 penalty on the parameters; since the loss sums over the whole training set, 1 is the paper's N(0, I) prior (default: %(default)s)")
    train.add_argument("--init-std", type=_positive_float,
                       help="draw all parameters from N(0, std^2); the paper's N(0, 0.01) is a variance, std 0.1 "
                            "(default: PyTorch's init)")
    train.add_argument("--seed", type=_non_negative_int, default=defaults.seed, help="(default: %(default)s)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device, help="(default: %(default)s)")
    train.add_argument("--eval-every", type=_positive_int, default=defaults.eval_every,
                       help="epochs between evaluations and checkpoints (default: %(default)s)")
    train.add_argument("--eval-particles", type=_positive_int, default=defaults.eval_particles,
                       help="K of the final importance-sampled log-likelihood (default: %(default)s)")
    train.add_argument("--clip-grad-norm", type=_positive_float,
                       help="clip the gradient's total norm to this value (default: no clipping)")
    train.add_argument("--compile", choices=COMPILE_MODES, default=defaults.compile,
                       help="replay: record model, guide, objective and backward pass once per batch shape and "
                            "replay them (same draws and figures as eager, no Pyro overhead); inductor: also compile "
                            "them with TorchInductor (compiles for tens of seconds first, other random draws); eager: "
                            "Pyro runs every step; auto: inductor for runs of 60,000 steps or more, else replay, or "
                            "eager with one warning where a step cannot be traced (Pyro's jit objectives: eager); see "
                            "docs/speed.md (default: %(default)s)")
    train.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                       help="bf16: the networks' matrix products in bfloat16 (log-densities, KL terms, parameters "
                            "and optimizer state stay float32); refused where the CPU has neither AMX nor "
                            "AVX512-BF16; see docs/speed.md (default: %(default)s)")
    train.add_argument("--train-size", type=_positive_int,
                       help="train on a fixed random subset of this many training datapoints (default: all)")
    train.add_argument("--test-size", type=_positive_int,
                       help="evaluate on a fixed random subset of this many test datapoints, recorded in the run "
                            "(default: all)")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule,
                       help="learning rate per epoch: cosine (to zero over the run), step (a tenth at half the run, "
                            "a hundredth at three quarters), iwae (Burda et al.: 3^i passes at 10^-3 * 10^(-i/7)) "
                            "(default: %(default)s)")
    train.add_argument("--early-stopping", type=_positive_int, metavar="N",
                       help="stop when the test ELBO has not improved for N evaluations, keeping the best "
                            "checkpoint as best_checkpoint.pt (default: never)")
    train.add_argument("--kl-warmup", type=_non_negative_int, default=defaults.kl_warmup, metavar="EPOCHS",
                       help="scale every latent site by beta rising linearly from 0 to 1 over EPOCHS epochs "
                            "(poutine.scale); evaluation reports the unscaled bound (default: %(default)s, none)")
    train.add_argument("--tensorboard", metavar="DIR",
                       help="log scalars, images and settings for TensorBoard in DIR (needs the tensorboard package)")
    train.add_argument("--mlflow", metavar="URI",
                       help="log parameters, metrics and the run folder to MLflow at URI, e.g. file:./mlruns "
                            "(needs mlflow or mlflow-skinny)")


def _model_shorthands(train: argparse.ArgumentParser) -> None:
    shorthands = train.add_argument_group("options of the built-in models (shorthands for --model-arg)")
    shorthands.add_argument("--labels-per-class", type=_positive_int,
                            help="m2, m1m2: labelled training images per class; the rest are unlabelled (default: 10)")
    shorthands.add_argument("--aux-weight", type=_non_negative_float,
                            help="m2, m1m2: weight of the classification loss per labelled image (default: "
                                 "0.1 N / N_labelled, Kingma et al.'s alpha = 0.1 N)")
    shorthands.add_argument("--labelled-weight", type=_positive_float,
                            help="m2, m1m2: how many times each labelled image counts in the objective, its bound "
                                 "and classification loss (default: 1, Kingma et al.'s objective; "
                                 "N_unlabelled / N_labelled weighs both parts equally)")
    shorthands.add_argument("--condition", choices=CONDITIONS,
                            help="cvae: what generation is conditioned on (default: label)")
    shorthands.add_argument("--m1", metavar="RUN_DIR",
                            help="m1m2: the run directory of a trained vae (M1) whose codes M2 generates")


def _run_options(train: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    train.add_argument("--validate", action="store_true",
                       help="run Pyro's validation checks (distribution arguments, supports) at every step; they "
                            "always run once, on a tiny batch, before training")
    train.add_argument("--allow-mc-kl", action="store_true",
                       help="let meanfield estimate by Monte Carlo a KL term that has no closed form (a mixture "
                            "prior, say), with a warning, instead of refusing")
    train.add_argument("--out", default=defaults.out,
                       help="run directory; one that holds a run is refused unless --overwrite (default: a fresh "
                            "folder runs/DATASET-MODEL-DATE-TIME, printed)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out: its files (checkpoint, history, metrics, pictures) are "
                            "deleted first")
    train.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS",
                       help="also save a checkpoint every STEPS training steps inside an epoch, for long epochs "
                            "(default: at each evaluation, and when stopped by SIGTERM or Ctrl-C)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue RUN_DIR from its last checkpoint with its own configuration "
                            "(only --epochs and --data-dir may be given with it)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--trust-recipe", action="store_true",
                       help="open runs (--resume, --m1) whose model factory you have not trained with, and "
                            "remember it: their factory's code runs, so only for runs from people you trust "
                            "(default: refused with one line)")



def _evaluate_parser(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="estimate test ELBO and log-likelihood of a trained run",
                                   description="Estimate the test ELBO and the importance-sampled test log p(x) "
                                               "of a run; prints them and writes RUN_DIR/evaluation.json. With "
                                               "--compare, also the paired difference of test log p(x) from "
                                               "another run on the same test images.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'pyro-vae train'")
    evaluate.add_argument("--particles", type=_positive_int, default=5000, help="K importance samples per datapoint (default: %(default)s)")
    evaluate.add_argument("--data-dir", help="where the run's data set is (default: as in training)")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    evaluate.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the importance samples (default: %(default)s)")
    evaluate.add_argument("--precision", choices=PRECISIONS, default="fp32",
                          help="bf16: the networks' matrix products in bfloat16, the log weights and their "
                               "log-sum-exp in float32 (default: %(default)s)")
    evaluate.add_argument("--compare", metavar="OTHER_RUN",
                          help="another run on the same test images: print RUN_DIR's test log p(x) minus "
                               "OTHER_RUN's, with the standard error of the per-image differences")
    evaluate.add_argument("--test-size", type=_positive_int,
                          help="evaluate a fixed random subset of this many test datapoints (default: the run's own)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.add_argument("--trust-recipe", action="store_true",
                          help="open runs whose model factory you have not trained with, and remember it: their "
                               "factory's code runs, so only for runs from people you trust (default: refused "
                               "with one line)")


RESUME_OPTIONS = ("epochs", "data_dir", "checkpoint_every")
#: Options of the command, not of the configuration.
COMMAND_OPTIONS = ("command", "quiet", "resume", "overwrite", "model_arg", "trust_recipe", "tensorboard", "mlflow")
#: Options of the built-in models' factories that have flags of their own.
SHORTHANDS = ("labels_per_class", "aux_weight", "labelled_weight", "condition", "m1")


def _tracking(args: argparse.Namespace) -> list:
    """The callbacks of ``--tensorboard`` and ``--mlflow``."""
    callbacks = []
    if args.tensorboard:
        from .callbacks.tensorboard import TensorBoard
        callbacks.append(TensorBoard(args.tensorboard))
    if args.mlflow:
        from .callbacks.mlflow import MLflow
        callbacks.append(MLflow(args.mlflow))
    return callbacks


def _train_command(args: argparse.Namespace) -> None:
    from .engine import fresh_run_folder
    from .training import resume, train

    model_args = parse_model_args(args.model_arg)
    for key in SHORTHANDS:
        value = getattr(args, key)
        if value is not None:
            model_args[key] = str(Path(value).expanduser().resolve()) if key == "m1" else value
    options = {key: value for key, value in vars(args).items() if key not in (*COMMAND_OPTIONS, *SHORTHANDS)}
    callbacks = _tracking(args)
    if args.resume is None:
        config = TrainConfig(**options, model_args=model_args)
        if config.out is None:
            config.out = str(fresh_run_folder(config))
            print(f"pyro-vae train: writing the run to {config.out}", file=sys.stderr)
        run = train(config, progress=not args.quiet, overwrite=args.overwrite, callbacks=callbacks)
    else:
        _refuse_settings_with_resume(args, options)
        run = resume(args.resume, args.epochs, args.data_dir, progress=not args.quiet,
                     checkpoint_every=args.checkpoint_every, callbacks=callbacks)
    metrics = run.metrics
    if not metrics:  # a process other than rank 0 of a distributed run
        return
    accuracy = f"test accuracy {metrics['test_accuracy']:.4f}, " if "test_accuracy" in metrics else ""
    print(f"{accuracy}train ELBO {metrics['train_elbo']:.2f}, test ELBO {metrics['test_elbo']:.2f}, "
          f"test log p(x) {metrics['test_log_likelihood']:.2f} ± {metrics['test_log_likelihood_stderr']:.2f} "
          f"(K = {metrics['test_log_likelihood_particles']}) nats per datapoint; "
          f"{metrics['seconds_per_epoch']:.2f} s per epoch; written to {run.out}")


def _refuse_settings_with_resume(args: argparse.Namespace, options: dict) -> None:
    defaults = TrainConfig()  # the command's defaults are the configuration's
    clashing = [key for key, value in options.items() if key not in RESUME_OPTIONS and value != getattr(defaults, key)]
    clashing += ["overwrite"] if args.overwrite else []
    clashing += ["model-arg"] if args.model_arg else []
    clashing += [key for key in SHORTHANDS if getattr(args, key) is not None]
    if clashing:
        flags = ", ".join("--" + key.replace("_", "-") for key in clashing)
        raise ConfigError(f"--resume takes its configuration from the checkpoint; drop {flags} (only --epochs, "
                          "--data-dir, --checkpoint-every, --trust-recipe, --tensorboard and --mlflow may be given)")


def _evaluate_command(args: argparse.Namespace) -> None:
    from .checkpoint import write_json
    from .precision import check_precision
    from .training import evaluate

    check_precision(args.precision, resolve_device(args.device))
    result = evaluate(args.run_dir, particles=args.particles, compare=args.compare, seed=args.seed,
                      device=args.device, precision=args.precision, test_size=args.test_size,
                      progress=not args.quiet)
    print(f"test ELBO      {result['test_elbo']}")
    print(f"test log p(x)  {result['test_log_likelihood']}")
    written = {"test_elbo": result["test_elbo"].as_dict(), "test_log_likelihood": result["test_log_likelihood"].as_dict(),
               "scoring": result["scoring"], "seed": args.seed, "precision": args.precision}
    summary = {"test_elbo": result["test_elbo"].mean, "test_log_likelihood": result["test_log_likelihood"].mean}
    if "test_accuracy" in result:
        written["test_accuracy"] = summary["test_accuracy"] = result["test_accuracy"]
        print(f"test accuracy  {result['test_accuracy']:.4f}")
    if args.compare is not None:
        written["compared_with"] = {"run": str(Path(args.compare).resolve()),
                                    "test_log_likelihood": result["other_log_likelihood"].as_dict(),
                                    "difference": result["difference"].as_dict()}
        summary["test_log_likelihood_difference"] = result["difference"].mean
        print(f"other run      {result['other_log_likelihood']}")
        print(f"difference     {result['difference']} (this run minus the other, paired by test datapoint)")
    write_json(Path(args.run_dir) / "evaluation.json", written)
    print(json.dumps(summary))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m`: --model finds modules here
        sys.path.insert(0, os.getcwd())
    try:
        with trust.trusting() if args.trust_recipe else contextlib.nullcontext():
            {"train": _train_command, "evaluate": _evaluate_command}[args.command](args)
    except PyroVAEError as error:
        print(f"pyro-vae {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as stopped:
        print(f"pyro-vae {args.command}: {stopped}", file=sys.stderr)
        return 128 + stopped.signal_number
    except KeyboardInterrupt:
        print(f"pyro-vae {args.command}: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
