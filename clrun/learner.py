"""The learner: model, scenario, optimiser and methods together; the training loop and evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
from torch import Tensor

from clrun.context import Context
from clrun.errors import ConfigError
from clrun.methods.base import Batch, Method, Step
from clrun.streams import Scenario, Stream


class Diverged(RuntimeError):
    """The training loss became NaN or infinite (``on_nan=stop``)."""


def non_finite(task_id: int, epoch: int) -> Diverged:
    """The divergence of ``on_nan=stop``: a non-finite loss or weight at the end of an epoch."""
    return Diverged(f"loss or weights became non-finite in task {task_id + 1}, epoch {epoch + 1} (on_nan=stop); "
                    "lower lr or lam")


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived: the run stops at the next step and writes what it has."""


class Learner:
    """Runs every optimiser step of a run: the methods only contribute to it, through the hooks of
    :class:`~clrun.methods.base.Method` (the sequence is written once, in :meth:`step`)."""

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
        check_step: bool = False,
        skip_limit: float = 0.1,
        log_every: int | None = None,
    ):
        self.device = torch.device(device)
        self.stream = stream
        self.scenario = scenario.to(self.device)
        self.method = method
        self.regularizers = list(regularizers)
        self.methods = [method, *self.regularizers]
        for m in self.methods:
            if stream.measure not in m.measures:
                why = ("it is built for regression streams (benchmark=sine)" if stream.measure == "accuracy" else
                       "its loss or importance needs class probabilities; a regression stream takes the methods "
                       "whose `measures` include mse (docs/configuration.md lists them)")
                raise ConfigError(f"method {m.name} does not support the {stream.measure} stream {stream.name}: {why}")
            if scenario.name not in m.scenarios:
                raise ConfigError(
                    f"method {m.name} does not support scenario={scenario.name}; "
                    f"it supports: {', '.join(m.scenarios)}"
                )
        if self.regularizers and type(method).forward is not Method.forward:
            # a regulariser reads the model as it is (LwF's snapshot, EWC's Fisher); this method routes its inputs
            raise ConfigError(f"regularizers={'+'.join(r.name for r in self.regularizers)} cannot be stacked on "
                              f"method={method.name}: it computes with its own architecture or masks, which the "
                              "regularisers do not see; use it alone")
        self.optimizer_factory = optimizer_factory or (lambda ps: torch.optim.SGD(ps, lr=0.01))
        self.optimizer: torch.optim.Optimizer | None = None
        self.reset_optimizer = reset_optimizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.stop_requested: str | None = None  # set by a signal handler; checked once per step
        self.on_nan = on_nan  # stop: raise Diverged at the epoch's end; skip: drop non-finite steps (syncs)
        self.skip_limit = skip_limit  # on_nan=skip: a task whose skipped share exceeds this has diverged
        self.log_every = log_every or 0  # a log.csv row every this many training steps (0: epoch rows only)
        self.check_step = check_step  # verify each step's gradient against autograd of the logged loss (slow)
        self.ctx = Context(self, model.to(self.device), stream, self.scenario, self.device, seed, batch_size,
                           method.train_units)
        self.observers: list = []  # diagnostics: before_task / after_step / after_task, no say in the loss
        self.stacked_seeds = 1  # runs trained together with this one as one stacked model (clrun.vectorized)
        for m in self.methods:
            m.bind(self.ctx)
        for m in self.methods:
            m.setup()

    # the model, the batch-order generator and the current task live in the context the methods share
    @property
    def model(self) -> nn.Module:
        return self.ctx.model

    @model.setter
    def model(self, model: nn.Module) -> None:
        self.ctx.model = model

    @property
    def generator(self) -> torch.Generator:
        return self.ctx.generator

    @property
    def current_task(self) -> int:
        return self.ctx.current_task

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.ctx.trainable_parameters()

    def task_sample(self, task_id: int, n: int | None = None, per_class: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        return self.ctx.task_sample(task_id, n, per_class)

    def ce(self, logits: Tensor, y: Tensor, task_ids: Tensor, upto: int) -> Tensor:
        return self.ctx.ce(logits, y, task_ids, upto)

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

    # ---- the one training step
    def step(self, batch: Batch, phase: str = "train", methods: list[Method] | None = None,
             optimizer: torch.optim.Optimizer | None = None) -> tuple[Tensor, Tensor]:
        """One optimiser step on ``batch`` with every method's contribution; returns (loss, new logits), both
        detached: the loss is the one whose gradient was applied (before gradient transforms). ``methods`` and
        ``optimizer`` replace the run's for a method's own phase (ctx.fit)."""
        methods = self.methods if methods is None else methods
        primary, optimizer = methods[0], optimizer or self.optimizer
        optimizer.zero_grad(set_to_none=True)
        replayed = primary.replay(batch)
        x = batch.x if replayed is None else torch.cat([batch.x, replayed.x])
        step = Step(batch, replayed, primary.forward(x, batch.task), phase)
        loss = self.step_loss(step, methods)
        loss.backward(retain_graph=self.check_step)
        logged, frozen = self.before_update(step, loss, methods)
        optimizer.step()
        self.after_update(step, frozen, methods)
        return logged, step.new_logits.detach()

    # the step's phases, shared with clrun.vectorized's stacked step (which runs the forward, backward and
    # optimiser step of several runs at once, and these phases per run)
    def step_loss(self, step: Step, methods: list[Method], data_loss: Tensor | None = None) -> Tensor:
        """Contract steps 2-3 after the forward: the primary's data loss (``data_loss`` where it was computed
        already) plus every penalty, times the methods' loss scales (recorded in ``step.scale``)."""
        batch, new_logits = step.batch, step.new_logits
        loss = methods[0].data_loss(step) if data_loss is None else data_loss
        for m in methods:
            p = m.penalty(batch, new_logits)
            if p is not None:
                loss = loss + p
        scale = 1.0
        for m in methods:
            scale *= m.loss_scale()
        step.scale = scale
        return loss * scale if scale != 1.0 else loss

    def before_update(self, step: Step, loss: Tensor, methods: list[Method]
                      ) -> tuple[Tensor, list[tuple[nn.Parameter, Tensor, Tensor]]]:
        """Contract steps 4-5 after ``loss.backward()``: closed-form penalty gradients, frozen entries, gradient
        transforms; returns the logged loss and the frozen entries :meth:`after_update` puts back."""
        graph = loss if self.check_step else None
        logged = loss.detach()
        for m in methods:
            value = m.add_penalty_gradient(step.scale)
            if value is not None:
                logged = logged + step.scale * value
        if graph is not None:
            self._check_gradient(graph, logged, step.scale, methods)
        frozen = self._frozen(methods)
        for p, mask, _ in frozen:
            if p.grad is not None:
                p.grad.masked_fill_(mask, 0.0)
        for m in methods:
            m.transform_gradient(step)
        return logged, frozen

    def after_update(self, step: Step, frozen: list[tuple[nn.Parameter, Tensor, Tensor]],
                     methods: list[Method]) -> None:
        """Contract steps 6-7 after the optimiser's step: frozen entries put back, then every ``after_step``."""
        if frozen:
            with torch.no_grad():  # momentum or weight decay could still move a frozen entry: put it back
                for p, mask, kept in frozen:
                    p.copy_(torch.where(mask, kept, p))
        for m in methods:
            m.after_step(step)

    def _frozen(self, methods: list[Method]) -> list[tuple[nn.Parameter, Tensor, Tensor]]:
        """(parameter, mask, its values now) for every entry a method freezes this step."""
        if all(type(m).frozen is Method.frozen for m in methods):
            return []  # no method freezes anything: skip the parameter lookup on every step
        params = dict(self.model.named_parameters())
        out = []
        for m in methods:
            for name, mask in (m.frozen() or {}).items():
                out.append((params[name], mask, params[name].detach().clone()))
        return out

    def _check_gradient(self, graph: Tensor, logged: Tensor, scale: float, methods: list[Method]) -> None:
        """check_step=true: the gradient about to be applied must be autograd's gradient of the logged loss."""
        params = self.trainable_parameters()
        total = graph
        for m in methods:
            v = m.penalty_value()
            if v is not None:
                total = total + scale * v
        torch.testing.assert_close(total.detach(), logged, rtol=1e-4, atol=1e-5,
                                   msg="check_step: the logged loss is not the loss of the applied terms")
        expected = torch.autograd.grad(total, params, allow_unused=True)
        for (name, p), g in zip([(n, p) for n, p in self.model.named_parameters() if p.requires_grad], expected):
            have = p.grad if p.grad is not None else torch.zeros_like(p)
            want = g if g is not None else torch.zeros_like(p)
            torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, name=name: f"check_step: gradient of {name} differs: {m}")

    # ---- the loop
    def train_task(self, task_id: int, epochs: int = 1, iters: int | None = None,
                   progress: Callable[[int], Callable[[int], None]] | None = None,
                   on_log_row: Callable[[dict], None] | None = None) -> list[dict]:
        """Train task ``task_id`` for ``epochs`` (or exactly ``iters`` steps); returns one log row per epoch.

        ``progress(total_steps)`` may return a callable ticked once per step (a progress bar's update)."""
        self.start_task(task_id)
        self.make_optimizer()
        for o in self.observers:
            o.before_task(task_id)
        rows = self._epochs(task_id, epochs, iters, progress, on_log_row, "train")
        for o in self.observers:  # the model as trained, before a method's after_task may change it
            o.after_task(task_id)
        self.finish_task(task_id)
        return rows

    # a task's lifecycle hooks, shared with clrun.vectorized's stacked training of a task
    def start_task(self, task_id: int) -> None:
        """Task ``task_id`` begins: every method's (primary and regularisers') ``before_task``."""
        self.ctx.current_task = task_id
        for m in self.methods:
            m.before_task(task_id)

    def finish_task(self, task_id: int) -> None:
        """Task ``task_id`` is trained: every method's ``after_task``."""
        for m in self.methods:
            m.after_task(task_id)

    def extra_epochs(self, task_id: int, epochs: int) -> None:
        """More epochs of task ``task_id`` with a fresh optimiser (a method's phase: ctx.train); not logged."""
        self.make_optimizer()
        self._epochs(task_id, epochs, None, None, None, "retrain")

    def _epochs(self, task_id: int, epochs: int, iters: int | None, progress, on_log_row, phase: str) -> list[dict]:
        x_all, y_all, ids_all = self.method.training_set(task_id)
        n = len(y_all)
        steps_per_epoch = -(-n // self.batch_size)
        total = 0 if n == 0 else iters if iters is not None else epochs * steps_per_epoch  # n=0: nothing to train
        tick = progress(total) if progress else None
        rows, step, epoch, skipped_in_task = [], 0, 0, 0
        log_every = self.log_every if phase == "train" else 0
        interval = Interval(self.device)  # the curve: a log row every log_every steps
        single_task = bool((ids_all == task_id).all())  # once per task, not a host sync per step
        self.model.train()
        while step < total:
            order = torch.randperm(n, generator=self.generator).to(self.device)
            sums = Interval(self.device)  # this epoch's loss and accuracy, summed on the device
            for s in range(0, n, self.batch_size):
                if step >= total:
                    break
                if self.stop_requested:
                    raise Interrupted(f"{self.stop_requested} during task {task_id + 1}")
                idx = order[s : s + self.batch_size]
                batch = self.batch_of(x_all, y_all, ids_all, idx, task_id, single_task)
                if self.on_nan == "skip":
                    snapshot = [p.detach().clone() for p in self.model.parameters()]
                weighted, hits, n_rows = self._train_on(batch, phase)
                if self.on_nan == "skip" and not bool(torch.isfinite(weighted) & self._weights_finite()):
                    with torch.no_grad():  # undo the step; its moments may hold NaN too
                        for p, old in zip(self.model.parameters(), snapshot):
                            p.copy_(old)
                    self.optimizer.state.clear()
                    sums.skipped += 1
                    skipped_in_task += 1
                    interval.skipped += 1
                    step += 1
                    if log_every and step % log_every == 0 and on_log_row:
                        on_log_row(interval.row(task_id, epoch, step))
                    continue
                if phase == "train":
                    for o in self.observers:
                        o.after_step()
                sums.add(weighted, hits, n_rows)  # accumulated on-device: no host sync per step
                step += 1
                if log_every:
                    interval.add(weighted, hits, n_rows)
                    if step % log_every == 0 and on_log_row:  # one host sync per log_every steps
                        on_log_row(interval.row(task_id, epoch, step))
                if tick:
                    tick(1)
            if self.on_nan == "stop" and not bool(torch.isfinite(sums.loss) & self._weights_finite()):  # one sync
                raise non_finite(task_id, epoch)
            row = sums.row(task_id, epoch, step, kind="epoch")
            rows.append(row)
            if on_log_row:
                on_log_row(row)
            epoch += 1
        if self.on_nan == "skip" and total and skipped_in_task > self.skip_limit * total:
            raise Diverged(f"{skipped_in_task} of {total} steps of task {task_id + 1} were skipped for a non-finite "
                           f"loss or weights, more than skip_limit={self.skip_limit:g} of them (on_nan=skip); "
                           "lower lr or lam")
        return rows

    def batch_of(self, x_all: Tensor, y_all: Tensor, ids_all: Tensor, idx: Tensor, task_id: int,
                 single_task: bool) -> Batch:
        """The batch of training-set rows ``idx`` in their tasks' views (one task's view when they all are)."""
        ids = ids_all[idx]
        x = self.stream.tasks[task_id].inputs(x_all[idx]) if single_task else self.ctx.view(x_all[idx], ids)
        return Batch(x, y_all[idx], ids, task_id)

    def hits(self, logits: Tensor, y: Tensor, task_ids: Tensor, task: int) -> Tensor:
        """The measure summed over a batch's rows: correct predictions, or squared errors on a regression stream
        (a 0-d tensor on the device: no host sync); for several seeds' batches stacked ([N, B, ...]), one sum each."""
        return self.scenario.score(self.scenario.masked(logits, task_ids, task), y, task_ids)

    def _train_on(self, batch: Batch, phase: str) -> tuple[Tensor, Tensor, int]:
        """One step on an incoming batch, or one per batch the primary's ``inner_batches`` yields; returns the
        loss summed over the rows stepped on, their correct predictions and their number (the log's terms)."""
        inner = self.method.inner_batches(batch)
        weighted, hits, n_rows = None, None, 0
        for b in [batch] if inner is None else inner:
            loss, logits = self.step(b, phase)
            w, h = loss * len(b.y), self.hits(logits, b.y, b.task_ids, b.task)
            weighted, hits = (w, h) if weighted is None else (weighted + w, hits + h)
            n_rows += len(b.y)
        if weighted is None:  # nothing was yielded: no step taken
            weighted, hits = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        return weighted, hits, n_rows

    def _weights_finite(self) -> Tensor:
        """A 0-d bool tensor, on the device: no host sync until the caller reads it."""
        # a NaN or inf anywhere makes its parameter's sum, and the sum of the sums, non-finite: one reduction each
        return torch.isfinite(torch.stack([p.detach().sum() for p in self.model.parameters()]).sum())

    def fit(self, task_id: int, epochs: int, loss_fn: Callable[[Tensor, Tensor], Tensor],
            parameters: list[nn.Parameter], lr: float, generator: torch.Generator, eval_mode: bool) -> None:
        """A method's own phase (ctx.fit): :meth:`step` with ``loss_fn`` as the whole objective and plain SGD
        on ``parameters`` alone."""
        task = self.stream.tasks[task_id]
        objective, optimizer = _Objective(loss_fn), torch.optim.SGD(parameters, lr=lr)
        n = len(task.train_y)
        was_training = self.model.training
        self.model.train(not eval_mode)
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(task.train_x.device)
            for s in range(0, n, self.batch_size):
                idx = order[s : s + self.batch_size]
                batch = Batch(task.inputs(task.train_x[idx]), task.train_y[idx], task.train_y[idx], task_id)
                self.step(batch, "fit", [objective], optimizer)
        for p in parameters:
            p.grad = None
        self.model.train(was_training)

    # ---- evaluation
    @torch.inference_mode()
    def evaluate(self, task_id: int, upto: int) -> float:
        """Accuracy (or a regression stream's mean squared error) on task ``task_id``'s evaluation split, with
        class-IL candidates of tasks 0..upto."""
        task = self.stream.tasks[task_id]
        was_training = self.model.training
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for s in range(0, len(task.eval_y), self.eval_batch_size):
            x = task.inputs(task.eval_x[s : s + self.eval_batch_size])
            y = self.scenario.targets(task.eval_y[s : s + self.eval_batch_size], task_id)
            ids = torch.full((len(y),), task_id, dtype=torch.long, device=self.device)
            total += self.scenario.score(self.method.predict(x, task_id, upto), y, ids)
        self.model.train(was_training)
        return float(total) / len(task.eval_y)

    def evaluate_all(self, trained_upto: int) -> list[float]:
        """One row of R: every task, seen or not (task j competes with the classes of tasks 0..max(i, j))."""
        return [self.evaluate(j, max(trained_upto, j)) for j in range(len(self.stream))]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class _Objective(Method):
    """A phase's whole objective as the only method of its steps (ctx.fit): ``loss_fn(inputs, local labels)``
    computes its own outputs, so the step's forward is empty."""

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor]):
        self.loss_fn = loss_fn

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        return x.new_zeros(len(x), 0)

    def data_loss(self, step: Step) -> Tensor:
        return self.loss_fn(step.batch.x, step.batch.y)


class Interval:
    """Loss and accuracy summed on the device over a stretch of steps: an epoch, or the steps since the last
    curve row (log_every). With ``seeds``, one sum per stacked seed (clrun.vectorized): [seeds] tensors."""

    def __init__(self, device: torch.device, seeds: int | None = None):
        self.device = device
        self.shape = () if seeds is None else (seeds,)
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros(self.shape, device=self.device)
        # float64: exact for counts of correct predictions, and a regression stream's sums of squared errors
        self.correct = torch.zeros(self.shape, device=self.device, dtype=torch.float64)
        self.seen, self.steps, self.skipped, self.t0 = 0, 0, 0, time.perf_counter()

    def add(self, weighted_loss: Tensor, hits: Tensor, n: int) -> None:
        self.loss += weighted_loss
        self.correct += hits
        self.seen += n
        self.steps += 1

    def row(self, task_id: int, epoch: int, step: int, kind: str = "interval") -> dict:
        """A log.csv row; with no step kept (all skipped), no loss or accuracy to log."""
        row = self._row(self.loss, self.correct, task_id, epoch, step, kind)
        self.reset()
        return row

    def rows(self, task_id: int, epoch: int, step: int, kind: str = "interval") -> list[dict]:
        """One log.csv row per stacked seed."""
        rows = [self._row(loss, correct, task_id, epoch, step, kind) for loss, correct in zip(self.loss.cpu(),
                                                                                            self.correct.cpu())]
        self.reset()
        return rows

    def _row(self, loss: Tensor, correct: Tensor, task_id: int, epoch: int, step: int, kind: str) -> dict:
        seen = self.seen
        return {"task": task_id + 1, "epoch": epoch + 1, "kind": kind, "step": step, "steps": self.steps,
                "loss": float(loss) / seen if seen else math.nan,
                "train_acc": float(correct) / seen if seen else math.nan,
                "seconds": time.perf_counter() - self.t0, "skipped_steps": self.skipped}
