"""Several seeds of one configuration trained as one stacked model: N runs in one process, one forward, backward
and optimiser step for all of them per batch.

Each seed's run is built exactly as ``clrun.run.run`` builds it alone (its stream, initial weights, batch order,
replay memory, method), and writes its own run directory. Only the training of a task is shared: the seeds'
Linear weights become slices of stacked tensors [N, ...] (each seed's model keeps them as views, so its
evaluation, checkpoints and method state read its own weights), and a step runs one batched matmul per layer
(``torch.baddbmm``) over the N seeds' batches, and the seeds' data losses are one computation where the primary
offers it (``Method.stacked_data_loss``). The seeds' gradients are views of the stack's too, so every other hook
of the method contract runs per seed, on the seed's own tensors, exactly as alone: its batch order,
``replay``, any other data loss, penalties and loss scale (the seeds' losses are summed, so each seed's gradient is
its own), closed-form penalty gradients (EWC, SI, MAS), frozen entries, gradient transforms (A-GEM) and
``after_step``. SGD, Adam and the like update each entry from its own gradient, so the stacked step is each
seed's.

What stacks: models made of Flatten, Linear and elementwise activations (``model=mlp``); methods and
regularisers that do not route the forward themselves (no ``forward`` or ``inner_batches`` of their own);
``on_nan=stop``; no diagnostics or ``check_step``; SGD, Adam, AdamW, RMSprop or Adagrad. :func:`why_not` says why
a configuration does not, and the launcher then runs its seeds one after the other.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import DictConfig
from torch import Tensor

from clrun import run as run_mod
from clrun.learner import Interrupted, Interval, Learner, non_finite
from clrun.methods.base import Batch, Method, Step
from clrun.models import Backbone
from clrun.run import TrainTask

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.LeakyReLU, nn.GELU)
# the hooks a stacked step cannot call per seed: the stack runs the forward, one step per incoming batch
_ROUTING_HOOKS = ("forward", "inner_batches")
# optimisers that update each entry from its own gradient and state: a step on the stack is each seed's step
_ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad)


def _layers(model: nn.Module) -> list[nn.Module] | None:
    """The model's layers in forward order when it is features -> head of stackable layers, else None."""
    features, head = getattr(model, "features", None), getattr(model, "head", None)
    if not isinstance(features, nn.Sequential) or not isinstance(head, nn.Linear):
        return None
    if type(model).forward is not Backbone.forward:  # a model with a forward of its own may do more than this
        return None
    layers = [*features, head]
    ok = all(isinstance(m, (nn.Linear, nn.Flatten, *ACTIVATIONS)) for m in layers)
    return layers if ok else None


def why_not(learners: Sequence[Learner], diagnostics: bool = False) -> str | None:
    """Why these seeds' runs cannot train as one stacked model (one line), or None when they can."""
    first = learners[0]
    if diagnostics:
        return "diagnostics observe one run's steps"
    for L in learners:
        if L.on_nan != "stop" or L.check_step:
            return "on_nan=skip and check_step=true are per run"
        for m in L.methods:
            if not m.stackable:
                return f"method {m.name} trains each seed's model on its own (Method.stackable is false)"
            own = [h for h in _ROUTING_HOOKS if getattr(type(m), h) is not getattr(Method, h)]
            if own:
                return f"method {m.name} routes the forward itself ({', '.join(own)}), which the stacked model does not"
        if not (torch.equal(L.scenario.task_units, first.scenario.task_units)
                and torch.equal(L.scenario.seen_units, first.scenario.seen_units)):
            return "the seeds' tasks use different output units (their streams split the classes differently)"
        if _layers(L.model) is None:
            return f"model {type(L.model).__name__} is not made of Linear layers and elementwise activations"
        if L.device != first.device or L.batch_size != first.batch_size:
            return "the seeds differ in device or batch size"
    probe = first.optimizer_factory([nn.Parameter(torch.zeros(1))])
    if type(probe) not in _ELEMENTWISE:
        return f"optimizer {type(probe).__name__} is not known to update each weight from its own gradient alone"
    shapes = [[tuple(p.shape) for p in L.model.parameters()] for L in learners]
    if any(s != shapes[0] for s in shapes):
        return "the seeds' models differ in shape"
    return None


class _StackedLinear(torch.autograd.Function):
    """N seeds' Linear layers at once, h [N, B, in] -> [N, B, out], with w [N, out, in] and b [N, out]. Its
    backward computes each gradient as autograd computes it for one seed's ``F.linear`` (the weight's as
    g^T h, not as the transpose of h^T g, which rounds differently), so a stacked seed's gradient is bit for bit
    its gradient alone."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(h, w)
        ctx.has_bias = b is not None
        wt = w.transpose(1, 2)
        return torch.bmm(h, wt) if b is None else torch.baddbmm(b.unsqueeze(1), h, wt)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None]:
        h, w = ctx.saved_tensors
        grad_h = g.bmm(w) if ctx.needs_input_grad[0] else None
        return grad_h, g.transpose(1, 2).bmm(h), g.sum(1) if ctx.has_bias else None


class StackedLinearStack(nn.Module):
    """The seeds' models as one: each Linear's weights stacked to [N, out, in] and [N, out]; the seeds' own
    Linear layers are rebound to views of the stacked tensors, so a step on the stack is a step on each."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        per_seed = [_layers(m) for m in models]
        # ("flatten", None, None) | ("linear", stacked weight, stacked bias or None) | ("act", module, None)
        self.ops: list[tuple[str, object, object]] = []
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        # per seed, (its own parameter, the stacked parameter it is slice k of)
        self.slices: list[list[tuple[nn.Parameter, nn.Parameter]]] = [[] for _ in models]
        for i, layer in enumerate(per_seed[0]):
            if isinstance(layer, nn.Flatten):
                self.ops.append(("flatten", None, None))
            elif isinstance(layer, nn.Linear):
                # [N, out, in], each seed's slice contiguous as its own weight is alone: what a method computes on
                # a seed's model between steps (evaluation, a Fisher) rounds as it does alone (matmuls on a
                # transposed view round differently)
                w = nn.Parameter(torch.stack([layers[i].weight.detach() for layers in per_seed]))
                self.weights.append(w)
                b = None
                if layer.bias is not None:
                    b = nn.Parameter(torch.stack([layers[i].bias.detach() for layers in per_seed]))
                    self.biases.append(b)
                for k, layers in enumerate(per_seed):  # each seed's layer now reads and writes the stack's slice
                    own = layers[i]
                    own.weight = nn.Parameter(w.data[k], requires_grad=own.weight.requires_grad)
                    self.slices[k].append((own.weight, w))
                    if b is not None:
                        own.bias = nn.Parameter(b.data[k], requires_grad=own.bias.requires_grad)
                        self.slices[k].append((own.bias, b))
                self.ops.append(("linear", w, b))
            else:
                self.ops.append(("act", layer, None))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [N, B, ...] -> logits [N, B, units]."""
        h = x
        for kind, op, bias in self.ops:
            if kind == "flatten":
                h = h.flatten(2)
            elif kind == "linear":
                h = _StackedLinear.apply(h, op, bias)
            else:
                h = op(h)
        return h

    def bind_gradients(self) -> None:
        """Each seed's ``.grad`` becomes a view of the stack's: a hook that reads or changes a seed's gradient
        (EWC's closed-form term, A-GEM's projection, a second forward's backward) reads or changes the stack's."""
        for p in self.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for k, slices in enumerate(self.slices):
            for own, stacked in slices:
                own.grad = stacked.grad[k]

    def zero_gradients(self) -> None:
        """Every gradient to zero in place (the seeds' gradients are views of these): what the optimiser's
        ``zero_grad(set_to_none=False)`` does, without its per-call grouping of the tensors, which cost as much as
        a small layer's matmul per step."""
        for p in self.parameters():
            p.grad.zero_()

    def check_bound(self, models: Sequence[nn.Module]) -> None:
        """Raise when a hook replaced a seed's parameters or gradients instead of changing them in place: that
        seed's steps would no longer be the stack's."""
        for k, (model, slices) in enumerate(zip(models, self.slices)):
            params = {id(p) for p in model.parameters()}
            for own, stacked in slices:
                if (id(own) not in params or own.data_ptr() != stacked.data[k].data_ptr() or own.grad is None
                        or own.grad.data_ptr() != stacked.grad[k].data_ptr()):
                    raise RuntimeError("a method replaced a model's parameters or gradient tensors during a task; "
                                       "its seeds cannot train as one stacked model (run them without "
                                       "hydra/launcher=stacked)")


class SeedStack:
    """Trains the same task of N seeds' runs together (their :class:`~clrun.run.TrainTask` requests)."""

    def __init__(self, learners: Sequence[Learner]):
        self.learners = list(learners)
        self.model = StackedLinearStack([L.model for L in self.learners])
        self.optimizer: torch.optim.Optimizer | None = None

    def train_task(self, requests: Sequence[TrainTask | None]) -> list[BaseException | None]:
        """Train every request's task; None stands for a run that has stopped (diverged): its slice is stepped
        along, unused. Per run asking, the Diverged or Interrupted it gets, or None."""
        learners = self.learners
        first = next(q for q in requests if q is not None)
        t = first.task
        outcome: list[BaseException | None] = [None] * len(learners)
        for L in learners:
            L.start_task(t)
        if self.optimizer is None or learners[0].reset_optimizer:
            self.optimizer = learners[0].optimizer_factory(list(self.model.parameters()))
        try:
            self._epochs(requests, first, outcome)
        except Interrupted as err:
            return [err] * len(learners)
        for L, q, err in zip(learners, requests, outcome):
            if q is not None and err is None:
                L.finish_task(t)
        return outcome

    def _epochs(self, requests: Sequence[TrainTask | None], first: TrainTask,
                outcome: list[BaseException | None]) -> None:
        learners, t = self.learners, first.task
        sets = [L.method.training_set(t) for L in learners]
        n = len(sets[0][1])
        if any(len(y) != n for _, y, _ in sets):
            raise ValueError("the seeds' training sets differ in size: they cannot share steps")
        single = [bool((ids == t).all()) for _, _, ids in sets]
        B = learners[0].batch_size
        total = 0 if n == 0 else first.iters if first.iters is not None else first.epochs * -(-n // B)
        ticks = [q.progress(total) for q in requests if q is not None and q.progress]
        # the runs that still log: a stopped one (None) or one that diverged in this task writes nothing more
        logging = [q is not None for q in requests]
        for L in learners:
            L.model.train()
        log_every = learners[0].log_every  # a curve row every log_every steps, as each run alone writes it
        device, N = learners[0].device, len(learners)
        interval = Interval(device, N)
        step, epoch = 0, 0
        self.model.bind_gradients()  # after before_task: a method's own phase there may have reset them
        # the seeds draw rows of one input tensor in its own view (a split shared across seeds): one gather of
        # all seeds' inputs a step, not one each
        shared_x = all(s[0] is sets[0][0] for s in sets) and all(single) and all(
            L.stream.tasks[t].perm is None for L in learners)
        while step < total:
            orders = [torch.randperm(n, generator=L.generator).to(L.device) for L in learners]
            sums = Interval(device, N)
            for s in range(0, n, B):
                if step >= total:
                    break
                for L in learners:
                    if L.stop_requested:
                        raise Interrupted(f"{L.stop_requested} during task {t + 1}")
                rows = [order[s : s + B] for order in orders]
                if shared_x:
                    x = sets[0][0][torch.stack(rows)]  # [N, B, ...]
                    batches = [Batch(x[k], y[r], ids[r], t) for k, ((_, y, ids), r) in enumerate(zip(sets, rows))]
                else:
                    x = None
                    batches = [L.batch_of(*data, r, t, one) for L, data, r, one in zip(learners, sets, rows, single)]
                terms = self._step(batches, x)
                step += 1
                sums.add(*terms)
                if log_every:
                    interval.add(*terms)
                    if step % log_every == 0:
                        for row, q, on in zip(interval.rows(t, epoch, step), requests, logging):
                            if on and q.on_log_row:
                                q.on_log_row(row)
                for tick in ticks:
                    tick(1)
            finite = torch.isfinite(sums.loss).tolist()  # one sync an epoch for all seeds
            for i, (L, q, row) in enumerate(zip(learners, requests, sums.rows(t, epoch, step, kind="epoch"))):
                if not logging[i]:
                    continue
                if not (finite[i] and bool(L._weights_finite())):
                    outcome[i] = non_finite(t, epoch)
                    logging[i] = False
                elif q.on_log_row:
                    q.on_log_row(row)
            epoch += 1
        self.model.check_bound([L.model for L in learners])

    def _step(self, batches: list[Batch], new_x: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
        """One optimiser step for every seed: the learner's step (:meth:`~clrun.learner.Learner.step`) with its
        forward, backward and optimiser step run once for all seeds and its other phases per seed (the seeds'
        losses are summed: each seed's gradient is its own). The log's terms: per seed loss x rows and correct
        predictions ([N] tensors), and the rows of each seed's batch. ``new_x``: the batches' inputs stacked
        [N, B, ...] when they are already (their ``x`` are its slices)."""
        learners = self.learners
        self.model.zero_gradients()
        replayed = [L.method.replay(b) for L, b in zip(learners, batches)]
        sizes = {None if r is None else len(r.y) for r in replayed}
        if len(sizes) > 1:
            raise ValueError("the seeds replay different numbers of samples: they cannot share a step")
        if new_x is None:
            new_x = torch.stack([b.x for b in batches])
        if replayed[0] is not None:  # every seed replays as many rows (checked above)
            new_x = torch.cat([new_x, torch.stack([r.x for r in replayed])], 1)
        logits = self.model(new_x)  # [N, rows, units]
        # one view per seed from one node (indexing each would give every seed's backward a zero-filled copy)
        steps = [Step(b, r, seed_logits) for b, r, seed_logits in zip(batches, replayed, logits.unbind(0))]
        # every row's target and task, stacked once for the data losses and the accuracy
        parts = [batches, *([replayed] if replayed[0] is not None else [])]
        y = torch.cat([torch.stack([b.y for b in part]) for part in parts], 1)
        task_ids = torch.cat([torch.stack([b.task_ids for b in part]) for part in parts], 1)
        # the seeds' data losses in one computation where the primary offers it (the seeds share its settings)
        data = learners[0].method.stacked_data_loss(logits, steps, y, task_ids)
        own = [None] * len(steps) if data is None else data.unbind(0)
        losses = [L.step_loss(st, L.methods, d) for L, st, d in zip(learners, steps, own)]
        # each seed's loss is its data loss (no penalty, no scale): the backward starts from the [N] losses
        plain = data is not None and all(loss is d for loss, d in zip(losses, own))
        (data.sum() if plain else torch.stack(losses).sum()).backward()
        updates = [L.before_update(st, loss, L.methods) for L, st, loss in zip(learners, steps, losses)]
        self.optimizer.step()
        for L, st, (_, frozen) in zip(learners, steps, updates):
            L.after_update(st, frozen, L.methods)
        rows = len(batches[0].y)
        hits = learners[0].hits(logits[:, :rows].detach(), y[:, :rows], task_ids[:, :rows],
                                batches[0].task)  # all seeds at once
        return torch.stack([logged for logged, _ in updates]) * rows, hits, rows


def run_seeds(cfgs: Sequence[DictConfig], out_dirs: Sequence[Path], job_files: Sequence[Mapping[str, str] | None],
              sweep_dir: Path | None = None) -> tuple[list[dict], str | None]:
    """The runs of ``cfgs`` (one configuration, several seeds), each into its own directory, trained as one
    stacked model where they can be; returns their metrics rows and, when they could not be stacked, why (they
    then ran one after the other in this process)."""
    runs = [run_mod._run(cfg, Path(d), files, sweep_dir) for cfg, d, files in zip(cfgs, out_dirs, job_files)]
    rows: list[dict | None] = [None] * len(runs)
    requests: dict[int, TrainTask] = {}
    try:
        for i, steps in enumerate(runs):
            try:
                requests[i] = next(steps)  # the run is built, checked and its untrained model evaluated
            except StopIteration as stop:  # nothing to train (a completed run resumed)
                rows[i] = stop.value
        learners = [q.learner for q in requests.values()]
        tasks = {q.task for q in requests.values()}
        reason = None
        if len(requests) < 2:
            reason = "fewer than two runs to train"
        elif len(tasks) > 1:
            reason = "the runs resume from different tasks"
        else:
            reason = why_not(learners, diagnostics=any(q.learner.observers for q in requests.values()))
        if reason:
            for i, q in requests.items():
                rows[i] = run_mod.drive(runs[i], q)
            return rows, reason  # type: ignore[return-value]
        order = list(requests)
        stack = SeedStack(learners)
        for L in learners:
            L.stacked_seeds = len(learners)
        while requests:
            t0 = time.perf_counter()
            errors = stack.train_task([requests.get(i) for i in order])
            for q in requests.values():  # each run's train_seconds: the stack's time, not its wait to resume
                q.seconds = time.perf_counter() - t0
            for i, err in zip(order, errors):
                if i not in requests:
                    continue
                try:
                    requests[i] = runs[i].throw(err) if err is not None else runs[i].send(None)
                except StopIteration as stop:
                    rows[i] = stop.value
                    del requests[i]
        return rows, None  # type: ignore[return-value]
    finally:
        for steps in runs:
            steps.close()
        gc.collect()

