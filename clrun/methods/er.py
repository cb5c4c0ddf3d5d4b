"""Experience Replay: loss on the new batch + alpha * loss on a batch drawn from the replay memory; every
new batch is then offered to the memory (reservoir or class-balanced)."""

from __future__ import annotations

import torch
from torch import Tensor

from clrun.methods.base import Batch
from clrun.methods.replay import ReplayMethod


class ER(ReplayMethod):
    def __init__(self, buffer_size: int = 200, buffer_policy: str = "reservoir", replay_batch_size: int | None = None,
                 alpha: float = 1.0):
        super().__init__(buffer_size, buffer_policy, replay_batch_size)
        self.alpha = float(alpha)

    def replay_loss(self, mem_logits: Tensor, mem: tuple, batch: Batch) -> Tensor:
        _, y, task_ids, _ = mem
        return self.alpha * self.learner.ce(mem_logits, y, task_ids, batch.task)

    def train_step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        L = self.learner
        L.optimizer.zero_grad(set_to_none=True)
        n = len(batch.y)
        mem = self.buffer.sample(self.replay_batch_size) if len(self.buffer) else None
        # one forward over new and replayed samples together (batch-norm sees one batch, as in the papers)
        x = batch.x if mem is None else torch.cat([batch.x, mem[0]])
        logits = self.forward(x, batch.task)
        new_logits = logits[:n]
        loss = L.ce(new_logits, batch.y, batch.task_ids, batch.task) + L.penalty(batch, new_logits)
        if mem is not None:
            loss = loss + self.replay_loss(logits[n:], mem, batch)
        loss.backward()
        L.after_backward()
        L.optimizer.step()
        self.buffer.add(batch.x, batch.y, batch.task_ids, self.logits_to_store(new_logits))
        return loss.detach(), new_logits.detach()

    def logits_to_store(self, logits: Tensor) -> Tensor | None:
        return None
