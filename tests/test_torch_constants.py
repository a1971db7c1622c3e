"""PyTorch's kernel constants mapped on request (pyro_vae/torch_constants.py), not at import, and its benchmark."""

import inspect
import json
import os
import platform
import re
import subprocess
import sys

import pytest

from pyro_vae.torch_constants import map_torch_constants


def torch_cpu_read_only_regions():
    """(Size, Rss) in kB of each read-only data mapping of libtorch_cpu.so, from /proc/self/smaps."""
    regions, current = [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
                current = None
                if len(fields) == 6 and fields[1] == "r--p" and os.path.basename(fields[5]) == "libtorch_cpu.so":
                    current = {}
                    regions.append(current)
            elif current is not None and fields[0] in ("Size:", "Rss:"):
                current[fields[0][:-1]] = int(fields[1])
    return [(region["Size"], region["Rss"]) for region in regions]


def kernel_version():
    match = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(match[1]), int(match[2])) if match else (0, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux") or kernel_version() < (5, 14),
                    reason="MADV_POPULATE_READ needs Linux 5.14 or later")
def test_mapping_maps_all_of_torchs_read_only_kernel_data_when_asked_not_at_import():
    """In a fresh process: ``import pyro_vae`` leaves the pages as they were; the call maps them all."""
    code = (f"import inspect, json, os, sys\n{inspect.getsource(torch_cpu_read_only_regions)}\n"
            "import pyro_vae\n"
            "before = torch_cpu_read_only_regions()\n"
            "from pyro_vae.torch_constants import map_torch_constants\n"
            "mapped = map_torch_constants()\n"
            "print(json.dumps({'before': before, 'mapped': mapped, 'after': torch_cpu_read_only_regions()}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYRO_VAE_MAP_TORCH_CONSTANTS": "1"})
    result = json.loads(done.stdout.splitlines()[-1])
    sizes = [size for size, _ in result["after"]]
    assert sizes and result["mapped"] == 1024 * sum(sizes)
    assert sum(rss for _, rss in result["before"]) < sum(sizes) / 2, result["before"]
    assert all(rss == size for size, rss in result["after"]), result["after"]


def test_nothing_is_mapped_elsewhere_or_when_switched_off(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert map_torch_constants.__wrapped__() == 0
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("PYRO_VAE_MAP_TORCH_CONSTANTS", "0")
    assert map_torch_constants.__wrapped__() == 0


@pytest.fixture(scope="module")
def benchmark():
    from conftest import load_benchmark
    return load_benchmark("torch_constants")


def test_the_benchmark_times_fresh_processes_with_and_without_the_mapping(benchmark, tmp_path):
    out = tmp_path / "constants.json"
    result = benchmark.main(["--repeats", "1", "--steps", "50", "--out", str(out)])
    assert json.loads(out.read_text())["median"] == result["median"]
    mapped, unmapped = result["runs"]["mapped"][0], result["runs"]["not mapped"][0]
    assert unmapped["bytes_mapped"] == 0 and mapped["mode"] == unmapped["mode"] == "replay+update"
    if sys.platform.startswith("linux") and kernel_version() >= (5, 14):
        assert mapped["bytes_mapped"] > 0
    assert "| log_sigmoid" in out.with_suffix(".md").read_text()


def test_the_benchmark_replaces_committed_results_only_with_overwrite(benchmark, capsys):
    from conftest import REPO
    out = REPO / "benchmarks" / "results" / "torch_constants_cpu.json"
    before = out.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--out", str(out)])
    assert exit_.value.code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
