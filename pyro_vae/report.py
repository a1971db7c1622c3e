"""A run's figures: the evaluation after every ``eval_every`` epochs, and the final report.

Each evaluation estimates the train ELBO (on a fixed subset of at most
:data:`pyro_vae.batches.TRAIN_EVAL_SIZE` training datapoints) and the test ELBO, per datapoint,
with one draw of z each, and the accuracy of a model with a classifier. The final report adds the
importance-sampled test log p(x) with ``eval_particles`` draws (:mod:`pyro_vae.evaluation`, which
says how sites are scored), draws the pictures the model can draw and writes ``metrics.json``.
"""

import time
from dataclasses import asdict
from pathlib import Path

import pyro
from torch import nn

from . import evaluation
from .batches import Prepared
from .checkpoint import write_json
from .tensor_data import TensorData


def evaluate(model: nn.Module, scored: nn.Module, prepared: Prepared, split: str, precision: str,
             compile: str) -> dict:
    """``{split}_elbo`` per datapoint (one draw each) of the train-ELBO subset or the test set and, for a
    model with a classifier and labelled images, ``{split}_accuracy``. ``scored`` runs model and guide
    (:mod:`pyro_vae.param_sites`)."""
    rows, args = (prepared.train_eval, prepared.train_eval_arguments) if split == "train" \
        else (prepared.test, prepared.test_arguments)
    figures = {f"{split}_elbo": evaluation.elbo(scored.model, scored.guide, args, precision=precision,
                                                compile=compile).mean}
    if hasattr(model, "classify") and len(rows) > 1 and not isinstance(prepared.data, TensorData):
        figures[f"{split}_accuracy"] = evaluation.accuracy(model, rows[0], rows[1])
    return figures


def record(model: nn.Module, scored: nn.Module, prepared: Prepared, config, state, out: Path, compile: str) -> dict:
    """The history's record of the evaluation after epoch ``state.epoch``, appended to ``state.history``
    and written to ``history.json``."""
    entry = {"epoch": state.epoch, "samples_seen": state.samples_seen,
             **evaluate(model, scored, prepared, "train", config.precision, compile),
             **evaluate(model, scored, prepared, "test", config.precision, compile),
             "seconds": state.seconds}
    state.history.append(entry)
    write_json(out / "history.json", state.history)
    return entry


def final(model: nn.Module, scored: nn.Module, prepared: Prepared, history: list, config, recipe, out: Path,
          progress: bool, compile: str, facts: dict) -> tuple[dict, evaluation.Estimate]:
    """The final report: test log p(x), pictures and ``metrics.json``; returns the metrics and log p(x).

    ``facts``: what the loop knows of the run (samples seen, seconds, the step that ran, how it ended).
    """
    data = prepared.data
    started = time.perf_counter()
    with pyro.validation_enabled(config.validate):
        test_ll = evaluation.log_likelihood(scored.model, scored.guide, prepared.test_arguments,
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

    if isinstance(data, TensorData):  # rows of tensors have no pictures: the learning curves only
        plots.plot_learning_curves(history, out / "learning_curve.png", data.name)
        return ["images (TensorData)"]
    few = tuple(t[:10] for t in prepared.test_arguments)
    return plots.draw_run_pictures(model, data, history, out, few)
