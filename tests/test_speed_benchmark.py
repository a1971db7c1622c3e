"""The speed benchmark (benchmarks/speed.py) end to end, on tiny settings."""

import json

import pytest
import torch

from conftest import REPO, load_benchmark


@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed")


def test_smoke_run_writes_json_and_markdown(speed, data_dir, tmp_path):
    out = tmp_path / "speed.json"
    speed.main(["--data-dir", str(data_dir), "--device", "cpu", "--threads", "1", "--repeats", "2", "--steps", "2",
                "--warmup", "1", "--batch-sizes", "50", "--objectives", "meanfield", "iwae",
                "--pyro-variants", "eager", "trace", "--torch-variants", "eager", "fused", "--skip-numpyro",
                "--eval-images", "4", "--eval-particles", "20", "--eval-chunk-sizes", "10", "100",
                "--out", str(out)])
    result = json.loads(out.read_text())
    records = result["training"]
    assert {(r["impl"], r["objective"], r["variant"]) for r in records} == {
        (impl, objective, variant) for objective in ("meanfield", "iwae")
        for impl, variants in (("pyro", ("eager", "trace")), ("torch", ("eager", "fused"))) for variant in variants}
    for r in records:
        assert r["ms_per_step"] > 0 and len(r["ms_per_step_repeats"]) == 2 and r["peak_memory_mb"] > 0
        assert r["s_per_epoch"] == pytest.approx(r["ms_per_step"] * 60_000 / 50 / 1e3)
        assert r["vs_torch_eager"] > 0 and r["vs_torch_best"] > 0 and r["vs_numpyro"] is None
    assert sorted({e["chunk_size"] for e in result["evaluation"]}) == [10, 100]
    timed = {(e["chunk_size"], e["precision"], e["traced"]) for e in result["evaluation"]}
    assert {(10, "fp32", True), (10, "fp32", False)} <= timed  # the traced evaluation beside the eager one
    assert all(e["extrapolated"] and e["seconds_for_10000_images"] > 0 for e in result["evaluation"])
    assert result["machine"]["device"] == "cpu" and "torch" in result["machine"]
    assert {"cpu_model", "cpu_amx", "cpu_avx512_bf16", "bf16_matrix_unit"} <= set(result["machine"])
    assert "| 50 | meanfield | pyro |" in out.with_suffix(".md").read_text()


@pytest.mark.slow  # compiling the jitted NumPyro epoch takes 10-20 s
def test_numpyro_peer(speed, data_dir, tmp_path):
    pytest.importorskip("numpyro")
    result = speed.main(["--data-dir", str(data_dir), "--device", "cpu", "--threads", "1", "--repeats", "1",
                         "--steps", "1", "--warmup", "1", "--batch-sizes", "6000", "--objectives", "meanfield",
                         "--pyro-variants", "eager", "--torch-variants", "eager", "--skip-eval"])
    numpyro = [r for r in result["training"] if r["impl"] == "numpyro"]
    assert len(numpyro) == 1 and numpyro[0]["ms_per_step"] > 0 and numpyro[0]["steps_per_repeat"] == 10
    pyro_record = next(r for r in result["training"] if r["impl"] == "pyro")
    assert pyro_record["vs_numpyro"] == pytest.approx(pyro_record["ms_per_step"] / numpyro[0]["ms_per_step"])


def test_committed_results_are_replaced_only_with_overwrite(speed, tmp_path, capsys):
    """Refused before anything is loaded or timed (the data folder given does not exist)."""
    out = REPO / "benchmarks" / "results" / "speed_cpu.json"
    before = out.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        speed.main(["--data-dir", str(tmp_path / "missing"), "--device", "cpu", "--out", str(out)])
    assert exit_.value.code == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")
def test_the_trace_mkl_row_keeps_the_products_that_the_trace_row_sends_to_onednn(speed, monkeypatch):
    """Where oneDNN pays, ``trace`` runs the MNIST step's large products in oneDNN and ``trace-mkl``,
    its side-by-side row, in ``aten.addmm``/``aten.mm``; both give the same loss up to rounding."""
    from pyro_vae import tracing

    monkeypatch.setattr(tracing, "onednn_pays", lambda: True)
    batch = torch.bernoulli(torch.full((100, 784), 0.3), generator=torch.Generator().manual_seed(0))
    losses, routed = {}, {}
    for variant in ("trace", "trace-mkl"):
        torch.manual_seed(0)
        step = speed.PyroStep("meanfield", variant, "cpu", 100)
        torch.manual_seed(1)
        losses[variant] = step(batch)
        (graph,) = step.step.compiled.graphs.values()
        routed[variant] = sum(node.target == torch.ops.mkldnn._linear_pointwise.default for node in graph.graph.nodes)
    assert routed == {"trace": 5, "trace-mkl": 0}
    torch.testing.assert_close(losses["trace"], losses["trace-mkl"], rtol=1e-5, atol=1e-2)
