"""bfloat16 mixed precision: refused without a bf16 matrix unit, float32 log-densities, figures
close to float32's; the traced evaluation gives the eager evaluation's figures."""

import warnings

import pyro
import pytest
import torch

from pyro_vae import ConfigError, TrainConfig, evaluation
from pyro_vae.contract import check_model
from pyro_vae.objectives import make_objective
from pyro_vae.precision import bf16_matrix_unit, check_precision
from pyro_vae.step import ObjectiveLoss, TrainingStep, make_optimizer
from test_step import DATA_DIM, DEVICES, NUM_DATA, batch, small_vae

needs_bf16 = pytest.mark.skipif(bf16_matrix_unit("cpu") is None, reason="this CPU has neither AMX nor AVX512-BF16")


def skip_without_bf16(device: str) -> None:
    if bf16_matrix_unit(device) is None:
        pytest.skip(f"{device} has no bfloat16 matrix unit")


def test_bf16_is_refused_without_a_bf16_matrix_unit(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with pytest.raises(ConfigError, match="neither AMX nor AVX512-BF16.*--precision fp32"):
        check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="neither AMX nor AVX512-BF16"):
        TrainConfig(dataset="mnist", precision="bf16", device="cpu").check_settings()
    check_precision("fp32", torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        TrainConfig(precision="fp16").check_settings()


@needs_bf16
def test_bf16_networks_compute_in_bf16_and_return_float32():
    model = small_vae()
    x = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.encoder.net[0](x)
        loc, scale = model.encoder(x)
    assert hidden.dtype == torch.bfloat16
    assert loc.dtype == scale.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compile", ["eager", "replay"])
def test_bf16_step_is_close_to_the_float32_step(compile, device):
    """The same draws, the products rounded to bfloat16: losses agree to about 1%, not to the bit."""
    skip_without_bf16(device)
    losses = {}
    for precision in ("fp32", "bf16"):
        model = small_vae().to(device)
        step = TrainingStep(ObjectiveLoss(model, make_objective("meanfield"), precision),
                            make_optimizer("adam", model.parameters(), 1e-2), compile=compile)
        torch.manual_seed(3)
        losses[precision] = torch.stack([step([((batch(seed=s, device=device),), NUM_DATA)])[0] for s in range(5)])
    assert not torch.equal(losses["bf16"], losses["fp32"])  # the products did run in bfloat16
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=2e-2, atol=0)


@needs_bf16
def test_a_site_with_a_bf16_log_density_is_refused():
    class RawEncoder(type(small_vae())):
        """A guide whose means come straight from a linear layer: bfloat16 under autocast, so are z and log q."""

        def guide(self, x, num_data=None):
            with pyro.plate("data", num_data or len(x), subsample=x):
                pyro.sample("z", pyro.distributions.Normal(self.raw(x), 1.0).to_event(1))

    model = small_vae()
    model.__class__ = RawEncoder
    model.raw = torch.nn.Linear(DATA_DIM, 3)
    x = batch(2)
    check_model(model, (x,), "trace", None, NUM_DATA)  # fine in float32
    with pytest.raises(ConfigError, match=r"site 'z' of RawEncoder.guide computes its log-density in torch.bfloat16"):
        check_model(model, (x,), "trace", None, NUM_DATA, precision="bf16")
    check_model(small_vae(), (x,), "meanfield", None, NUM_DATA, precision="bf16")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_traced_evaluation_gives_the_eager_figures(precision, device, monkeypatch):
    """The traced chunks replay what Pyro's handlers compute: the same draws, the same log weights."""
    if precision == "bf16":
        skip_without_bf16(device)
    model = small_vae().to(device)
    x = batch(50, device=device)
    figures = {}
    for traced in (True, False):
        if not traced:
            monkeypatch.setattr(evaluation._LogWeights, "MIN_CHUNKS_TO_TRACE", 10**9)
        pyro.set_rng_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a failed trace would warn and run eagerly
            estimate = evaluation.log_likelihood(model.model, model.guide, x, num_particles=40, chunk_size=200,
                                                 precision=precision)
        figures[traced] = estimate.values
    assert torch.equal(figures[True], figures[False])


def test_the_command_line_refuses_bf16_without_a_unit_in_one_line(monkeypatch, capsys, tmp_path):
    from pyro_vae import cli
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    status = cli.main(["train", "--precision", "bf16", "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == cli.EXIT_USAGE and len(err) == 1 and "neither AMX nor AVX512-BF16" in err[0]
    assert not (tmp_path / "run").exists()  # refused before any work
