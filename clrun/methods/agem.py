"""A-GEM (Chaudhry et al. 2019): if the new gradient g points against the reference gradient g_ref of a
memory batch (g.g_ref < 0), project it: g <- g - (g.g_ref / g_ref.g_ref) g_ref. One extra forward/backward.
The memory holds buffer // n_tasks samples of each finished task (``memory``: random, or equal per class)."""

from __future__ import annotations

import torch
from torch import Tensor

from clrun.methods.base import Step
from clrun.methods.replay import EpisodicMemory


def agem_project(g: Tensor, g_ref: Tensor) -> Tensor:
    """A-GEM's projection, branch-free (no host sync): unchanged when g.g_ref >= 0."""
    dot = torch.dot(g, g_ref)
    return g - (torch.clamp(dot, max=0.0) / torch.dot(g_ref, g_ref).clamp_min(1e-12)) * g_ref


def flat_grad(params: list[torch.nn.Parameter]) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def set_flat_grad(params: list[torch.nn.Parameter], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:  # in place: the gradient may be a view of a stacked model's (clrun.vectorized)
            p.grad.copy_(g)
        offset += n


class AGEM(EpisodicMemory):
    def memory_loss(self, task_id: int) -> Tensor:
        x, y, ids, _ = self.buffer.sample(self.replay_batch_size)
        return self.ctx.ce(self.forward(x, task_id), y, ids, task_id)

    def transform_gradient(self, step: Step) -> None:
        if not len(self.buffer):
            return
        g_ref = self.ctx.gradient(self.memory_loss(step.batch.task))
        params = self.ctx.trainable_parameters()
        set_flat_grad(params, agem_project(flat_grad(params), g_ref))

    def after_task(self, task_id: int) -> None:
        self.buffer.add(*self.task_memory(task_id))
