"""The training step: compiled steps compute what the eager step computes; fused optimizers match foreach."""

import copy
import types
import warnings
from typing import Optional

import pyro
import pytest
import torch

from pyro_vae.models import build_vae
from pyro_vae.objectives import make_objective
from pyro_vae.step import CompiledStep, ObjectiveLoss, TrainingStep, fused_update, make_optimizer

DATA_DIM, NUM_DATA = 12, 600
#: Devices the device-dependent tests run on: CUDA too where there is one.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def small_vae(seed: int = 0):
    torch.manual_seed(seed)
    return build_vae(DATA_DIM, 3, [16], "bernoulli", "tanh")


def batch(size: int = 10, seed: int = 1, device: str = "cpu") -> torch.Tensor:
    return torch.bernoulli(torch.full((size, DATA_DIM), 0.3), generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("objective", ["meanfield", "trace", "iwae", "dreg", "tracegraph"])
def test_traced_loss_and_gradients_equal_eager(objective):
    loss = ObjectiveLoss(small_vae(), make_objective(objective))
    compiled = CompiledStep(loss, "replay")
    x = batch()
    torch.manual_seed(5)
    traced_loss, traced_grads = compiled([((x,), NUM_DATA)])
    torch.manual_seed(5)
    eager_loss = loss([((x,), NUM_DATA)])
    eager_grads = torch.autograd.grad(eager_loss, compiled.parameters)
    assert compiled.fallback_reason is None
    torch.testing.assert_close(traced_loss, eager_loss.detach())
    for traced, eager in zip(traced_grads, eager_grads):
        torch.testing.assert_close(traced, eager)
    # the traced graph is reused for the next batch of the same shape, with fresh random draws
    second_loss, _ = compiled([((batch(seed=2),), NUM_DATA)])
    assert len(compiled.graphs) == 1 and second_loss != traced_loss


def test_traced_steps_train_as_the_eager_steps():
    """Several optimizer steps with compile="replay" give the eager run's parameters, for the same seed."""
    results = []
    for mode in ("eager", "replay"):
        model = small_vae()
        step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")),
                            make_optimizer("adam", model.parameters(), 1e-2), clip_grad_norm=1e6, compile=mode)
        torch.manual_seed(7)
        losses = [step([((batch(seed=s),), NUM_DATA)]) for s in range(5)]
        losses.append(step([((batch(size=7),), NUM_DATA)]))  # a smaller last batch: a second graph
        assert all(bool(finite) for _, finite in losses)
        results.append(([loss for loss, _ in losses], [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_params), (traced_losses, traced_params) = results
    torch.testing.assert_close(torch.stack(traced_losses), torch.stack(eager_losses))
    for traced, eager in zip(traced_params, eager_params):
        torch.testing.assert_close(traced, eager)


@pytest.mark.parametrize("name, weight_decay, clip", [("adam", 0.0, None), ("adam", 1.0, 0.5), ("adagrad", 1.0, None),
                                                      ("adagrad", 0.0, 0.5)])
@pytest.mark.parametrize("device", DEVICES)
def test_the_update_inside_the_traced_graph_is_the_eager_update(name, weight_decay, clip, device):
    """Loss, clipping (0.5 clips every step here) and the fused Adam/Adagrad update in one graph: the
    eager step's losses, parameters and optimizer state, to the bit."""
    # Six steps: on CUDA the warm-up, the capture and four replays.
    eager, traced = eager_and_compiled(device, 6, name, weight_decay, clip, cuda_graphs=True)
    # A PyTorch without this optimizer's fused kernel on the device stops the graph at the gradients;
    # on CUDA the whole update is replayed as a CUDA graph.
    in_graph = "replay+update" + ("+cudagraph" if device == "cuda" else "")
    assert eager.step.mode == "eager"
    assert traced.step.mode == (in_graph if fused_update(traced.step.optimizer) else "replay")
    assert traced.step.mode != "replay" or device != "cpu"
    assert torch.equal(traced.losses, eager.losses)
    assert all(torch.equal(a, b) for a, b in zip(traced.params, eager.params))
    assert len(traced.state) == len(eager.state) and all(torch.equal(a, b) for a, b in zip(traced.state, eager.state))


def eager_and_compiled(device: str, steps: int, name: str = "adagrad", weight_decay: float = 1.0,
                       clip: Optional[float] = None, between=None, prepare=None, cuda_graphs: bool = False) -> list:
    """The eager and the traced run of ``steps`` steps from the same seed: each run's step, losses,
    parameters and optimizer state (``prepare(step)`` before the traced run; ``between(optimizer, i)``
    after step i of each; ``cuda_graphs`` opts the traced run into CUDA graphs)."""
    runs = []
    for mode in ("eager", "replay"):
        model = small_vae().to(device)
        optimizer = make_optimizer(name, model.parameters(), 1e-2, weight_decay)
        step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")), optimizer, clip_grad_norm=clip,
                            compile=mode, cuda_graphs=cuda_graphs)
        if prepare is not None and mode == "replay":
            prepare(step)
        torch.manual_seed(7)
        losses = []
        for i in range(steps):
            losses.append(step([((batch(seed=i, device=device),), NUM_DATA)])[0])
            if between is not None:
                between(optimizer, i)
        runs.append(types.SimpleNamespace(
            step=step, losses=torch.stack(losses), params=[p.detach().clone() for p in model.parameters()],
            state=[t.clone() for p in model.parameters() for t in optimizer.state[p].values()]))
    return runs


def test_a_failed_cuda_graph_capture_falls_back_to_the_plain_replay(monkeypatch):
    """One warning, then the traced graph replayed without a CUDA graph: no step lost or taken twice."""
    device = DEVICES[-1]
    if device == "cuda":  # the warm-up runs; the capture, at the second step, fails
        def refuse(*args, **kwargs):
            raise RuntimeError("capture refused")
        monkeypatch.setattr(torch.cuda, "graph", refuse)
        prepare = None
    else:  # without a GPU the warm-up's side stream fails, before the graph runs
        def prepare(step):
            step.compiled.cuda_graphs = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eager, traced = eager_and_compiled(device, 4, prepare=prepare, cuda_graphs=True)
    assert [str(w.message).split(" (")[0] for w in caught if "CUDA graph" in str(w.message)] == [
        "compiled training step: CUDA graph capture failed"]
    assert traced.step.mode == "replay+update"
    assert torch.equal(traced.losses, eager.losses)
    assert all(torch.equal(a, b) for a, b in zip(traced.params, eager.params))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_graph_is_captured_again_when_the_optimizer_state_is_replaced():
    """Loading an optimizer state (as resuming does) gives it new tensors: the step captures again
    and goes on as the eager step does."""
    def reload(optimizer, i):
        if i == 3:  # a copy, as a checkpoint read from disk is
            before = [t.data_ptr() for state in optimizer.state.values() for t in state.values()]
            optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
            assert before != [t.data_ptr() for state in optimizer.state.values() for t in state.values()]

    eager, traced = eager_and_compiled("cuda", 7, between=reload, cuda_graphs=True)
    assert traced.step.mode == "replay+update+cudagraph"
    assert torch.equal(traced.losses, eager.losses)
    assert all(torch.equal(a, b) for a, b in zip(traced.params, eager.params))


def test_a_parameter_without_gradient_is_left_alone_by_the_traced_update():
    """As the eager optimizer skips a parameter whose gradient is None, weight decay included."""
    model = small_vae()
    unused = torch.nn.Parameter(torch.ones(3))
    model.register_parameter("unused", unused)
    step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")),
                        make_optimizer("adam", model.parameters(), 1e-2, weight_decay=1.0), compile="replay")
    step([((batch(),), NUM_DATA)])
    assert step.mode == "replay+update" and torch.equal(unused.detach(), torch.ones(3))


def test_choose_compile_takes_inductor_only_for_long_runs():
    from pyro_vae.step import INDUCTOR_MIN_STEPS, choose_compile
    assert choose_compile("auto", 6000) == "replay"  # ten MNIST epochs
    assert choose_compile("auto", INDUCTOR_MIN_STEPS) == "inductor"
    assert choose_compile("eager", 10**9) == "eager" and choose_compile("replay", 10**9) == "replay"


def test_tracing_leaves_param_store_and_rng_alone():
    loss = ObjectiveLoss(small_vae(), make_objective("meanfield"))
    pyro.clear_param_store()
    state = torch.get_rng_state()
    CompiledStep(loss, "replay")._trace([((batch(),), NUM_DATA)])
    assert len(pyro.get_param_store()) == 0
    assert torch.equal(torch.get_rng_state(), state)


def test_untraceable_model_falls_back_to_eager_with_a_warning():
    class Branchy(type(small_vae())):
        def model(self, x, num_data=None):
            if x.sum() > 0:  # data-dependent control flow: cannot be traced
                super().model(x, num_data)

    model = small_vae()
    model.__class__ = Branchy
    step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")),
                        make_optimizer("adam", model.parameters(), 1e-3), compile="replay")
    with pytest.warns(RuntimeWarning, match="tracing failed"):
        loss, finite = step([((batch(),), NUM_DATA)])
    assert step.compiled is None and bool(finite)
    loss, finite = step([((batch(),), NUM_DATA)])  # eager from now on, without further warnings
    assert bool(finite)


def test_compiled_step_reports_non_finite_loss():
    model = small_vae()
    with torch.no_grad():
        model.encoder.net[0].weight.fill_(float("nan"))
    step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")),
                        make_optimizer("adam", model.parameters(), 1e-3), compile="replay")
    _, finite = step([((batch(),), NUM_DATA)])
    assert not bool(finite)


def test_compile_modes_are_checked():
    model = small_vae()
    optimizer = make_optimizer("adam", model.parameters(), 1e-3)
    with pytest.raises(ValueError, match="compile mode"):
        TrainingStep(ObjectiveLoss(model, make_objective("meanfield")), optimizer, compile="fast")
    assert TrainingStep(ObjectiveLoss(model, make_objective("meanfield")), optimizer, compile=True).compile == "inductor"
    assert TrainingStep(ObjectiveLoss(model, make_objective("meanfield")), optimizer).compiled is None


@pytest.mark.parametrize("name", ["adam", "adagrad"])
@pytest.mark.parametrize("weight_decay", [0.0, 1.0])
def test_fused_optimizer_matches_foreach(name, weight_decay):
    params = {}
    for fused in (True, False):
        model = small_vae()
        optimizer = make_optimizer(name, model.parameters(), 1e-2, weight_decay, fused=fused)
        assert optimizer.defaults.get("fused") is (True if fused else None) or not fused
        step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")), optimizer)
        torch.manual_seed(3)
        for s in range(10):
            step([((batch(seed=s),), NUM_DATA)])
        params[fused] = [p.detach().clone() for p in model.parameters()]
    for fused, foreach in zip(params[True], params[False]):
        torch.testing.assert_close(fused, foreach, rtol=1e-4, atol=1e-5)


def test_make_optimizer_defaults_to_fused_where_supported():
    model = small_vae()
    assert make_optimizer("adam", model.parameters(), 1e-3).defaults["fused"]
    assert not make_optimizer("adam", model.parameters(), 1e-3, fused=False).defaults["fused"]
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd", model.parameters(), 1e-3)


def test_compiled_step_all_reduces_gradients_under_ddp(tmp_path):
    import torch.distributed as torch_dist
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        results = []
        for mode in ("eager", "replay"):
            model = small_vae()
            loss = torch.nn.parallel.DistributedDataParallel(ObjectiveLoss(model, make_objective("meanfield")))
            step = TrainingStep(loss, make_optimizer("adam", model.parameters(), 1e-2), compile=mode)
            torch.manual_seed(4)
            for s in range(3):
                step([((batch(seed=s),), NUM_DATA)])
            results.append([p.detach().clone() for p in model.parameters()])
        for traced, eager in zip(*results[::-1]):
            torch.testing.assert_close(traced, eager)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow
def test_inductor_step_matches_eager_with_eager_random_numbers():
    """Inductor compiles the traced graph (C++ on the CPU); with ``fallback_random`` it draws the
    eager step's random numbers, so losses and gradients agree to rounding."""
    import torch._inductor.config as inductor_config
    loss = ObjectiveLoss(small_vae(), make_objective("meanfield"))
    compiled = CompiledStep(loss, "inductor")
    x = batch()
    with inductor_config.patch(fallback_random=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(5)
        compiled_loss, compiled_grads = compiled([((x,), NUM_DATA)])
    assert compiled.backend == "inductor", compiled.fallback_reason
    torch.manual_seed(5)
    eager_loss = loss([((x,), NUM_DATA)])
    eager_grads = torch.autograd.grad(eager_loss, compiled.parameters)
    torch.testing.assert_close(compiled_loss, eager_loss.detach(), rtol=1e-4, atol=1e-2)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-2)


def test_a_traced_graph_leaves_out_unused_work_but_keeps_random_draws_and_updates():
    from pyro_vae import tracing
    aten = torch.ops.aten

    def function(x, w):
        (x * 2).sum()  # computed and never used: left out
        torch.randn_like(x)  # never used, but it advances the generator: kept
        w.add_(1.0)
        return x + 1

    x, w = torch.zeros(3), torch.zeros(2)
    graph = tracing.trace(function, x, w.clone())
    targets = [node.target for node in graph.graph.nodes if node.op == "call_function"]
    assert aten.mul.Tensor not in targets and aten.sum.default not in targets
    assert aten.randn_like.default in targets and aten.add_.Tensor in targets
    torch.manual_seed(0)
    graph(x, w)
    after_graph = torch.randn(1)
    torch.manual_seed(0)
    function(x, torch.zeros(2))
    assert torch.equal(after_graph, torch.randn(1)) and torch.equal(w, torch.ones(2))


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("for_inductor", [False, True])
def test_large_float32_matrix_products_go_to_onednn_with_mkls_figures(for_inductor):
    """Products of at least ONEDNN_MIN_MACS multiply-adds become oneDNN's linear (for Inductor the
    project's opaque operation), whatever their operands' layout, and give the same figures up to
    rounding; a small one stays with ``aten.mm``."""
    from pyro_vae import tracing

    def products(x, w, b, g, small, wide):
        every_other_column = wide[:, ::2]  # neither row- nor column-major
        return (torch.addmm(b, x, w.t()), torch.mm(g.t(), x), torch.mm(g, w),
                torch.mm(x.t(), every_other_column), torch.mm(small, small))

    gen = torch.Generator().manual_seed(0)
    shapes = ((100, 784), (500, 784), (500,), (100, 500), (20, 20), (100, 1200))
    inputs = [torch.randn(*shape, generator=gen) for shape in shapes]
    graph = tracing.trace(products, *inputs)
    expected = graph(*inputs)
    routed = tracing.route_matmuls_to_onednn(graph, for_inductor)
    targets = [node.target for node in routed.graph.nodes if node.op == "call_function"]
    linear = torch.ops.pyro_vae.onednn_linear.default if for_inductor else torch.ops.mkldnn._linear_pointwise.default
    assert targets.count(linear) == 4
    assert targets.count(torch.ops.aten.mm.default) == 1 and torch.ops.aten.addmm.default not in targets
    for got, want in zip(routed(*inputs), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_the_traced_step_with_onednn_products_trains_as_the_eager_step(monkeypatch):
    """Where oneDNN pays, the default traced step of a network with large products runs them in
    oneDNN and follows the eager step's losses and parameters up to rounding."""
    from pyro_vae import tracing

    monkeypatch.setattr(tracing, "onednn_pays", lambda: True)  # as on an AMD CPU
    data = torch.bernoulli(torch.full((64, 784), 0.3), generator=torch.Generator().manual_seed(3))
    runs = []
    for mode in ("eager", "replay"):
        torch.manual_seed(0)
        model = build_vae(784, 10, [300], "bernoulli", "tanh")
        step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield")),
                            make_optimizer("adam", model.parameters(), 1e-3), compile=mode)
        torch.manual_seed(7)
        losses = torch.stack([step([((data,), 6400)])[0] for _ in range(4)])
        runs.append((step, losses, [p.detach().clone() for p in model.parameters()]))
    (_, eager_losses, eager_params), (traced, traced_losses, traced_params) = runs
    assert traced.mode == "replay+update"
    (graph,) = traced.compiled.graphs.values()
    assert any(node.target == torch.ops.mkldnn._linear_pointwise.default for node in graph.graph.nodes)
    torch.testing.assert_close(traced_losses, eager_losses, rtol=1e-5, atol=1e-3)
    for got, want in zip(traced_params, eager_params):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@needs_onednn
@pytest.mark.slow
def test_the_inductor_step_with_onednn_products_matches_eager(monkeypatch):
    """Where oneDNN pays, Inductor compiles the graph with its large products in oneDNN (no
    fallback to the replay) and, with the eager random numbers, gives the eager loss and gradients."""
    import torch._inductor.config as inductor_config
    from pyro_vae import tracing

    monkeypatch.setattr(tracing, "onednn_pays", lambda: True)  # as on an AMD CPU
    route, routed = tracing.route_matmuls_to_onednn, []
    monkeypatch.setattr(tracing, "route_matmuls_to_onednn",
                        lambda graph, for_inductor=False: routed.append(for_inductor) or route(graph, for_inductor))
    torch.manual_seed(0)
    loss = ObjectiveLoss(build_vae(784, 10, [300], "bernoulli", "tanh"), make_objective("meanfield"))
    compiled = CompiledStep(loss, "inductor")
    x = torch.bernoulli(torch.full((64, 784), 0.3), generator=torch.Generator().manual_seed(3))
    with inductor_config.patch(fallback_random=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(5)
        compiled_loss, compiled_grads = compiled([((x,), 6400)])
    assert compiled.backend == "inductor", compiled.fallback_reason
    assert routed == [True]
    torch.manual_seed(5)
    eager_loss = loss([((x,), 6400)])
    eager_grads = torch.autograd.grad(eager_loss, compiled.parameters)
    torch.testing.assert_close(compiled_loss, eager_loss.detach(), rtol=1e-5, atol=1e-3)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("vendor, pays", [("AuthenticAMD", True), ("GenuineIntel", False), ("", False)])
def test_onednn_products_are_chosen_where_mkl_is_not_intels_own(monkeypatch, vendor, pays):
    from pyro_vae import tracing

    monkeypatch.setattr(tracing, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(tracing.platform, "machine", lambda: "x86_64")
    available = torch.backends.mkldnn.is_available() and torch.backends.mkl.is_available()
    assert tracing.onednn_pays.__wrapped__() == (pays and available)
