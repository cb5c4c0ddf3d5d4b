"""Meta-Experience Replay (Riemer et al. 2019): experience replay whose steps are wrapped in Reptile meta-updates,
so that the gradients of the new example and of the remembered ones are pushed to agree (to first order,
Reptile's update adds lr^2 x the gradient of their dot products).

For each incoming example, in the order of its batch (the authors' ``observe`` steps through the batch's
examples one by one; mammoth runs MER at batch size 1):

    theta_A0 = theta
    repeat batches_per_example times:
        theta_W0 = theta
        draw replay_batch_size samples from the memory; step on them and the example (below)
        theta = theta_W0 + beta (theta - theta_W0)       # within-batch Reptile
    theta = theta_A0 + gamma (theta - theta_A0)          # across-batch Reptile
    offer the example to the reservoir memory

``variant=riemer`` (the authors' meralg1.py, MER Algorithm 1 of the paper): one optimiser step per sample,
the example first, then the memory samples, drawn with replacement. ``variant=mammoth`` (mammoth's mer.py,
which the DER paper ran): one step on the memory samples and the example together (their mean loss), the
samples drawn without replacement. With beta = gamma = 1 and one batch per example, mammoth's MER is experience
replay at batch size 1 over the example and its memory batch; that is what its Seq-MNIST best_args run.

Every step goes through the learner (regularisers, frozen entries, gradient checks) by ``inner_batches``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from clrun.methods.base import Batch, require
from clrun.methods.replay import ReplayMethod

VARIANTS = ("riemer", "mammoth")


class MER(ReplayMethod):
    def __init__(self, buffer_size: int = 200, buffer_policy: str = "reservoir", replay_batch_size: int | None = 10,
                 beta: float = 0.03, gamma: float = 1.0, batches_per_example: int = 1, variant: str = "riemer"):
        require(variant in VARIANTS, f"method.variant={variant!r} is not allowed; use one of {', '.join(VARIANTS)}")
        self.variant = variant  # before the checks of ReplayMethod, whose messages name the method
        super().__init__(buffer_size, buffer_policy, replay_batch_size)
        require(0 < float(beta) <= 1, f"method.beta={beta!r} must be in (0, 1]: the within-batch Reptile step size")
        require(0 < float(gamma) <= 1, f"method.gamma={gamma!r} must be in (0, 1]: the across-batch Reptile step size")
        require(int(batches_per_example) >= 1, f"method.batches_per_example={batches_per_example!r} must be >= 1")
        self.beta, self.gamma = float(beta), float(gamma)
        self.batches_per_example = int(batches_per_example)

    @property
    def name(self) -> str:
        return "mer" if self.variant == "riemer" else f"mer_{self.variant}"

    def inner_batches(self, batch: Batch) -> Iterator[Batch]:
        params = self.ctx.trainable_parameters()
        for i in range(len(batch.y)):
            example = Batch(batch.x[i : i + 1], batch.y[i : i + 1], batch.task_ids[i : i + 1], batch.task)
            across = _snapshot(params, self.gamma)
            for _ in range(self.batches_per_example):
                within = _snapshot(params, self.beta)
                yield from self._steps(example)
                _reptile(params, within, self.beta)
            _reptile(params, across, self.gamma)
            self.buffer.add(example.x, example.y, example.task_ids)

    def _steps(self, example: Batch) -> Iterator[Batch]:
        if not len(self.buffer):
            yield example
            return
        if self.variant == "mammoth":  # memory first, the example last: one batch, one step on the mean loss
            x, y, ids, _ = self.buffer.sample(self.replay_batch_size)
            yield Batch(torch.cat([x, example.x]), torch.cat([y, example.y]), torch.cat([ids, example.task_ids]),
                        example.task)
            return
        yield example
        x, y, ids, _ = self.buffer.sample(self.replay_batch_size, replace=True)
        for j in range(len(y)):  # the memory samples one step each, as meralg1 does
            yield Batch(x[j : j + 1], y[j : j + 1], ids[j : j + 1], example.task)

    def extra_metrics(self) -> dict:
        row = super().extra_metrics()
        per_batch = 1 + self.replay_batch_size if self.variant == "riemer" else 1  # optimiser steps per inner batch
        row["steps_per_example"] = self.batches_per_example * per_batch
        return row


def _snapshot(params: list[Tensor], step: float) -> list[Tensor] | None:
    """Where an interpolation of ``step`` starts from; None where it is the identity (step 1: no copy needed)."""
    return None if step == 1.0 else [p.detach().clone() for p in params]


@torch.no_grad()
def _reptile(params: list[Tensor], start: list[Tensor] | None, step: float) -> None:
    """theta = start + step (theta - start): Reptile's interpolation from where the inner steps began."""
    if start is None:
        return
    for p, s in zip(params, start):
        p.lerp_(s, 1.0 - step)
