"""PyTorch's read-only kernel constants mapped into the process before its CPU kernels run.

A workaround for an upstream slowdown (``docs/upstream.md#sleefs-masked-loads-in-pytorchs-avx-512-kernels``):
PyTorch's AVX-512 kernels (Sleef's ``log1p``, under ``log_sigmoid`` and so under every Bernoulli
log-density of logits) read constants from ``libtorch_cpu``'s read-only data with masked loads,
which stay slow until the process has touched the page a constant lives on.
:func:`map_torch_constants` maps those pages in once, with ``madvise(MADV_POPULATE_READ)``. Importing
pyro-vae does not call it: a CPU training run does when it starts, and anyone may call it. The pages
are shared with every other process using the library, but count towards this one's resident
memory. ``PYRO_VAE_MAP_TORCH_CONSTANTS=0`` switches it off. What it is worth: ``docs/speed.md``.
"""

import ctypes
import functools
import os
import sys

#: ``madvise`` advice that faults a range's pages in for reading (Linux 5.14 and later).
MADV_POPULATE_READ = 22


@functools.lru_cache(maxsize=None)
def map_torch_constants() -> int:
    """Map the read-only data of ``libtorch_cpu`` into this process, once; the bytes mapped.

    0 where that is switched off (``PYRO_VAE_MAP_TORCH_CONSTANTS=0``) or cannot be done (not
    Linux, a kernel before 5.14, ``madvise`` not allowed): the kernels then run as they would have.
    """
    if os.environ.get("PYRO_VAE_MAP_TORCH_CONSTANTS") == "0" or not sys.platform.startswith("linux"):
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        with open("/proc/self/maps") as maps:
            regions = [line.split() for line in maps]
    except (OSError, AttributeError):
        return 0
    mapped = 0
    for region in regions:
        if len(region) == 6 and region[1] == "r--p" and os.path.basename(region[5]) == "libtorch_cpu.so":
            start, end = (int(address, 16) for address in region[0].split("-"))
            if madvise(start, end - start, MADV_POPULATE_READ) == 0:
                mapped += end - start
    return mapped
