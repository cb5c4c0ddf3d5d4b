"""The method contract. A method is one subclass of :class:`Method` (in clrun or in your own package) plus
one YAML whose ``_target_`` names it. docs/writing-a-method.md is the page to read before writing one.

The learner owns the training step; a method only contributes to it. Per step, for the primary method P and
every regulariser R (the list M = [P, *R], in that order):

1. ``P.replay(batch)``: samples trained alongside the new batch (one forward over both), or None;
2. ``P.forward(x, task)``: logits of new + replayed inputs;
3. loss = prod(m.loss_scale() for m in M) * (P.data_loss(step) + sum(m.penalty(batch, new logits) for m in M)),
   then ``loss.backward()`` (seeds trained as one stacked model may get their data losses at once from
   ``P.stacked_data_loss``, an optional speed-up that must equal ``data_loss``);
4. ``m.add_penalty_gradient(scale)`` for m in M: penalties whose gradient a method adds in closed form
   (EWC, MAS, SI); each returns its value, which the logged loss includes;
5. entries ``m.frozen()`` names get a zero gradient; ``m.transform_gradient(step)`` for m in M (A-GEM's and
   GEM's projections, SI's clipping, SupSup's score scaling);
6. the optimiser steps; frozen entries are put back exactly as they were;
7. ``m.after_step(step)`` for m in M (fill a replay memory, accumulate SI's path integral).

The loss logged in log.csv is the loss whose gradient was applied (before step 5's transforms).
``P.inner_batches(batch)`` may replace the one step on an incoming batch by steps on the batches it yields,
each through steps 1-7 (MER's inner steps, with its Reptile interpolations between them).
Lifecycle: ``setup()`` once before the untrained model is evaluated; ``before_task(t)`` / ``after_task(t)``
around each task; ``training_set(t)`` is what the task trains on; evaluation calls ``P.predict``.
A method reads and changes the run only through ``self.ctx`` (:class:`clrun.context.Context`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from clrun.errors import ConfigError
from clrun.streams import SCENARIOS

if TYPE_CHECKING:
    from clrun.context import Context


@dataclass
class Batch:
    x: Tensor  # inputs, already in their task's view
    y: Tensor  # output-unit targets
    task_ids: Tensor  # task of each sample (replay mixes tasks)
    task: int  # the task being trained
    stored_logits: Tensor | None = None  # replayed samples: the logits kept with them (DER), if any


@dataclass
class Step:
    """One optimiser step as the hooks see it: the new batch, what was replayed with it, and the logits of
    both (one forward, new rows first)."""

    batch: Batch
    replayed: Batch | None
    logits: Tensor
    phase: str = "train"  # train | retrain (ctx.train's extra epochs) | fit (a method's own objective: ctx.fit)
    scale: float = 1.0  # the product of every method's loss_scale, set before backward
    scratch: dict = field(default_factory=dict)  # a method's own per-step values, from one hook to the next

    @property
    def n_new(self) -> int:
        return len(self.batch.y)

    # computed once a step: several hooks of every method read them
    @cached_property
    def new_logits(self) -> Tensor:
        return self.logits[: self.n_new]

    @cached_property
    def replay_logits(self) -> Tensor:
        return self.logits[self.n_new :]


class Method:
    """Plain fine-tuning; every other method overrides the hooks it needs."""

    scenarios: tuple[str, ...] = SCENARIOS  # scenarios the method can serve
    measures: tuple[str, ...] = ("accuracy",)  # streams it can serve: classification, and "mse" for regression
    stackable: bool = True  # False: its seeds never train as one stacked model (clrun.vectorized)
    lam: float | None = None  # regularisation strength, where the method has one (metrics.csv's lam)
    buffer_size: int | None = None  # replay memory in samples, where the method has one (metrics.csv's buffer)
    train_units: str | None = None  # class-IL units its cross-entropy spans (seen | all); None: the scenario's
    ctx: Context

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def bind(self, ctx: Context) -> None:
        self.ctx = ctx

    # ---- lifecycle
    def setup(self) -> None:
        """Once, before the untrained model is evaluated: check the model, grow or replace it (ctx.model)."""

    def before_task(self, task_id: int) -> None:
        pass

    def after_task(self, task_id: int) -> None:
        pass

    # ---- what is trained on (primary method only)
    def training_set(self, task_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """(inputs, unit targets, task ids) of what is trained on during task ``task_id``."""
        ctx = self.ctx
        task = ctx.stream.tasks[task_id]
        ids = torch.full((len(task.train_y),), task_id, dtype=torch.long, device=task.train_y.device)
        return task.train_x, ctx.scenario.targets(task.train_y, task_id), ids

    def inner_batches(self, batch: Batch) -> Iterator[Batch] | None:
        """The batches to step on for one incoming ``batch``, yielded one at a time (the code between two
        yields runs after the learner's step on the first: MER's Reptile interpolations); None: one step on
        ``batch`` itself."""
        return None

    def replay(self, batch: Batch) -> Batch | None:
        """Samples to train on alongside ``batch``, in their task's view (one forward over both), or None."""
        return None

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        """Raw logits over all output units (architectures that route by task override this)."""
        return self.ctx.model(x)

    def data_loss(self, step: Step) -> Tensor:
        """The primary's loss on the data: cross-entropy on the new rows (replay methods add theirs)."""
        b = step.batch
        return self.ctx.ce(step.new_logits, b.y, b.task_ids, b.task)

    def stacked_data_loss(self, logits: Tensor, steps: Sequence[Step], y: Tensor, task_ids: Tensor) -> Tensor | None:
        """Optional, for speed only: the data losses of several seeds' steps at once when the seeds train as one
        stacked model (clrun.vectorized), [N]. ``logits`` [N, rows, units] stacks the steps' logits
        (``steps[k].logits`` is ``logits[k]``), ``y`` and ``task_ids`` [N, rows] their rows' targets and tasks (the
        new batch's rows, then the replayed ones); ``self`` is the first seed's method, whose settings every seed
        shares, and anything else of a seed's is read from its step. Entry k must be ``data_loss(steps[k])`` with
        the same gradient. None: each seed's ``data_loss`` runs on its own (always correct)."""
        if type(self).data_loss is not Method.data_loss:
            return None  # a subclass's own data loss
        n = steps[0].n_new
        rows = self.ctx.row_ce(logits[:, :n], y[:, :n], task_ids[:, :n], steps[0].batch.task)
        return None if rows is None else rows.mean(1)

    # ---- what every method (primary or regulariser) may add
    def penalty(self, batch: Batch, logits: Tensor) -> Tensor | None:
        """A loss term differentiated by autograd, from the new batch and its logits (LwF's distillation)."""
        return None

    def loss_scale(self) -> float:
        """Factor on the whole step loss, data and every penalty (LwF's by_task weighting)."""
        return 1.0

    def add_penalty_gradient(self, scale: float) -> Tensor | None:
        """For a penalty whose gradient the method computes itself: add ``scale`` x its gradient to the
        parameters' ``.grad`` and return its value (unscaled, detached) for the log; None when there is none."""
        return None

    def penalty_value(self) -> Tensor | None:
        """The closed-form penalty of :meth:`add_penalty_gradient` as a differentiable function of the
        parameters (``check_step=true`` compares its autograd gradient with the one added)."""
        return None

    def frozen(self) -> dict[str, Tensor] | None:
        """{parameter name: bool mask} of entries this step must leave exactly as they are (zero gradient, and
        restored after the optimiser's step, whatever its momentum or weight decay)."""
        return None

    def transform_gradient(self, step: Step) -> None:
        """Change the complete gradient in place before the optimiser uses it (projections, clipping)."""

    def after_step(self, step: Step) -> None:
        """After the optimiser's step (store samples, accumulate path integrals)."""

    # ---- evaluation
    def predict(self, x: Tensor, task_id: int, upto: int) -> Tensor:
        """Scores over all output units, non-candidates masked; argmax is the prediction."""
        ids = torch.full((len(x),), task_id, dtype=torch.long, device=x.device)
        return self.ctx.scenario.masked(self.forward(x, task_id), ids, upto)

    # ---- checkpoints
    def state_dict(self) -> dict:
        """Everything the method has learnt (importances, snapshots, buffers, masks): its attributes but the
        context, encoded by :mod:`clrun.checkpoint` into tensors and plain containers."""
        return {k: v for k, v in self.__dict__.items() if k != "ctx"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)

    # ---- reporting
    def extra_metrics(self) -> dict:
        """Extra columns for metrics.csv (buffer bytes, stored bits, ...)."""
        return {}

    def outputs(self) -> dict[str, dict[str, np.ndarray]]:
        """Arrays for the run directory, ``{name: {key: array}}``: each name is written as ``name.npz`` after
        every task (DGR's generated samples, which ``replay_samples.png`` draws)."""
        return {}


def frozen_copy(module: nn.Module) -> nn.Module:
    """A snapshot of ``module`` in eval mode with no gradients: the previous model of LwF, iCaRL and DGR."""
    copied = copy.deepcopy(module).eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def require(condition: bool, message: str) -> None:
    """Raise the configuration error a user sees before training when a method's settings cannot work."""
    if not condition:
        raise ConfigError(message)


def require_backbone(method: Method, model: nn.Module, what: str) -> None:
    """Refuse a model without a ``features`` trunk and a ``head`` for a method that needs both."""
    from clrun.models import Backbone

    require(isinstance(model, Backbone), f"method={method.name} needs a model with a features trunk and a head "
            f"({what}); {type(model).__name__} has none: use model=mlp, cnn or resnet18")
