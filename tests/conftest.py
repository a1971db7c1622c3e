import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The factories the tests train with are remembered in a folder of the test session's, not the user's
# (pyro_vae.trust); processes the tests start inherit it.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="pyro-vae-tests-config-")


def shared_data_dir() -> Path:
    """The datasets beside the checkout (``../shared/data``), or ``$PYRO_VAE_DATA``."""
    if os.environ.get("PYRO_VAE_DATA"):
        return Path(os.environ["PYRO_VAE_DATA"])
    return REPO.parent / "shared" / "data"


NO_MNIST = "no MNIST copy under"


@pytest.fixture
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"{NO_MNIST} {path}: set PYRO_VAE_DATA")
    return path


def pytest_terminal_summary(terminalreporter):
    """Say once, at the end, how to run the tests that were skipped for want of MNIST."""
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if NO_MNIST in str(report.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} tests need MNIST and were skipped: point PYRO_VAE_DATA at a folder holding MNIST/raw "
            f"(torchvision's layout), e.g. 'PYRO_VAE_DATA=../shared/data pytest'")


@pytest.fixture(autouse=True)
def fresh_state():
    """Every test starts from a seeded RNG and an empty parameter store."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(1)  # the models under test are small: one thread is fastest and deterministic
    yield
    pyro.clear_param_store()


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
