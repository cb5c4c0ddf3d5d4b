"""Joint training: at task t train on the union of tasks 1..t (the upper bound; it breaks the CL rules)."""

from __future__ import annotations

import torch
from torch import Tensor

from clrun.methods.base import Method


class Joint(Method):
    def training_set(self, task_id: int) -> tuple[Tensor, Tensor, Tensor]:
        parts = [Method.training_set(self, k) for k in range(task_id + 1)]
        return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]
