"""PackNet (Mallya & Lazebnik 2018): after each task, prune a fraction ``prune`` of the weights that task was
free to use (smallest magnitudes), retrain the kept ones briefly (``post_prune_epochs``) and freeze them for
that task. Later tasks train only the still-free weights; task t is answered with the weights of tasks <= t.
Trunk biases are learnt with the first task and then frozen, as in the paper. Task-IL only."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import functional_call

from clrun.methods.base import Method, require, require_backbone


class PackNet(Method):
    scenarios = ("task_il",)

    def __init__(self, prune: float = 0.5, post_prune_epochs: int = 1):
        require(0.0 < prune < 1.0, f"method.prune={prune!r} must be in (0, 1)")
        require(post_prune_epochs >= 0, f"method.post_prune_epochs={post_prune_epochs!r} must be >= 0")
        self.prune, self.post_prune_epochs = float(prune), int(post_prune_epochs)
        self.owner: dict[str, Tensor] = {}  # per packed weight: the task that owns it, -1 = free
        self.training_task: int | None = None
        self.pruned = False

    def setup(self) -> None:
        require_backbone(self, self.ctx.model, "it packs the trunk's weights and freezes the head per task")
        params = dict(self.ctx.model.named_parameters())
        self.owner = {n: torch.full_like(p, -1, dtype=torch.int8) for n, p in params.items()
                      if n.startswith("features.") and p.dim() > 1}

    def usable(self, task_id: int) -> dict[str, Tensor]:
        """Bool masks of the weights task ``task_id`` computes with."""
        masks = {}
        for n, own in self.owner.items():
            m = (own >= 0) & (own <= task_id)
            if task_id == self.training_task and not self.pruned:
                m = m | (own == -1)  # the task being learnt may use every free weight
            masks[n] = m
        return masks

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        model = self.ctx.model
        params = dict(model.named_parameters())
        masked = {n: params[n] * m for n, m in self.usable(task_id).items()}
        return functional_call(model, masked, (x,))

    def frozen(self) -> dict[str, Tensor]:
        """Packed weights the task being trained must leave alone (owned by earlier tasks, or after pruning not
        its own), and the head's rows and biases of every other task: an optimiser carried across tasks
        (reset_optimizer=false) would otherwise keep moving them with its old moments."""
        task = self.training_task
        if self.pruned:
            masks = {n: own != task for n, own in self.owner.items()}
        else:
            masks = {n: (own >= 0) & (own < task) for n, own in self.owner.items()}
        others = ~self.ctx.scenario.task_units[task]
        masks["head.weight"] = others.unsqueeze(1).expand_as(self.ctx.model.head.weight)
        masks["head.bias"] = others
        return masks

    def before_task(self, task_id: int) -> None:
        self.training_task, self.pruned = task_id, False
        for n, p in self.ctx.model.named_parameters():
            if n.startswith("features.") and p.dim() == 1:
                p.requires_grad_(task_id == 0)  # trunk biases: the first task's

    def after_task(self, task_id: int) -> None:
        params = dict(self.ctx.model.named_parameters())
        with torch.no_grad():
            for n, own in self.owner.items():
                free = own == -1
                w = params[n]
                n_release = int(self.prune * int(free.sum()))
                if n_release > 0:  # the smallest-magnitude free weights go back to the pool, zeroed
                    magnitudes = w.abs().masked_fill(~free, math.inf).flatten()
                    release = torch.zeros_like(free).flatten()
                    release[magnitudes.topk(n_release, largest=False).indices] = True
                    release = release.view_as(free)
                else:
                    release = torch.zeros_like(free)
                own[free & ~release] = task_id
                w[release] = 0.0
        self.pruned = True
        if self.post_prune_epochs:  # the kept weights alone, so the task recovers from pruning
            self.ctx.train(task_id, self.post_prune_epochs)
        self.training_task = None

    def free_fraction(self) -> float:
        total = sum(o.numel() for o in self.owner.values())
        return sum(int((o == -1).sum()) for o in self.owner.values()) / max(total, 1)

    def extra_metrics(self) -> dict:
        n = sum(o.numel() for o in self.owner.values())
        tasks = len(self.ctx.stream)
        # a task's mask is recoverable from the owner map: ceil(log2(T + 1)) bits per packed weight in all
        bits = n * math.ceil(math.log2(tasks + 1))
        return {"free_fraction": self.free_fraction(), "mask_bits_per_task": bits / tasks}
