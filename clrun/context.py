"""What a method may touch: the model, the scenario, the stream's data, the current task, and a few services
of the learner (a task's samples, the training cross-entropy, a gradient, extra training phases). Methods get
this, never the learner itself, so the learner stays free to change how it trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn as nn
from torch import Tensor

from clrun.buffer import per_class_first
from clrun.streams import Scenario, Stream


class Runner(Protocol):
    """What the context needs of whoever runs the steps (the learner), and nothing more."""

    optimizer: torch.optim.Optimizer | None
    optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer]

    def extra_epochs(self, task_id: int, epochs: int) -> None: ...

    def fit(self, task_id: int, epochs: int, loss_fn: Callable[[Tensor, Tensor], Tensor],
            parameters: list[nn.Parameter], lr: float, generator: torch.Generator, eval_mode: bool) -> None: ...


class Context:
    """The narrow view of a run that a :class:`~clrun.methods.base.Method` works with (``self.ctx``).

    Attributes a method may read: ``model`` (a method that builds its own architecture may also replace it in
    ``setup``), ``scenario``, ``stream``, ``device``, ``seed``, ``batch_size``, ``current_task`` (-1 before
    the first task), ``generator`` (the batch-order generator: draw from it only where the draw is part of the
    batch order, as replay picks are)."""

    def __init__(self, learner: Runner, model: nn.Module, stream: Stream, scenario: Scenario,
                 device: torch.device, seed: int, batch_size: int, train_units: str | None):
        self._learner = learner
        self.model = model
        self.stream = stream
        self.scenario = scenario
        self.device = device
        self.seed = seed
        self.batch_size = batch_size
        self.train_units = train_units  # the primary method's class-IL loss units (None: the scenario's)
        self.generator = torch.Generator().manual_seed(seed)  # batch order: independent of model init
        self.current_task = -1

    # ---- the optimiser, read-only
    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimiser of the current task (None before the first); read its type and settings, never step it."""
        return self._learner.optimizer

    def plain_sgd_lr(self) -> float | None:
        """The learning rate when every step is plain SGD (lr x gradient: no momentum, no weight decay), else None."""
        opt = self._optimizer()
        if type(opt) is not torch.optim.SGD:
            return None
        group = opt.param_groups[0]
        if group.get("momentum", 0) or group.get("weight_decay", 0) or len(opt.param_groups) > 1:
            return None
        return float(group["lr"])

    def sgd_stability_limit(self) -> tuple[float, float] | None:
        """(lr, the largest lr x curvature a quadratic stays stable under) for SGD: 2, or 2 (1 + momentum) with
        heavy-ball momentum; None for other optimisers, whose steps are not lr x gradient."""
        opt = self._optimizer()
        if type(opt) is not torch.optim.SGD:
            return None
        group = opt.param_groups[0]
        if group.get("nesterov", False):
            return None
        return float(group["lr"]), 2.0 * (1.0 + float(group.get("momentum", 0) or 0))

    def optimizer_name(self) -> str:
        return type(self._optimizer()).__name__

    def _optimizer(self) -> torch.optim.Optimizer:
        """The current task's optimiser, or before the first task one the run's factory builds on a stand-in."""
        return self.optimizer or self._learner.optimizer_factory([nn.Parameter(torch.zeros(1))])

    # ---- data and losses
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def task_sample(self, task_id: int, n: int | None = None, per_class: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Up to ``n`` random training samples of one task: (inputs in the task's view, unit targets, task ids).
        ``per_class``: the ``n`` are split equally over the task's classes (random within each class), as
        Chaudhry et al.'s episodic memories keep 25 samples of each class of a task.

        Drawn with their own generator, so estimating importance does not shift the batch order."""
        task = self.stream.tasks[task_id]
        total = len(task.train_y)
        if n is not None and n < total:
            g = torch.Generator().manual_seed(self.seed * 7919 + task_id)
            order = torch.randperm(total, generator=g)
            idx = (order[per_class_first(task.train_y.cpu()[order], n)] if per_class else order[:n]).to(self.device)
        else:
            idx = torch.arange(total, device=self.device)
        ids = torch.full((len(idx),), task_id, dtype=torch.long, device=self.device)
        return task.inputs(task.train_x[idx]), self.scenario.targets(task.train_y[idx], task_id), ids

    def view(self, x: Tensor, ids: Tensor) -> Tensor:
        """Apply each sample's task view (permutation) to stored inputs that mix tasks (joint, exemplars)."""
        tasks = self.stream.tasks
        if all(t.perm is None for t in tasks):
            return x
        out = x.clone()
        for t in ids.unique().tolist():
            sel = ids == t
            out[sel] = tasks[t].inputs(x[sel])
        return out

    def ce(self, logits: Tensor, y: Tensor, task_ids: Tensor, upto: int) -> Tensor:
        """The data loss: cross-entropy over each sample's candidate units (the primary method's
        ``train_units``, if set); on a regression stream, the squared error at each sample's output unit."""
        return self.scenario.loss(logits, y, task_ids, upto, self.train_units)

    def row_ce(self, logits: Tensor, y: Tensor, task_ids: Tensor, upto: int) -> Tensor | None:
        """Each row's term of :meth:`ce` (logits [..., units], y and task_ids [...]): a batch's mean of them is its
        ``ce``, with the same gradient; None where there are no row terms to average (a regression stream). For
        :meth:`~clrun.methods.base.Method.stacked_data_loss`."""
        return self.scenario.row_losses(logits, y, task_ids, upto, self.train_units)

    def train_candidates(self, task_ids: Tensor, upto: int) -> Tensor:
        """Bool [B, n_outputs]: the units the training loss spans for each sample (what importance estimates
        that stand for the training loss must use too)."""
        return self.scenario.train_candidates(task_ids, upto, self.train_units)

    def gradient(self, loss: Tensor) -> Tensor:
        """d loss / d (trainable parameters), flattened; leaves every ``.grad`` as it is."""
        params = self.trainable_parameters()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])

    # ---- extra training phases, through the learner's one step
    def train(self, task_id: int, epochs: int) -> None:
        """``epochs`` more passes over the method's training set of ``task_id`` with the learner's own step, a
        fresh optimiser and every hook (PackNet's retraining after pruning). Not logged."""
        self._learner.extra_epochs(task_id, epochs)

    def fit(self, task_id: int, epochs: int, loss_fn: Callable[[Tensor, Tensor], Tensor],
            parameters: list[nn.Parameter], lr: float, generator: torch.Generator, eval_mode: bool = True) -> None:
        """``epochs`` passes of plain SGD at ``lr`` on ``parameters`` alone over task ``task_id``'s data, the
        loss ``loss_fn(inputs in the task's view, the task's local labels)``, through the learner's step with
        that loss as its only contribution (LwF's head warm-up). ``eval_mode``: the model as at evaluation
        (batch-norm statistics untouched)."""
        self._learner.fit(task_id, epochs, loss_fn, parameters, lr, generator, eval_mode)
