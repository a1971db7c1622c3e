"""Run by ``torchrun --nproc-per-node 2``: the DDP gradient of the training loss equals the average
of the per-process gradients computed one after another in a single process."""

import os
import sys

import pyro
import torch

from pyro_vae import distributed
from pyro_vae.models import build_vae
from pyro_vae.objectives import make_objective
from pyro_vae.step import ObjectiveLoss

torch.set_num_threads(1)
processes, device = distributed.start(torch.device("cpu"), batch_size=8)
assert processes.world_size == int(os.environ["WORLD_SIZE"]) == 2
x = (torch.rand(8, 12, generator=torch.Generator().manual_seed(0)) < 0.5).float()  # the same in every process
index = torch.arange(8)


def model():
    torch.manual_seed(0)
    return build_vae(12, 3, [16])


def gradients(loss_module, shard, seed):
    pyro.set_rng_seed(seed)
    loss_module.zero_grad()
    with pyro.get_param_store().scope():  # each model's own parameters, not a shared store's
        loss_module([((x[shard],), 1000)]).backward()
    return torch.cat([p.grad.flatten() for p in loss_module.parameters()])


vae = model()
ddp = processes.wrap(ObjectiveLoss(vae, make_objective("meanfield")), device)
mine = gradients(ddp, processes.shard(index), seed=processes.rank)
if processes.main:
    single = ObjectiveLoss(model(), make_objective("meanfield"))
    reference = sum(gradients(single, shard, seed=rank) for rank, shard in enumerate(index.tensor_split(2))) / 2
    difference = (mine - reference).abs().max().item()
    print(f"largest difference from the single-process average: {difference:.3e} "
          f"(largest gradient {reference.abs().max().item():.3e})")
    distributed.stop(processes)
    sys.exit(0 if torch.allclose(mine, reference, rtol=1e-5, atol=1e-4) else 1)
distributed.stop(processes)
