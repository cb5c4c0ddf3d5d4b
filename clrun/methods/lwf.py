"""Learning without Forgetting (Li & Hoiem 2017): distil the previous model's outputs on the new data,
alpha * T^2 * KL(softmax(z_old/T) || softmax(z_new/T)). Task-IL distils each old task's head; class-IL and
domain-IL distil the shared head's previously seen units.

``weighting=by_task`` is van de Ven & Tolias's form: at task t the loss is (1/t) CE + (1 - 1/t) KD, with KD
averaged over the old heads.

``kd_units=seen`` (class-IL): the new model's softmax runs over every unit seen so far, the current task's
included, against the old model's distribution on the old units padded with zeros (van de Ven & Tolias's
code), so distillation also pushes the new classes down on the new data; ``old`` (default) compares the two
models on the old units only. Task- and domain-IL are the same either way."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from clrun.methods.base import Batch, Method, require


class LwF(Method):
    def __init__(self, alpha: float = 1.0, temperature: float = 2.0, weighting: str = "constant",
                 kd_units: str = "old"):
        require(alpha >= 0, f"method.alpha={alpha!r} must be >= 0")
        require(temperature > 0, f"method.temperature={temperature!r} must be > 0")
        require(weighting in ("constant", "by_task"), f"method.weighting={weighting!r} is not allowed; use "
                "constant (CE + alpha KD) or by_task ((1/t) CE + (1 - 1/t) alpha KD, van de Ven & Tolias)")
        self.lam = self.alpha = float(alpha)
        self.temperature = float(temperature)
        require(kd_units in ("old", "seen"), f"method.kd_units={kd_units!r} is not allowed; use old or seen")
        self.weighting = weighting
        self.kd_units = kd_units
        self.old_model: torch.nn.Module | None = None
        self.old_tasks = 0

    def after_task(self, task_id: int) -> None:
        self.old_model = copy.deepcopy(self.learner.model).eval()
        for p in self.old_model.parameters():
            p.requires_grad_(False)
        self.old_tasks = task_id + 1

    def unit_groups(self) -> list[Tensor]:
        """Groups of output units whose old distributions are kept: one per old head, or the old shared head."""
        sc = self.learner.scenario
        if sc.uses_task_id:
            return [sc.task_units[k] for k in range(self.old_tasks)]
        return [sc.seen_units[self.old_tasks - 1]]

    def penalty(self, batch: Batch, logits: Tensor) -> Tensor | None:
        if self.old_model is None or self.alpha == 0:
            return None
        with torch.no_grad():
            old_logits = self.old_model(batch.x)
        T = self.temperature
        total = logits.new_zeros(())
        groups = self.unit_groups()
        sc = self.learner.scenario
        for units in groups:
            p_old = F.log_softmax(old_logits[:, units] / T, dim=1)
            if self.kd_units == "seen" and not sc.uses_task_id:
                # log of the new softmax over all seen units, read on the old ones (the padded zeros add nothing)
                now = sc.seen_units[batch.task]
                p_new = logits[:, units] / T - torch.logsumexp(logits[:, now] / T, dim=1, keepdim=True)
            else:
                p_new = F.log_softmax(logits[:, units] / T, dim=1)
            total = total + F.kl_div(p_new, p_old, log_target=True, reduction="batchmean")
        if self.weighting == "by_task":  # (t - 1) x the mean over old heads; loss_scale then takes 1/t
            total = total * self.old_tasks / len(groups)
        return self.alpha * T * T * total

    def loss_scale(self) -> float:
        # by_task: the penalty carries (t - 1) x KD, so 1/t of the whole is (1/t) CE + (1 - 1/t) KD
        # (a stacked regulariser is scaled too)
        return 1.0 / (self.old_tasks + 1) if self.weighting == "by_task" else 1.0

    def extra_metrics(self) -> dict:
        return {"snapshot_bytes": sum(p.nbytes for p in self.old_model.parameters()) if self.old_model else 0}
