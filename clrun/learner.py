"""The learner: model, scenario, optimiser and methods together; the training loop and evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clrun.buffer import per_class_first
from clrun.methods.base import Batch, Method
from clrun.streams import ConfigError, Scenario, Stream


class Diverged(RuntimeError):
    """The training loss became NaN or infinite (``on_nan=stop``)."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived: the run stops at the next step and writes what it has."""


class Learner:
    def __init__(
        self,
        model: nn.Module,
        stream: Stream,
        scenario: Scenario,
        method: Method,
        regularizers: Iterable[Method] = (),
        optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 128,
        eval_batch_size: int = 4096,
        seed: int = 0,
        on_nan: str = "stop",
        reset_optimizer: bool = True,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.stream = stream
        self.scenario = scenario.to(self.device)
        self.method = method
        self.regularizers = list(regularizers)
        self.methods = [method, *self.regularizers]
        for m in self.methods:
            if scenario.name not in m.scenarios:
                raise ConfigError(
                    f"method {type(m).__name__} does not support scenario={scenario.name}; "
                    f"it supports: {', '.join(m.scenarios)}"
                )
        self.optimizer_factory = optimizer_factory or (lambda ps: torch.optim.SGD(ps, lr=0.01))
        self.optimizer: torch.optim.Optimizer | None = None
        self.reset_optimizer = reset_optimizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.stop_requested: str | None = None  # set by a signal handler; checked once per step
        self.on_nan = on_nan  # stop: raise Diverged at the epoch's end; skip: drop non-finite steps (syncs)
        self.generator = torch.Generator().manual_seed(seed)  # batch order: independent of model init
        self.current_task = -1
        self.observers: list = []  # diagnostics: before_task / after_step / after_task, no say in the loss
        for m in self.methods:
            m.bind(self)
        for m in self.methods:
            m.setup()

    # ---- objective pieces shared by every method
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self) -> None:
        """A fresh optimiser per task (default), or one kept across tasks (``reset_optimizer=false``: its
        moments carry over, as in some published protocols), extended by parameters that appeared since."""
        if self.optimizer is None or self.reset_optimizer:
            self.optimizer = self.optimizer_factory(self.trainable_parameters())
            return
        known = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        new = [p for p in self.trainable_parameters() if id(p) not in known]
        if new:
            self.optimizer.add_param_group({"params": new})

    def ce(self, logits: Tensor, y: Tensor, task_ids: Tensor, upto: int) -> Tensor:
        """Cross-entropy over each sample's candidate units (the primary method's ``train_units``, if set)."""
        return F.cross_entropy(self.scenario.train_masked(logits, task_ids, upto, self.method.train_units), y)

    def penalty(self, batch: Batch, logits: Tensor) -> Tensor | float:
        total: Tensor | float = 0.0
        for m in self.methods:
            p = m.penalty(batch, logits)
            if p is not None:
                total = total + p
        return total

    def objective(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(CE on the batch + every method's penalty, raw logits)."""
        logits = self.method.forward(batch.x, batch.task)
        return self.ce(logits, batch.y, batch.task_ids, batch.task) + self.penalty(batch, logits), logits

    def after_backward(self) -> None:
        for m in self.methods:
            m.after_backward()

    # ---- the loop
    def train_task(self, task_id: int, epochs: int = 1, iters: int | None = None,
                   progress: Callable[[int], Callable[[int], None]] | None = None,
                   on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
        """Train task ``task_id`` for ``epochs`` (or exactly ``iters`` steps); returns one log row per epoch.

        ``progress(total_steps)`` may return a callable ticked once per step (a progress bar's update)."""
        self.current_task = task_id
        for m in self.methods:
            m.before_task(task_id)
        self.make_optimizer()
        for o in self.observers:
            o.before_task(task_id)
        x_all, y_all, ids_all = self.method.training_set(task_id)
        task = self.stream.tasks[task_id]
        n = len(y_all)
        steps_per_epoch = -(-n // self.batch_size)
        total = 0 if n == 0 else iters if iters is not None else epochs * steps_per_epoch  # n=0: nothing to train
        tick = progress(total) if progress else None
        rows, step, epoch = [], 0, 0
        single_task = bool((ids_all == task_id).all())  # once per task, not a host sync per step
        self.model.train()
        while step < total:
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=self.generator).to(self.device)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            seen, epoch_steps, skipped = 0, 0, 0
            for s in range(0, n, self.batch_size):
                if step >= total:
                    break
                if self.stop_requested:
                    raise Interrupted(f"{self.stop_requested} during task {task_id + 1}")
                idx = order[s : s + self.batch_size]
                ids = ids_all[idx]
                x = task.inputs(x_all[idx]) if single_task else self.view(x_all[idx], ids)
                batch = Batch(x, y_all[idx], ids, task_id)
                if self.on_nan == "skip":
                    snapshot = [p.detach().clone() for p in self.model.parameters()]
                loss, logits = self.method.train_step(batch)
                if self.on_nan == "skip" and not bool(torch.isfinite(loss)):
                    with torch.no_grad():  # undo the step; its moments may hold NaN too
                        for p, old in zip(self.model.parameters(), snapshot):
                            p.copy_(old)
                    self.optimizer.state.clear()
                    skipped += 1
                    step += 1
                    continue
                for m in self.methods:
                    m.after_step()
                for o in self.observers:
                    o.after_step()
                # accumulate on-device: no host sync per step
                loss_sum += loss * len(idx)
                pred = self.scenario.masked(logits, ids, task_id).argmax(1)
                correct += (pred == batch.y).sum()
                seen += len(idx)
                step += 1
                epoch_steps += 1
                if tick:
                    tick(1)
            if self.on_nan == "stop" and not bool(torch.isfinite(loss_sum)):  # one host sync per epoch
                raise Diverged(f"loss became non-finite in task {task_id + 1}, epoch {epoch + 1} (on_nan=stop); "
                               "lower lr or lam")
            row = {"task": task_id + 1, "epoch": epoch + 1, "steps": epoch_steps,
                   "loss": float(loss_sum) / max(seen, 1), "train_acc": int(correct) / max(seen, 1),
                   "seconds": time.perf_counter() - t0, "skipped_steps": skipped}
            rows.append(row)
            if on_epoch:
                on_epoch(row)
            epoch += 1
        for o in self.observers:  # the model as trained, before a method's after_task may change it
            o.after_task(task_id)
        for m in self.methods:
            m.after_task(task_id)
        return rows

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

    # ---- evaluation
    @torch.inference_mode()
    def evaluate(self, task_id: int, upto: int) -> float:
        """Accuracy on task ``task_id``'s evaluation split, with class-IL candidates of tasks 0..upto."""
        task = self.stream.tasks[task_id]
        was_training = self.model.training
        self.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for s in range(0, len(task.eval_y), self.eval_batch_size):
            x = task.inputs(task.eval_x[s : s + self.eval_batch_size])
            y = self.scenario.targets(task.eval_y[s : s + self.eval_batch_size], task_id)
            correct += (self.method.predict(x, task_id, upto).argmax(1) == y).sum()
        self.model.train(was_training)
        return int(correct) / len(task.eval_y)

    def evaluate_all(self, trained_upto: int) -> list[float]:
        """One row of R: every task, seen or not (task j competes with the classes of tasks 0..max(i, j))."""
        return [self.evaluate(j, max(trained_upto, j)) for j in range(len(self.stream))]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
