"""One training step: the loss of a minibatch, its gradient and an optimizer update.

The loss of a step is a sum over the parts of the training data (one part for an unsupervised
model; unlabelled and labelled parts for a semi-supervised one): for each part a minibatch
``args`` (passed to model and guide as ``model(*args, num_data=num_data)``) and the part's
size ``num_data``, with which the minibatch loss estimates the part's full-data loss
(:meth:`pyro_vae.models.VAE.data_plate`).

:class:`TrainingStep` returns device tensors and never reads them on the host, so the loop can
run many steps before it synchronises.
"""

from typing import Optional, Sequence

import torch
from pyro.infer import ELBO
from torch import nn

Batch = tuple[tuple, int]  # (args for model and guide, size of the data part)


class ObjectiveLoss(nn.Module):
    """The objective's loss of a model as a module: ``forward(batches)`` sums it over data parts.

    Being an :class:`~torch.nn.Module` whose parameters are the model's, it can be wrapped by
    :class:`torch.nn.parallel.DistributedDataParallel`, which then averages its gradients across
    processes during the backward pass.
    """

    def __init__(self, model: nn.Module, objective: ELBO):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batches: Sequence[Batch]) -> torch.Tensor:
        return sum(self.objective.differentiable_loss(self.model.model, self.model.guide, *args, num_data=num_data)
                   for args, num_data in batches)


class TrainingStep:
    """Loss, gradient, optional clipping and an optimizer step, without host synchronisation.

    :param loss: an :class:`ObjectiveLoss` (or a wrapper of one, such as DDP).
    :param optimizer: a torch optimizer over the model's parameters.
    :param clip_grad_norm: clip the gradient's total norm to this value, if given.
    """

    def __init__(self, loss: nn.Module, optimizer: torch.optim.Optimizer, clip_grad_norm: Optional[float] = None):
        self.loss = loss
        self.optimizer = optimizer
        self.clip_grad_norm = clip_grad_norm
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """Take one step; returns the detached loss and whether loss and gradient were finite."""
        loss = self.loss(batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = torch.isfinite(loss.detach())
        if self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad_norm)
            finite = finite & torch.isfinite(norm)
        self.optimizer.step()
        return loss.detach(), finite
