"""Experience Replay: loss on the new batch + alpha * loss on a batch drawn from the replay memory; every
new batch is then offered to the memory (reservoir or class-balanced)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from clrun.methods.base import Batch, Step
from clrun.methods.replay import ReplayMethod


class ER(ReplayMethod):
    measures = ("accuracy", "mse")  # the data loss on new and replayed rows (ctx.ce: squared error on regression)
    def __init__(self, buffer_size: int = 200, buffer_policy: str = "reservoir", replay_batch_size: int | None = None,
                 alpha: float = 1.0):
        super().__init__(buffer_size, buffer_policy, replay_batch_size)
        self.alpha = float(alpha)

    def replay(self, batch: Batch) -> Batch | None:
        # forwarded with the new batch (batch-norm sees one batch, as in the papers)
        if not len(self.buffer):
            return None
        x, y, ids, logits = self.buffer.sample(self.replay_batch_size)
        return Batch(x, y, ids, batch.task, logits)

    def data_loss(self, step: Step) -> Tensor:
        loss = super().data_loss(step)
        if step.replayed is not None:
            loss = loss + self.replay_loss(step.replay_logits, step.replayed)
        return loss

    def stacked_data_loss(self, logits: Tensor, steps: Sequence[Step], y: Tensor, task_ids: Tensor) -> Tensor | None:
        if type(self).data_loss is not ER.data_loss or type(self).replay_loss is not ER.replay_loss:
            return None  # a subclass's own loss (DER's on stored logits)
        # the new and replayed rows' cross-entropies in one computation (one upto: the task trained)
        rows = self.ctx.row_ce(logits, y, task_ids, steps[0].batch.task)
        if rows is None:
            return None
        n = steps[0].n_new
        loss = rows[:, :n].mean(1)
        return loss + self.alpha * rows[:, n:].mean(1) if steps[0].replayed is not None else loss

    def replay_loss(self, mem_logits: Tensor, mem: Batch) -> Tensor:
        return self.alpha * self.ctx.ce(mem_logits, mem.y, mem.task_ids, mem.task)

    def after_step(self, step: Step) -> None:
        b = step.batch
        self.buffer.add(b.x, b.y, b.task_ids, self.logits_to_store(step.new_logits))

    def logits_to_store(self, logits: Tensor) -> Tensor | None:
        return None
