"""Mixed precision: the networks' matrix products in bfloat16, everything else in float32.

With ``precision="bf16"`` a training step and an evaluation run under :func:`torch.autocast`,
which computes matrix products (``linear``, ``matmul``, ``addmm``) in bfloat16 with float32
accumulation. The networks of :mod:`pyro_vae.networks` return their outputs in their inputs'
dtype (float32), so the distributions' parameters, log-densities, KL terms and log-sum-exps are
float32, and so are parameters, gradients and optimizer state. A model with networks of its own
keeps this split by returning float32 from them (``.float()``); :func:`pyro_vae.contract.check_model`
refuses a site whose log-density would be computed in a lower precision.

bfloat16 pays only on hardware with bfloat16 matrix instructions: AMX or AVX512-BF16 on the CPU,
and CUDA GPUs of compute capability 8.0 and later. Elsewhere the products would be emulated,
slower than float32, and :func:`check_precision` refuses.
"""

import contextlib
from typing import Optional

import torch

from .errors import ConfigError

#: Values of ``precision``.
PRECISIONS = ("fp32", "bf16")


def bf16_matrix_unit(device: torch.device) -> Optional[str]:
    """The bfloat16 matrix hardware of ``device`` ("AMX", "AVX512-BF16", "CUDA"), or None."""
    device = torch.device(device)
    if device.type == "cuda":
        return "CUDA" if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False) \
            else None
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return "AMX"
        if torch.cpu._is_avx512_bf16_supported():
            return "AVX512-BF16"
    return None


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`~pyro_vae.ConfigError` for an unknown precision, or bf16 without a bf16 matrix unit."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and bf16_matrix_unit(device) is None:
        what = "this CPU has neither AMX nor AVX512-BF16" if torch.device(device).type == "cpu" \
            else f"{device} has no bfloat16 matrix unit"
        raise ConfigError(f"--precision bf16 needs bfloat16 matrix instructions and {what}, so it would be "
                          "slower than float32: use --precision fp32")


def autocast(precision: str, device: torch.device):
    """The context computing matrix products in ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
