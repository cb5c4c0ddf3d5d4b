"""L2 anchor: (lam / 2) ||theta - theta*||^2 to the weights at the end of the previous task.

EWC with every weight equally important: the baseline that tells whether EWC's Fisher earns its keep."""

from __future__ import annotations

from torch import Tensor

from clrun.methods.base import Batch, Method, require


class L2Anchor(Method):
    def __init__(self, lam: float = 1.0):
        require(lam >= 0, f"method.lam={lam!r} must be >= 0")
        self.lam = float(lam)  # read by metrics.csv's lam column and by sweeps over `lam`
        self.anchor: list[Tensor] = []  # the weights after the last finished task

    def after_task(self, task_id: int) -> None:
        self.anchor = [p.detach().clone() for p in self.ctx.model.parameters()]

    def penalty(self, batch: Batch, logits: Tensor) -> Tensor | None:
        if not self.anchor:
            return None  # nothing to anchor to during the first task
        params = self.ctx.model.parameters()
        return 0.5 * self.lam * sum(((p - a) ** 2).sum() for p, a in zip(params, self.anchor))

    def extra_metrics(self) -> dict:
        return {"anchor_bytes": sum(a.nbytes for a in self.anchor)}

