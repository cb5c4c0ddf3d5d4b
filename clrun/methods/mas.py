"""MAS (Aljundi et al. 2018): importance E_x |d(0.5 ||f(x)||^2)/d theta|, computed without labels; the
same quadratic anchor as EWC. By default (``online``, as the paper) the importances of the tasks add up and the
anchor is the last task's weights. MAS's importance is dense (every weight gets a share), so with one anchor
per task (``online=false``) the penalty's minimum is the importance-weighted mean of all past optima, and a
strong penalty drags the model away from the latest tasks' optima: on the default stream that forgets more
than naive fine-tuning."""

from __future__ import annotations

from clrun.importance import mas_importance
from clrun.methods.base import require
from clrun.methods.quadratic import QuadraticPenalty


class MAS(QuadraticPenalty):
    def __init__(self, lam: float = 0.1, samples: int | None = 2000, online: bool = True, gamma: float = 1.0,
                 chunk: int = 16, backend: str = "auto", abs_batch: int | None = None):
        require(samples is None or samples >= 1, f"method.samples={samples!r} must be a positive integer or null")
        require(abs_batch is None or abs_batch >= 1,
                f"method.abs_batch={abs_batch!r} must be a positive integer or null")
        super().__init__(lam, online=online, gamma=gamma)
        self.samples, self.chunk, self.backend, self.abs_batch = samples, chunk, backend, abs_batch

    def after_task(self, task_id: int) -> None:
        L = self.ctx
        if task_id == len(L.stream) - 1:
            return  # no later task would be anchored by it
        x, _labels_unused, ids = L.task_sample(task_id, self.samples)
        mask = L.train_candidates(ids, task_id)  # the units the training loss spans (train_units=all: every one)
        self.consolidate(mas_importance(L.model, x, mask, self.chunk, self.backend, self.abs_batch))
