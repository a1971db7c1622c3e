"""Data-parallel training across processes with :mod:`torch.distributed`, launched by ``torchrun``.

::

    torchrun --nproc-per-node 2 -m pyro_vae train --dataset mnist --device cpu     # 2 CPU processes, gloo
    torchrun --nproc-per-node 8 -m pyro_vae train --dataset mnist --device cuda    # 8 GPUs, nccl

Every process holds the whole model and data. At each step all processes draw the same
minibatch of ``batch_size`` datapoints (their data generators share the seed) and each takes
its own slice of ``batch_size / world_size`` of them; each samples its own z (Pyro's random
seed is offset by the rank). A process's loss, scaled by the data plate to the whole training
set, is an unbiased estimate of the full-data loss; :class:`~torch.nn.parallel.DistributedDataParallel`
averages the gradients of these estimates during the backward pass, which gives an unbiased
estimate from all ``batch_size`` datapoints: the same distribution of updates as one process
with the same ``batch_size`` (``tests/test_distributed.py`` checks both the averaging and the
end result). Only rank 0 evaluates, writes the run directory and shows progress.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) nothing here
is used and training runs in one process.
"""

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError


@dataclass
class Processes:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0 evaluates, checkpoints, writes files and shows progress."""
        return self.rank == 0

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This process's slice of a minibatch's indices."""
        return index.tensor_split(self.world_size)[self.rank] if self.distributed else index

    def share(self, index: torch.Tensor) -> Optional[torch.Tensor]:
        """The positions of this process's share of a minibatch of ``index``, or ``None`` (all of them)
        outside a distributed run."""
        return self.shard(torch.arange(len(index), device=index.device)) if self.distributed else None

    def wrap(self, loss: nn.Module, device: torch.device) -> nn.Module:
        """The loss module, under DDP when distributed (gradients averaged across processes)."""
        if not self.distributed:
            return loss
        return DistributedDataParallel(loss, device_ids=[device.index] if device.type == "cuda" else None)

    def gather(self, value) -> list:
        """Every process's ``value`` (any picklable object), in rank order; all processes must call it."""
        if not self.distributed:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def max(self, value: torch.Tensor) -> int:
        """The largest of a 0-dim integer tensor across processes, on the host (a sync)."""
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())


def launched_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 outside ``torchrun``), before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available: use --device cpu or auto")
    return torch.device(name)


def start(device_name: str, batch_size: int) -> tuple[Processes, torch.device]:
    """Join the process group ``torchrun`` set up, if any; returns the processes and this one's device
    (:func:`resolve_device` of ``device_name``).

    The backend is NCCL for CUDA (one GPU per process, ``LOCAL_RANK``) and gloo for the CPU.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes(), device
    if batch_size < world_size:
        raise ConfigError(f"batch-size {batch_size} is smaller than the {world_size} processes: each process "
                          f"needs at least one datapoint per step; pass --batch-size {world_size} or more")
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible): "
                              "start at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size()), device


def stop(processes: Optional[Processes]) -> None:
    """Leave the process group (after every process has finished)."""
    if processes is not None and processes.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
