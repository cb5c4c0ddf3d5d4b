"""Dark Experience Replay (Buzzega et al. 2020): the memory keeps the logits seen when a sample was stored;
replay matches them with MSE (alpha). DER++ (beta > 0) adds cross-entropy on a second memory batch's labels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from clrun.methods.base import Batch, require
from clrun.methods.er import ER


class DER(ER):
    def __init__(self, buffer_size: int = 200, buffer_policy: str = "reservoir", replay_batch_size: int | None = None,
                 alpha: float = 0.2, beta: float = 0.0):
        require(alpha >= 0 and beta >= 0, f"method.alpha={alpha!r} and method.beta={beta!r} must be >= 0")
        self.beta = float(beta)
        super().__init__(buffer_size, buffer_policy, replay_batch_size, alpha)

    @property
    def name(self) -> str:
        return "derpp" if self.beta > 0 else "der"

    def logits_to_store(self, logits: Tensor) -> Tensor:
        return logits.detach()

    def replay_loss(self, mem_logits: Tensor, mem: Batch) -> Tensor:
        loss = self.alpha * F.mse_loss(mem_logits, mem.stored_logits)
        if self.beta > 0:  # DER++: labels of a second memory batch, its own forward
            x2, y2, ids2, _ = self.buffer.sample(self.replay_batch_size)
            loss = loss + self.beta * self.ctx.ce(self.forward(x2, mem.task), y2, ids2, mem.task)
        return loss
