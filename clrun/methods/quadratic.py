"""The quadratic anchor shared by EWC, MAS and SI: scale * lam * sum_k sum_i W_k,i (theta_i - theta*_k,i)^2.

Not a method by itself: the three differ only in how the importance W is estimated and kept. The per-task
pairs (W_k, theta*_k) are kept for inspection; training uses their sums A = sum_k W_k and B = sum_k W_k theta*_k,
because the penalty's gradient 2 * scale * lam * (A theta - B) is then one fused pass over the parameters per
step whatever the number of tasks, added straight to the gradients after backward (no autograd graph), and
its value scale * lam * (sum theta (A theta - 2 B) + C), C = sum_k W_k theta*_k^2, two more.

Along weight i the penalty's curvature is k_i = 2 * scale * lam * A_i. An explicit SGD step of size lr on it
multiplies theta_i - theta*_i by (1 - lr k_i): once lr k_i > 2 (2 (1 + momentum) with heavy-ball momentum)
the weight oscillates with growing amplitude instead of returning to its anchor, so a strong penalty adds
forgetting where it should remove it. After each task the method warns when that holds for any weight, and
metrics.csv's ``penalty_unstable_fraction`` keeps the largest fraction of such weights seen."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from clrun.methods.base import Method

log = logging.getLogger("clrun")


class QuadraticPenalty(Method):
    scale = 0.5  # EWC/MAS: lam/2; SI uses c without the half

    def __init__(self, lam: float, online: bool = False, gamma: float = 1.0):
        self.lam = float(lam)
        self.online = bool(online)
        self.gamma = float(gamma)
        # {param name: [K, *shape]}: K = tasks consolidated (or 1 when online)
        self.importance: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self._names: list[str] = []
        self._A: list[Tensor] = []
        self._B: list[Tensor] = []
        self._C: Tensor | None = None
        self.unstable_fraction = 0.0  # largest fraction of weights with lr * curvature past the SGD limit

    def consolidate(self, new_importance: dict[str, Tensor]) -> None:
        """Add one task's importance, anchored at the current parameters."""
        params = dict(self.ctx.model.named_parameters())
        for name, w in new_importance.items():
            theta = params[name].detach().clone().unsqueeze(0)
            w = w.detach().unsqueeze(0)
            if name not in self.importance:
                self.importance[name], self.anchor[name] = w, theta
            elif self.online:  # one running importance, the latest anchor (Schwarz et al. 2018)
                self.importance[name] = self.gamma * self.importance[name] + w
                self.anchor[name] = theta
            else:  # one (importance, anchor) pair per task
                self.importance[name] = torch.cat([self.importance[name], w])
                self.anchor[name] = torch.cat([self.anchor[name], theta])
        self._sums()
        self._check_stability()

    def _check_stability(self) -> None:
        """Warn, before the next task trains, when an explicit SGD step on the penalty would diverge."""
        limit = self.ctx.sgd_stability_limit()
        if limit is None or not self._A or self.lam == 0:
            return
        lr, bound = limit
        curvature = [2.0 * self.scale * self.lam * a for a in self._A]
        n_unstable = sum(int((lr * k > bound).sum()) for k in curvature)
        fraction = n_unstable / sum(k.numel() for k in curvature)
        self.unstable_fraction = max(self.unstable_fraction, fraction)
        if n_unstable:
            top = max(float(k.max()) for k in curvature)
            log.warning("%s: lr x curvature of the penalty exceeds %.3g on %d weights (%.2g%%; largest lr x curvature "
                        "%.3g): an explicit SGD step overshoots the anchor along them by more each step, and the "
                        "run may diverge; lam <= %.3g keeps every weight stable, or lower lr", self.name, bound,
                        n_unstable, 100 * fraction, lr * top, self.lam * bound / (lr * top))

    def _sums(self) -> None:
        self._names = list(self.importance)
        self._A = [self.importance[n].sum(0) for n in self._names]
        self._B = [(self.importance[n] * self.anchor[n]).sum(0) for n in self._names]
        self._C = sum((self.importance[n] * self.anchor[n].pow(2)).sum() for n in self._names) if self._names else None

    def state_dict(self) -> dict:  # the sums A, B, C are derived: rebuilt on load, not stored
        return {k: v for k, v in super().state_dict().items() if k not in ("_names", "_A", "_B", "_C")}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._sums()

    def value(self) -> Tensor:
        """The penalty itself, differentiable in the parameters (for checks and reporting; training adds its
        gradient in closed form)."""
        params = dict(self.ctx.model.named_parameters())
        total = torch.zeros((), device=self.ctx.device)
        for n in self._names:
            total = total + (self.importance[n] * (params[n].unsqueeze(0) - self.anchor[n]).pow(2)).sum()
        return self.scale * self.lam * total

    def penalty_value(self) -> Tensor | None:
        return self.value() if self._names and self.lam != 0 else None

    def add_penalty_gradient(self, scale: float) -> Tensor | None:
        if not self._names or self.lam == 0:
            return None
        params = dict(self.ctx.model.named_parameters())
        ps = [params[n] for n in self._names]
        for p in ps:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        thetas = [p.detach() for p in ps]
        step = torch._foreach_mul(thetas, self._A)  # A * theta
        torch._foreach_sub_(step, self._B)  # - B
        torch._foreach_add_([p.grad for p in ps], step, alpha=2.0 * self.scale * self.lam * scale)
        # sum W (theta - theta*)^2 = sum theta (A theta - B) - sum B theta + C
        torch._foreach_sub_(step, self._B)
        value = torch.stack([torch.dot(t.reshape(-1), d.reshape(-1)) for t, d in zip(thetas, step)]).sum() + self._C
        return self.scale * self.lam * value

    def extra_metrics(self) -> dict:
        return {"importance_bytes": sum(t.nbytes for d in (self.importance, self.anchor) for t in d.values()),
                "penalty_unstable_fraction": self.unstable_fraction}
