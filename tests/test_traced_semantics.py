"""The default (traced) training step keeps Pyro's eager semantics, or runs eagerly and says why.

Each test runs a step with ``compile="replay"`` beside the same step with ``compile="eager"`` (Pyro
running model and guide every step, the oracle) from the same seed.
"""

import inspect
import warnings

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import evaluation
from pyro_vae.objectives import make_objective
from pyro_vae.step import CompiledStep, ObjectiveLoss, TrainingStep, make_optimizer
from test_step import DEVICES, NUM_DATA, batch, small_vae

STEPS = 6


class Annealed(type(small_vae())):
    """A KL warm-up as Pyro users write it: the model reads a weight that outside code sets."""

    beta = 0.1

    def model(self, x, num_data=None):
        with poutine.scale(scale=self.beta):
            super().model(x, num_data)


class Counting(type(small_vae())):
    """A warm-up that counts its own calls: a Python side effect of every run of the model."""

    calls = 0

    def model(self, x, num_data=None):
        self.calls += 1
        with poutine.scale(scale=min(1.0, self.calls / 4)):
            super().model(x, num_data)


def run(mode: str, model_class=None, between=None, **options) -> dict:
    """``STEPS`` steps of a small VAE (of ``model_class``) with ``compile=mode``: losses, parameters,
    the step, the model and the warnings; ``between(model, i)`` runs after step i."""
    model = small_vae()
    if model_class is not None:
        model.__class__ = model_class
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")),
                            make_optimizer("adam", model.parameters(), 1e-2), compile=mode, **options)
        torch.manual_seed(7)
        for i in range(STEPS):
            losses.append(step([((batch(seed=i),), NUM_DATA)])[0])
            if between is not None:
                between(model, i)
    return {"losses": torch.stack(losses), "params": [p.detach().clone() for p in model.parameters()],
            "step": step, "model": model, "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning]}


def assert_same_run(traced: dict, eager: dict) -> None:
    assert torch.equal(traced["losses"], eager["losses"])
    assert all(torch.equal(a, b) for a, b in zip(traced["params"], eager["params"]))


def test_a_weight_set_between_steps_is_read_at_every_step():
    """A callback sets beta after every step: the step traced with the first beta is not replayed
    with it; beta changing that often is not worth re-tracing, so the step runs eagerly after one line."""
    def anneal(model, i):
        model.beta = 0.1 * (i + 2)

    eager, traced = run("eager", Annealed, anneal), run("replay", Annealed, anneal)
    assert_same_run(traced, eager)
    assert traced["step"].mode == "eager"
    assert traced["warnings"] == ["compiled training step: 'model.beta' changed 1 step after the step was traced, "
                                  "too often for tracing to pay (a trace pays after about 100 steps); running eagerly"]


def test_a_weight_set_now_and_then_is_traced_again(monkeypatch):
    """Set every third step (as once an epoch): the step is traced again for each value and stays compiled."""
    monkeypatch.setattr("pyro_vae.step.RETRACE_MIN_STEPS", 3)
    traces = []
    trace = CompiledStep._trace
    monkeypatch.setattr(CompiledStep, "_trace", lambda self, batches: traces.append(1) or trace(self, batches))

    def anneal(model, i):
        if i % 3 == 2:
            model.beta = 0.5 + i

    eager, traced = run("eager", Annealed, anneal), run("replay", Annealed, anneal)
    assert_same_run(traced, eager)
    assert traced["step"].mode == "replay+update" and traced["warnings"] == []
    assert len(traces) == 2 and len(traced["step"].compiled.graphs) == 1


def test_a_model_that_changes_its_own_state_runs_eagerly():
    """The counter advances once a step, as in the eager run, and one line names it."""
    eager, traced = run("eager", Counting), run("replay", Counting)
    assert_same_run(traced, eager)
    assert traced["model"].calls == eager["model"].calls == STEPS
    assert traced["warnings"] == ["compiled training step: the model changed 'model.calls' as it ran, which a traced "
                                  "graph does not replay; running eagerly"]


def test_validate_runs_pyros_checks_at_every_step():
    """A probe in the model sees Pyro's validation on at every step, even where the caller turned it off."""
    seen = []

    class Probed(type(small_vae())):
        def model(self, x, num_data=None):
            seen.append((pyro.infer.util.is_validation_enabled(), pyro.poutine.util.is_validation_enabled()))
            super().model(x, num_data)

    with pyro.validation_enabled(False):
        traced = run("replay", Probed, validate=True)
    assert seen == [(True, True)] * STEPS
    assert traced["step"].mode == "eager"
    assert traced["warnings"] == ["training step: validate=True runs Pyro's checks at every step, which a traced graph "
                                  "cannot; running eagerly instead of compile='replay'"]


def test_a_graph_that_departs_from_the_eager_step_is_not_used(monkeypatch):
    """A graph whose loss is not the eager loss on the same draws (here made stale on purpose) is
    caught at its first step: the step runs eagerly, with the eager run's figures, after one line."""
    from pyro_vae import tracing

    def stale_trace(function, *inputs):
        def scaled(*args):
            loss, *rest = function(*args)
            return (loss * 1.001, *rest)
        return tracing.trace(scaled, *inputs)

    monkeypatch.setattr("pyro_vae.step.trace", stale_trace)
    eager, traced = run("eager"), run("replay")
    assert_same_run(traced, eager)
    assert traced["step"].mode == "eager"
    (line,) = traced["warnings"]
    assert line.startswith("compiled training step: the traced step's loss (") and line.endswith(
        ") on the same draws; running eagerly")


def test_the_first_step_check_leaves_the_traced_run_as_the_eager_one():
    """Checked, the traced run still has the eager run's losses and parameters to the bit, and its
    random stream after the run is where the eager run left it."""
    eager, traced = run("eager"), run("replay")
    assert_same_run(traced, eager)
    assert traced["step"].mode == "replay+update" and traced["warnings"] == []


def test_a_tracing_failure_is_reported_in_whole_sentences():
    """The warning gives the error's first sentence whole, not its first 200 characters."""
    class Failing(type(small_vae())):
        def model(self, x, num_data=None):
            raise RuntimeError("The model cannot be traced here. " + "It goes on and on " * 30 + "until the end.")

    model = small_vae()
    model.__class__ = Failing
    step = TrainingStep(ObjectiveLoss(model, make_objective("trace")), make_optimizer("adam", model.parameters(), 1e-2),
                        compile="replay")
    with pytest.warns(RuntimeWarning) as caught, pytest.raises(RuntimeError):  # the eager step raises it too
        step([((batch(),), NUM_DATA)])
    assert [str(w.message) for w in caught] == [
        "compiled training step: tracing failed (RuntimeError: The model cannot be traced here); running eagerly"]


def test_cuda_graphs_are_off_until_asked_for():
    """CUDA-graph replay has not run on a GPU yet: the default step replays the traced graph as it is."""
    for cls in (CompiledStep, TrainingStep):
        assert inspect.signature(cls).parameters["cuda_graphs"].default is False
    model = small_vae().to(DEVICES[-1])
    step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")),
                        make_optimizer("adam", model.parameters(), 1e-2), compile="replay")
    step([((batch(device=DEVICES[-1]),), NUM_DATA)])
    assert step.mode == "replay+update"


def test_evaluation_under_compile_eager_runs_pyro_on_every_chunk(monkeypatch):
    """``--compile eager`` governs evaluation too: no chunk is traced, however many there are."""
    traced_chunks = []
    trace = evaluation.trace
    monkeypatch.setattr(evaluation, "trace", lambda *args: traced_chunks.append(1) or trace(*args))
    model = small_vae()
    x = batch(40)
    results = {}
    for compile in ("replay", "eager"):
        traced_chunks.clear()
        torch.manual_seed(3)
        results[compile] = evaluation.log_likelihood(model.model, model.guide, x, 4, chunk_size=8, compile=compile)
        assert bool(traced_chunks) == (compile == "replay")  # 20 chunks of one shape: traced by default
    torch.testing.assert_close(results["eager"].values, results["replay"].values)
