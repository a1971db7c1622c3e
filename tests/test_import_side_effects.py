"""``import pyro_vae`` leaves the process as it was (docs/upstream.md: workarounds apply where a run starts).

Each check runs in a fresh interpreter, so that nothing this test session imported earlier hides
what the import does.
"""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_torch_constants import torch_cpu_read_only_regions

READ_REGIONS = inspect.getsource(torch_cpu_read_only_regions)  # run in the children as it is


def in_fresh_process(code: str, **environment) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line, returned here."""
    env = {**os.environ, "PYRO_VAE_MAP_TORCH_CONSTANTS": "1", **environment}
    done = subprocess.run([sys.executable, "-c", "import os, sys, json\n" + READ_REGIONS + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_umask_is_left_alone_and_read_where_files_are_written(tmp_path):
    result = in_fresh_process(f"""
        os.umask(0o027)
        import pyro_vae
        from pyro_vae.checkpoint import write_json
        after_import = os.umask(0o007)
        write_json({str(tmp_path / "a.json")!r}, {{}})  # the umask now, not the one at import
        print(json.dumps({{"after_import": after_import, "mode": os.stat({str(tmp_path / "a.json")!r}).st_mode & 0o777,
                          "after_write": os.umask(0o022)}}))
    """)
    assert result == {"after_import": 0o027, "mode": 0o660, "after_write": 0o007}


def test_no_pyplot_and_no_backend_switch():
    result = in_fresh_process("""
        import pyro_vae
        plain = "matplotlib.pyplot" in sys.modules
        print(json.dumps({"pyplot": plain}))
    """)
    assert result == {"pyplot": False}
    pytest.importorskip("matplotlib")
    result = in_fresh_process("""
        import matplotlib
        matplotlib.use("svg")
        import pyro_vae
        print(json.dumps({"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules}))
    """)
    assert result == {"backend": "svg", "pyplot": False}


def test_drawing_a_picture_needs_no_pyplot_and_keeps_the_backend(tmp_path):
    pytest.importorskip("matplotlib")
    result = in_fresh_process(f"""
        import matplotlib
        matplotlib.use("svg")
        import torch
        from pyro_vae import plots
        plots.save_image_grid(torch.rand(4, 9), (3, 3), 2, {str(tmp_path / "grid.png")!r}, "a grid")
        plots.plot_learning_curves([{{"samples_seen": 10, "train_elbo": -3.0, "test_elbo": -3.5}},
                                    {{"samples_seen": 100, "train_elbo": -2.0, "test_elbo": -2.5}}],
                                   {str(tmp_path / "curve.png")!r})
        print(json.dumps({{"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules}}))
    """)
    assert result == {"backend": "svg", "pyplot": False}
    for name in ("grid.png", "curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_libtorchs_pages_are_as_resident_as_without_the_import():
    """The import maps in no page of libtorch_cpu's read-only data that importing torch did not."""
    torch_only = in_fresh_process("""
        import torch
        print(json.dumps(sum(rss for _, rss in torch_cpu_read_only_regions())))
    """)
    with_pyro_vae = in_fresh_process("""
        import torch
        import pyro_vae
        print(json.dumps(sum(rss for _, rss in torch_cpu_read_only_regions())))
    """)
    # Importing pyro-vae and what it imports may touch a few more pages (none here); mapping them
    # all, as the import did before, is what must not happen.
    everything = in_fresh_process("""
        import torch
        print(json.dumps(sum(size for size, _ in torch_cpu_read_only_regions())))
    """)
    assert with_pyro_vae - torch_only < (everything - torch_only) / 10, (torch_only, with_pyro_vae, everything)


def test_a_cpu_run_maps_libtorchs_pages_when_it_starts(tmp_path):
    """The workaround applies where a run starts: after a CPU ``fit``, libtorch_cpu's read-only data is resident."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the mapping is Linux's (madvise)")
    regions = in_fresh_process(f"""
        import pyro_vae
        data = pyro_vae.load_dataset("frey-face")
        small = pyro_vae.ImageData("small", data.train[:100], data.test[:20], data.image_shape)
        pyro_vae.fit(pyro_vae.build_vae(560, 2, [8], "gaussian", "tanh"), small, epochs=1, batch_size=50,
                     eval_particles=2, device="cpu", progress=False, out={str(tmp_path / "run")!r})
        print(json.dumps(torch_cpu_read_only_regions()))
    """)
    assert regions and all(rss == size for size, rss in regions), regions


def test_no_operator_is_registered_until_first_used():
    result = in_fresh_process("""
        import torch
        import pyro_vae
        before = "pyro_vae::onednn_linear" in torch._C._dispatch_get_all_op_names()
        from pyro_vae import tracing
        op = tracing.onednn_linear()
        after = tracing.ONEDNN_LINEAR in torch._C._dispatch_get_all_op_names()
        print(json.dumps({"before": before, "after": after, "same": op is tracing.onednn_linear(),
                          "name": str(op)}))
    """)
    assert result == {"before": False, "after": True, "same": True, "name": "pyro_vae.onednn_linear.default"}


def test_compiling_restores_the_loggers_level():
    import logging

    import torch
    from pyro_vae import tracing

    logger = logging.getLogger("torch.utils.cpp_extension")
    seen = []
    compiled = tracing._CompiledGraph(lambda x: seen.append(logger.level) or x + 1)
    before = logger.level
    assert torch.equal(compiled(torch.zeros(1)), torch.ones(1)) and torch.equal(compiled(torch.ones(1)), 2 * torch.ones(1))
    assert seen == [logging.ERROR, before] and logger.level == before


def test_traceable_patches_pyros_host_reads_only_inside_the_block():
    import pyro.infer.trace_elbo
    import pyro.infer.util
    import pyro.util
    from pyro_vae.tracing import traceable

    originals = pyro.infer.trace_elbo.torch_item, pyro.infer.trace_elbo.warn_if_nan
    assert originals == (pyro.infer.util.torch_item, pyro.util.warn_if_nan)
    with traceable():
        assert pyro.infer.trace_elbo.torch_item is not originals[0]
        assert pyro.infer.trace_elbo.warn_if_nan is not originals[1]
        assert pyro.util.warn_if_nan is originals[1]  # where Pyro defines it, outside pyro.infer: left alone
    assert (pyro.infer.trace_elbo.torch_item, pyro.infer.trace_elbo.warn_if_nan) == originals
