"""Supermasks in Superposition (Wortsman et al. 2020): the weights stay random and frozen; each task learns a
binary mask over them (edge-popup: real-valued scores, the top ``1 - sparsity`` fraction per layer kept, the
gradient passed straight through to the scores). After a task only its mask is kept: one bit per weight.
Task-IL: the given task id selects the mask."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call

from clrun.methods.base import Method, require


def top_mask(scores: Tensor, keep: float) -> Tensor:
    """Bool mask of the ``keep`` fraction of entries with the largest scores."""
    k = max(1, int(round(keep * scores.numel())))
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[scores.flatten().topk(k).indices] = True
    return mask.view_as(scores)


class SupSup(Method):
    scenarios = ("task_il",)

    def __init__(self, sparsity: float = 0.5):
        require(0.0 < sparsity < 1.0, f"method.sparsity={sparsity!r} must be in (0, 1): the fraction of weights masked")
        self.sparsity = float(sparsity)
        self.masks: dict[int, dict[str, Tensor]] = {}  # finished tasks: bool masks, the only per-task storage

    def setup(self) -> None:
        model = self.learner.model
        self.names = [n for n, p in model.named_parameters() if p.dim() > 1]
        keep = 1.0 - self.sparsity
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.zero_()  # no biases: the network is the random weights and a mask
                else:  # the paper's signed Kaiming constant, scaled for the weights a mask keeps
                    p.copy_(torch.sign(p) * (2.0 / (keep * p[0].numel())) ** 0.5)
                p.requires_grad_(False)
        # one score tensor per weight for every task, created up front so untrained tasks have a (random) mask
        g = torch.Generator().manual_seed(self.learner.seed + 1)
        params = dict(model.named_parameters())
        def scores_like(w: Tensor) -> nn.Parameter:  # edge-popup's Kaiming-uniform score init
            bound = (6.0 / w[0].numel()) ** 0.5
            s = (torch.rand(w.shape, generator=g) * 2 - 1) * bound
            return nn.Parameter(s.to(w.device), requires_grad=False)

        model.supermask_scores = nn.ModuleList(
            nn.ParameterList(scores_like(params[n]) for n in self.names) for _ in range(len(self.learner.stream)))

    def before_task(self, task_id: int) -> None:
        for p in self.learner.model.supermask_scores[task_id]:
            p.requires_grad_(True)

    def task_masks(self, task_id: int) -> dict[str, Tensor]:
        if task_id in self.masks:
            return {n: m.float() for n, m in self.masks[task_id].items()}
        scores = self.learner.model.supermask_scores[task_id]
        keep = 1.0 - self.sparsity
        # straight-through: the forward uses the hard mask, the backward treats it as the scores
        return {n: top_mask(s.detach(), keep).float() + s - s.detach() for n, s in zip(self.names, scores)}

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        model = self.learner.model
        params = dict(model.named_parameters())
        masked = {n: params[n] * m for n, m in self.task_masks(task_id).items()}
        return functional_call(model, masked, (x,))

    def after_task(self, task_id: int) -> None:
        scores = self.learner.model.supermask_scores[task_id]
        self.masks[task_id] = {n: top_mask(s.detach(), 1.0 - self.sparsity) for n, s in zip(self.names, scores)}
        for p in scores:  # the float scores are training scaffolding: only the bits stay
            p.requires_grad_(False)
            p.data = torch.empty(0, device=p.device)

    def extra_metrics(self) -> dict:
        return {"mask_bits_per_task": sum(self.learner.model.get_parameter(n).numel() for n in self.names)}
