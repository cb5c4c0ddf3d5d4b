"""Joint training, the upper bound (it breaks the CL rules). ``schedule=incremental``: at task t train on the
union of tasks 1..t (van de Ven's "offline"). ``schedule=final``: train nothing until the last task, then on
the union of all tasks (mammoth's joint, which the DER table reports): the same budget as one pass of naive."""

from __future__ import annotations

import torch
from torch import Tensor

from clrun.methods.base import Method, require

SCHEDULES = ("incremental", "final")


class Joint(Method):
    measures = ("accuracy", "mse")  # trains on the data loss alone
    def __init__(self, schedule: str = "incremental"):
        require(schedule in SCHEDULES, f"method.schedule={schedule!r} must be one of {', '.join(SCHEDULES)}")
        self.schedule = schedule

    def training_set(self, task_id: int) -> tuple[Tensor, Tensor, Tensor]:
        if self.schedule == "final" and task_id < len(self.ctx.stream) - 1:
            return tuple(t[:0] for t in Method.training_set(self, task_id))  # type: ignore[return-value]
        parts = [Method.training_set(self, k) for k in range(task_id + 1)]
        return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]
