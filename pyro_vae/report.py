"""A run's figures: the evaluation after every ``eval_every`` epochs, and the final report.

Each evaluation estimates the train ELBO (on a fixed subset of at most
:data:`pyro_vae.batches.TRAIN_EVAL_SIZE` training datapoints) and the test ELBO, per datapoint,
with one draw of z each, and the accuracy of a model with a classifier. The final report adds the
importance-sampled test log p(x) with ``eval_particles`` draws (:mod:`pyro_vae.evaluation`, which
says how sites are scored), draws the pictures the model can draw and writes ``metrics.json``.
"""

import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pyro
import torch
from torch import nn

from . import evaluation
from .batches import Prepared, arguments
from .checkpoint import write_json
from .tensor_data import TensorData


def evaluate(model: nn.Module, scored: nn.Module, data, rows: tuple, split: str, precision: str,
             compile: str) -> dict:
    """``{split}_elbo`` per datapoint of ``rows`` (one draw each) and, for a model with a classifier and
    labelled rows, ``{split}_accuracy``. ``scored`` runs model and guide (:mod:`pyro_vae.param_sites`)."""
    args = arguments(model, data, rows)
    figures = {f"{split}_elbo": evaluation.elbo(scored.model, scored.guide, args, precision=precision,
                                                compile=compile).mean}
    if hasattr(model, "classify") and len(rows) > 1 and not isinstance(data, TensorData):
        figures[f"{split}_accuracy"] = evaluation.accuracy(model, rows[0], rows[1])
    return figures


def record(model: nn.Module, scored: nn.Module, prepared: Prepared, config, epoch: int, samples_seen: int,
           seconds: float, compile: str) -> dict:
    """The history's record of an evaluation after ``epoch``."""
    return {"epoch": epoch, "samples_seen": samples_seen,
            **evaluate(model, scored, prepared.data, prepared.train_eval, "train", config.precision, compile),
            **evaluate(model, scored, prepared.data, prepared.test, "test", config.precision, compile),
            "seconds": seconds}


def environment(device: torch.device) -> dict:
    """Versions and device, recorded with every run for reproducibility."""
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
            "torchvision": torchvision.__version__, "device": str(device), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def final(model: nn.Module, scored: nn.Module, prepared: Prepared, history: list, config, recipe, out: Path,
          progress: bool, compile: str, facts: dict) -> tuple[dict, evaluation.Estimate]:
    """The final report: test log p(x), pictures and ``metrics.json``; returns the metrics and log p(x).

    ``facts``: what the loop knows of the run (samples seen, seconds, the step that ran, how it ended).
    """
    data = prepared.data
    started = time.perf_counter()
    with pyro.validation_enabled(config.validate):
        test_ll = evaluation.log_likelihood(scored.model, scored.guide, arguments(model, data, prepared.test),
                                            config.eval_particles, progress=progress, precision=config.precision,
                                            compile=compile)
    skipped = _pictures(model, data, history, out, prepared)
    last = {key: value for key, value in history[-1].items() if key.startswith(("train_", "test_"))} if history else {}
    metrics = {**last, "test_log_likelihood": test_ll.mean, "test_log_likelihood_stderr": test_ll.stderr,
               "test_log_likelihood_particles": test_ll.num_particles, "scoring": test_ll.scoring,
               "evaluation_seconds": time.perf_counter() - started, "pictures_skipped": skipped,
               **facts, "config": asdict(config), "recipe": recipe}
    write_json(out / "metrics.json", metrics)
    return metrics, test_ll


def _pictures(model: nn.Module, data, history: list, out: Path, prepared: Prepared) -> list:
    from . import plots

    if isinstance(data, TensorData):
        plots.plot_learning_curves(history, out / "learning_curve.png", data.name)
        print("pictures skipped: images of TensorData (only learning_curve.png)", file=sys.stderr)
        return ["images (TensorData)"]
    few = tuple(t[:10] for t in prepared.test)
    return plots.draw_run_pictures(model, data, history, out, arguments(model, data, few))
