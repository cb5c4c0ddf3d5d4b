"""EWC (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018): (lam/2) sum F_i (theta_i - theta*_i)^2
with F the diagonal Fisher at each task's optimum (``fisher=empirical|true|expected``)."""

from __future__ import annotations

import torch

from clrun.importance import FISHER_KINDS, fisher_diag
from clrun.methods.base import require
from clrun.methods.quadratic import QuadraticPenalty


class EWC(QuadraticPenalty):
    def __init__(self, lam: float = 100.0, fisher: str = "true", fisher_samples: int | None = 2000,
                 online: bool = False, gamma: float = 0.95, chunk: int = 16, backend: str = "auto"):
        allowed = ", ".join(FISHER_KINDS)
        require(fisher in FISHER_KINDS, f"method.fisher={fisher!r} is not allowed; use one of {allowed}")
        require(fisher_samples is None or fisher_samples >= 1,
                f"method.fisher_samples={fisher_samples!r} must be a positive integer or null (all)")
        require(0.0 < gamma <= 1.0, f"method.gamma={gamma!r} must be in (0, 1]")
        super().__init__(lam, online=online, gamma=gamma)
        self.fisher, self.fisher_samples, self.chunk, self.backend = fisher, fisher_samples, chunk, backend

    @property
    def name(self) -> str:
        return "online_ewc" if self.online else "ewc"

    def after_task(self, task_id: int) -> None:
        L = self.learner
        if task_id == len(L.stream) - 1:
            return  # no later task would be anchored by it
        x, y, ids = L.task_sample(task_id, self.fisher_samples)
        g = torch.Generator().manual_seed(L.seed * 104729 + task_id)  # labels sampled for the true Fisher
        F = fisher_diag(L.model, x, y, L.scenario.candidates(ids, task_id), self.fisher, self.chunk, generator=g,
                        backend=self.backend)
        self.consolidate(F)
