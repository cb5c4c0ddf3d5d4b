"""GEM (Lopez-Paz & Ranzato 2017): one memory per finished task (buffer // n_tasks samples each, random or
equal per class: ``memory``); when the new gradient g conflicts with any memory gradient g_k, replace it by
the closest g~ with g~.g_k >= margin-ish, solving GEM's dual QP  min_v 0.5 v'GG'v + g'G'v  s.t. v >= 0,
g~ = G'v + g  with quadprog."""

from __future__ import annotations

import numpy as np
import quadprog
import torch
from torch import Tensor

from clrun.methods.agem import flat_grad, set_flat_grad
from clrun.methods.base import Step, require
from clrun.methods.replay import EpisodicMemory


def gem_project(g: Tensor, G: Tensor, margin: float = 0.5, ridge: float | None = None) -> Tensor:
    """Project ``g`` [P] so that g~.g_k >= 0 for every row g_k of ``G`` [K, P] (GEM's dual QP, as published).
    The ridge keeping the QP strictly convex is relative by default, 1e-8 * mean(diag GG') (GEM's absolute 1e-3
    lets g~.g_k go negative by 1e-3 * v_k on large gradients); ``ridge`` adds GEM's code's absolute one
    instead, which on small memory gradients also holds the dual v near its lower bound. Only the K x K Gram
    matrix and the K products G g leave the device for the QP solver; g~ = g + G'v is formed where g lives."""
    G, g = G.detach(), g.detach()
    k = G.shape[0]
    P = (G @ G.T).double().cpu().numpy()
    diag = ridge if ridge is not None else 1e-8 * max(np.trace(P) / k, 1e-30)
    P = 0.5 * (P + P.T) + np.eye(k) * diag
    q = -(G @ g).double().cpu().numpy()
    v = quadprog.solve_qp(P, q, np.eye(k), np.zeros(k) + margin)[0]
    return g + torch.from_numpy(v).to(G) @ G


class GEM(EpisodicMemory):
    def __init__(self, buffer_size: int = 200, buffer_policy: str = "reservoir", replay_batch_size: int | None = None,
                 margin: float = 0.5, memory: str = "random", ridge: float | None = None):
        require(margin >= 0, f"method.margin={margin!r} must be >= 0")
        require(ridge is None or ridge > 0, f"method.ridge={ridge!r} must be > 0 or null (a relative ridge)")
        super().__init__(buffer_size, buffer_policy, replay_batch_size, memory)
        self.margin = float(margin)
        self.ridge = ridge
        self.memories: list[tuple[Tensor, Tensor, Tensor]] = []

    def setup(self) -> None:
        pass  # one memory per finished task (self.memories) replaces the shared buffer

    def transform_gradient(self, step: Step) -> None:
        if not self.memories:
            return
        ctx, task = self.ctx, step.batch.task
        G = torch.stack([ctx.gradient(ctx.ce(self.forward(x, int(ids[0])), y, ids, task))
                         for x, y, ids in self.memories])
        params = ctx.trainable_parameters()
        g = flat_grad(params)
        if bool((G @ g < 0).any()):  # project only on a violated constraint, as GEM does
            set_flat_grad(params, gem_project(g, G, self.margin, ridge=self.ridge))

    def after_task(self, task_id: int) -> None:
        self.memories.append(self.task_memory(task_id))

    def extra_metrics(self) -> dict:
        return {"buffer_bytes": sum(t.nbytes for m in self.memories for t in m)}
