"""Online-aware Meta-Learning (Javed & White 2019): the network is a representation learning network (RLN, the
first ``rln_layers`` linear layers) under a prediction learning network (PLN, the layers above it). Before the
stream, both are meta-trained: on a trajectory of ``trajectory_tasks`` tasks met one after another
(``steps_per_task`` batches of ``inner_batch`` each), the PLN takes plain SGD steps at ``inner_lr`` online while
the RLN stays fixed; the meta-loss is the error of the PLN so updated on fresh samples of every task of the
trajectory, and Adam at ``meta_lr`` moves the RLN and the PLN's starting point down its gradient. On the stream
the RLN is frozen and only the PLN learns, with the run's own optimiser, one batch at a time.

``first_order``: the inner gradients are constants of the meta-gradient, as in the authors' released regression
code (model/meta_learner.py, MetaLearnerRegression: ``torch.autograd.grad`` without ``create_graph``); false
differentiates through them (their Algorithm 1). ``objective=pretrain`` is the paper's Pre-training baseline:
the same samples, one ordinary Adam step on their pooled error per meta step, no online inner loop.

Meta-training data (``meta_data``): ``pool``, ``meta_functions`` new sine functions drawn from the stream's own
ranges (the paper: 400, none of them in the stream); ``first_tasks``, the first ``meta_tasks`` tasks of the
stream itself (their training samples). metrics.csv states which, and the meta-training time apart.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clrun.methods.base import Method, require
from clrun.streams import SineFunctions

META_DATA = ("pool", "first_tasks")
OBJECTIVES = ("oml", "pretrain")


class OML(Method):
    measures = ("mse",)
    scenarios = ("domain_il", "task_il")
    stackable = False  # meta-trains each seed's model with its own optimiser before the first task

    def __init__(self, rln_layers: int = 6, meta_steps: int = 20000, objective: str = "oml",
                 meta_data: str = "pool", meta_functions: int = 400, meta_tasks: int | None = None,
                 trajectory_tasks: int = 10, steps_per_task: int = 40, inner_batch: int = 32,
                 inner_lr: float = 0.003, meta_lr: float = 1e-4, lr_milestones: list[int] = (1500, 2500, 3500),
                 lr_gamma: float = 0.3, first_order: bool = True):
        require(objective in OBJECTIVES, f"method.objective={objective!r} must be one of {', '.join(OBJECTIVES)}")
        require(meta_data in META_DATA, f"method.meta_data={meta_data!r} must be one of {', '.join(META_DATA)}")
        for key, value in (("rln_layers", rln_layers), ("trajectory_tasks", trajectory_tasks),
                           ("steps_per_task", steps_per_task), ("inner_batch", inner_batch),
                           ("meta_functions", meta_functions)):
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"method.{key}={value!r} must be a positive integer")
        require(isinstance(meta_steps, int) and not isinstance(meta_steps, bool) and meta_steps >= 0,
                f"method.meta_steps={meta_steps!r} must be an integer >= 0 (0: no meta-training)")
        require(meta_data != "first_tasks" or (isinstance(meta_tasks, int) and meta_tasks >= 1),
                f"method.meta_tasks={meta_tasks!r}: meta_data=first_tasks needs the number of the stream's first "
                "tasks to meta-train on (an integer >= 1)")
        require(inner_lr > 0 and meta_lr > 0, f"method.inner_lr={inner_lr} and method.meta_lr={meta_lr} must be > 0")
        self.rln_layers, self.meta_steps, self.objective = rln_layers, meta_steps, objective
        self.meta_data, self.meta_functions, self.meta_tasks = meta_data, meta_functions, meta_tasks
        self.trajectory_tasks, self.steps_per_task, self.inner_batch = trajectory_tasks, steps_per_task, inner_batch
        self.inner_lr, self.meta_lr = float(inner_lr), float(meta_lr)
        self.lr_milestones, self.lr_gamma = [int(m) for m in lr_milestones], float(lr_gamma)
        self.first_order = bool(first_order)
        self.meta_seconds = 0.0
        self.meta_losses: list[float] = []  # the mean meta-loss of each 100 meta steps (metrics: the first and last)

    @property
    def name(self) -> str:
        return "oml" if self.objective == "oml" else "oml_pretrain"

    # ---- the two networks
    def setup(self) -> None:
        model, stream = self.ctx.model, self.ctx.stream
        features = getattr(model, "features", None)
        require(isinstance(features, nn.Sequential) and isinstance(getattr(model, "head", None), nn.Linear)
                and all(isinstance(m, (nn.Flatten, nn.Linear, nn.ReLU)) for m in features),
                f"method={self.name} needs model=mlp (linear and ReLU layers): the RLN is its first rln_layers layers")
        linears = [i for i, m in enumerate(features) if isinstance(m, nn.Linear)]
        require(self.rln_layers <= len(linears),
                f"method.rln_layers={self.rln_layers} leaves no layer of the model's {len(linears) + 1} linear "
                f"layers above the head: use at most {len(linears)} (model.hidden has {len(linears)} layers)")
        cut = linears[self.rln_layers - 1] + 2  # the RLN ends after its last linear layer's ReLU
        self.rln = features[:cut]
        self.pln = [m for m in features[cut:] if isinstance(m, nn.Linear)] + [model.head]
        if self.meta_data == "pool":
            require("ranges" in stream.meta, f"method.meta_data=pool draws new sine functions from the stream's "
                    f"ranges; {stream.name} is not a sine stream: use benchmark=sine or meta_data=first_tasks")
        else:
            require(self.meta_tasks <= len(stream), f"method.meta_tasks={self.meta_tasks} exceeds the stream's "
                    f"{len(stream)} tasks")
        require(self.trajectory_tasks <= self._pool_size(),
                f"method.trajectory_tasks={self.trajectory_tasks} exceeds the {self._pool_size()} tasks it draws from")
        require(self.meta_data == "first_tasks" or self.trajectory_tasks <= len(stream),
                f"method.trajectory_tasks={self.trajectory_tasks}: a trajectory's k-th function takes the stream's "
                f"k-th one-hot place (and output unit in task_il), and the stream has {len(stream)}")
        for p in self.rln.parameters():  # frozen on the stream: the learner's optimiser never sees them
            p.requires_grad_(False)

    def pln_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.pln for p in (layer.weight, layer.bias)]

    def pln_forward(self, h: Tensor, weights: list[Tensor]) -> Tensor:
        """The PLN on representations ``h`` with ``weights`` ([W, b] per layer) in place of its own."""
        n = len(weights) // 2
        for k in range(n):
            h = F.linear(h, weights[2 * k], weights[2 * k + 1])
            if k < n - 1:
                h = F.relu(h)
        return h

    # ---- meta-training, before the first task (a run resumed after it has its result in the checkpoint)
    def before_task(self, task_id: int) -> None:
        if task_id == 0:
            t0 = time.perf_counter()
            self.meta_train()
            self.meta_seconds = time.perf_counter() - t0

    def _pool_size(self) -> int:
        return self.meta_functions if self.meta_data == "pool" else int(self.meta_tasks)

    def meta_train(self) -> None:
        ctx = self.ctx
        g = torch.Generator().manual_seed(ctx.seed * 7919 + 4049)  # its own draws: the stream's stay as they are
        if self.meta_data == "pool":
            r = ctx.stream.meta["ranges"]
            self.pool = SineFunctions.draw(self.meta_functions, len(ctx.stream), g, tuple(r["amplitude"]),
                                           tuple(r["phase"]), tuple(r["x_range"]))
        params = [*self.rln.parameters(), *self.pln_parameters()]
        for p in self.rln.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.meta_lr)
        schedule = torch.optim.lr_scheduler.MultiStepLR(opt, self.lr_milestones, self.lr_gamma)
        window = []  # one trajectory's meta-loss is noisy (its functions' amplitudes): logged as 100-step means
        try:
            for step in range(self.meta_steps):
                loss = self.meta_loss(*self.trajectory(g))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                window.append(loss.detach())
                if len(window) == 100 or step == self.meta_steps - 1:
                    self.meta_losses.append(float(torch.stack(window).mean()))
                    window = []
        finally:
            for p in params:
                p.grad = None
            for p in self.rln.parameters():
                p.requires_grad_(False)

    def trajectory(self, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One meta step's samples: the trajectory, task after task, as [K * steps_per_task, inner_batch, ...]
        (inputs, targets, task ids), and one batch of ``inner_batch`` fresh samples of each of its K tasks."""
        K, S, B = self.trajectory_tasks, self.steps_per_task, self.inner_batch
        chosen = torch.randperm(self._pool_size(), generator=g)[:K]
        x, y, ids = self._samples(chosen, S * B + B, g)  # [K, S*B + B, ...]: the trajectory's, then the remembered
        traj = (x[:, : S * B].reshape(K * S, B, -1), y[:, : S * B].reshape(K * S, B),
                ids[:, None].expand(K, S).reshape(K * S))
        return (*traj, x[:, S * B :].reshape(K * B, -1), y[:, S * B :].reshape(K * B), ids.repeat_interleave(B))

    def _samples(self, chosen: Tensor, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` samples of each chosen task: inputs, targets, and the task id whose output unit they train."""
        ctx = self.ctx
        if self.meta_data == "pool":
            # a function's place in the trajectory is its one-hot (as in their code), and its task id here
            ids = torch.arange(len(chosen))
            x, y = self.pool.sample(chosen, ids, n, g)
        else:  # the stream's own first tasks: their training samples, their one-hot already in the inputs
            tasks = [ctx.stream.tasks[int(t)] for t in chosen]
            picks = [torch.randint(len(t.train_y), (n,), generator=g) for t in tasks]
            x = torch.stack([t.train_x.cpu()[i] for t, i in zip(tasks, picks)])
            y = torch.stack([t.train_y.cpu()[i] for t, i in zip(tasks, picks)])
            ids = chosen
        return x.to(ctx.device), y.to(ctx.device), ids.to(ctx.device)

    def meta_loss(self, x_traj: Tensor, y_traj: Tensor, id_traj: Tensor, x_mem: Tensor, y_mem: Tensor,
                  id_mem: Tensor) -> Tensor:
        """OML's objective for one trajectory: the PLN's error on the remembered samples after its online steps
        on the trajectory (``objective=pretrain``: the pooled error of every sample, no online steps)."""
        weights, values = self.pln_parameters(), self.ctx.scenario.values
        if self.objective == "pretrain":
            x = torch.cat([x_traj.flatten(0, 1), x_mem])
            y = torch.cat([y_traj.flatten(), y_mem])
            ids = torch.cat([id_traj.repeat_interleave(x_traj.shape[1]), id_mem])
            return F.mse_loss(values(self.pln_forward(self.rln(x), weights), ids), y)
        with torch.set_grad_enabled(not self.first_order):  # first order: the trajectory's features are constants
            h_traj = self.rln(x_traj.flatten(0, 1)).view(*x_traj.shape[:2], -1)
        for i in range(len(x_traj)):
            out = values(self.pln_forward(h_traj[i], weights), id_traj[i].expand(len(y_traj[i])))
            grads = torch.autograd.grad(F.mse_loss(out, y_traj[i]), weights, create_graph=not self.first_order)
            weights = [w - self.inner_lr * gw for w, gw in zip(weights, grads)]
        return F.mse_loss(values(self.pln_forward(self.rln(x_mem), weights), id_mem), y_mem)

    # ---- reporting
    def extra_metrics(self) -> dict:
        source = (f"pool of {self.meta_functions} new sine functions" if self.meta_data == "pool"
                  else f"the stream's first {self.meta_tasks} tasks")
        return {"meta_data": source, "meta_steps": self.meta_steps, "meta_train_seconds": self.meta_seconds,
                "meta_loss_first": self.meta_losses[0] if self.meta_losses else float("nan"),
                "meta_loss_last": self.meta_losses[-1] if self.meta_losses else float("nan"),
                "rln_parameters": sum(p.numel() for p in self.rln.parameters()) if hasattr(self, "rln") else 0}

    def state_dict(self) -> dict:
        # the networks are the model's own layers (in the model's checkpoint); the pool is redrawn from the seed
        return {k: v for k, v in self.__dict__.items() if k not in ("ctx", "rln", "pln", "pool")}
