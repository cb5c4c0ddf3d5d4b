"""Deep Generative Replay (Shin et al. 2017) as van de Ven & Tolias run it ("Three scenarios", 2019): a
variational autoencoder learns the inputs of every task so far, and its samples stand in for stored data.

While task t (1-based) is trained, each step draws ``replay_batch_size`` inputs from the generator frozen after
task t - 1, labels them with the classifier frozen then, and trains on (1/t) CE(new batch) + (1 - 1/t) replay
loss. The replay loss per scenario, as in the authors' train.py / encoder.py:

- task-IL: one term per old task, on that task's head, averaged over the old tasks. ``task_il_samples=shared``
  scores the same ``replay_batch_size`` samples on every old head (the authors' later train.py);
  ``per_head`` draws each old head its own ceil(replay_batch_size / old tasks) samples (their 2018 train.py,
  commit e17b714, behind the permuted MNIST table): every head sees fewer replayed inputs a step;
- domain-IL: the shared head;
- class-IL: the old model's prediction over the old classes, the new model's softmax over every class seen
  so far (the current task's included; the old distribution padded with zeros).

``distill=false`` (DGR) trains on the old model's hard labels (its argmax), ``distill=true`` (DGR+distill) on its
softened outputs at ``temperature``, T^2 KL(p_old^T || p_new^T); ``kd_mean=units`` divides that by the width of
the new softmax, as their 2018 code's ``loss_fn_kd`` did (see LwF).

After the classifier's task, the generator trains for as many steps as the classifier took (``iters`` to
change that) on the task's data plus as many samples of its frozen predecessor, weighted (1/t) and (1 - 1/t),
with its own Adam kept across tasks (the authors' ``lr_gen``, betas 0.9/0.999). Its draws (batch order, noise,
replayed samples) come from its own seeded generator: the classifier's batch order is the other methods'.
No input is stored: ``buffer_bytes`` is 0; ``generator_parameters`` and ``generator_seconds`` go to metrics.csv.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clrun.importance import linear_layers
from clrun.methods.base import Batch, Method, Step, frozen_copy, require
from clrun.models import VAE

LIKELIHOODS = ("auto", "bernoulli", "gaussian")
TASK_IL_SAMPLES = ("shared", "per_head")
SAMPLES_SHOWN = 16  # generated inputs kept per task for replay_samples.png


class DGR(Method):
    def __init__(self, distill: bool = False, temperature: float = 2.0, kd_mean: str = "batch",
                 hidden: list[int] | None = None, z_dim: int = 100, likelihood: str = "auto", lr: float = 0.001,
                 iters: int | None = None, replay_batch_size: int | None = None, task_il_samples: str = "shared"):
        require(temperature > 0, f"method.temperature={temperature!r} must be > 0")
        require(kd_mean in ("batch", "units"), f"method.kd_mean={kd_mean!r} is not allowed; use batch (sum over "
                "units, mean over the batch) or units (mean over both, van de Ven & Tolias's 2018 code)")
        require(hidden is None or (len(hidden) > 0 and all(int(h) > 0 for h in hidden)),
                f"method.hidden={hidden!r} must be a list of positive widths, or null (the classifier's own)")
        require(isinstance(z_dim, int) and z_dim >= 1, f"method.z_dim={z_dim!r} must be an integer >= 1")
        require(likelihood in LIKELIHOODS, f"method.likelihood={likelihood!r} is not allowed; use one of "
                f"{', '.join(LIKELIHOODS)}")
        require(lr > 0, f"method.lr={lr!r} must be > 0")
        require(iters is None or (isinstance(iters, int) and iters >= 1),
                f"method.iters={iters!r} must be an integer >= 1, or null (as many steps as the classifier)")
        require(replay_batch_size is None or replay_batch_size >= 1,
                f"method.replay_batch_size={replay_batch_size!r} must be >= 1 or null (= batch_size)")
        require(task_il_samples in TASK_IL_SAMPLES, f"method.task_il_samples={task_il_samples!r} is not allowed; use "
                "shared (the same replayed samples on every old head) or per_head (each old head its own share)")
        self.distill, self.temperature, self.kd_mean = bool(distill), float(temperature), kd_mean
        self.task_il_samples = task_il_samples
        self.hidden = None if hidden is None else [int(h) for h in hidden]
        self.z_dim, self.likelihood, self.lr, self.iters = z_dim, likelihood, float(lr), iters
        self._replay_batch_size = replay_batch_size
        self.generator: VAE | None = None
        self.old_generator: VAE | None = None
        self.old_model: nn.Module | None = None
        self.optimizer_state: dict | None = None  # the generator's Adam, kept across tasks (and checkpoints)
        self.steps_this_task = 0
        self.generator_seconds = 0.0
        self.samples: list[Tensor] = []  # per task: SAMPLES_SHOWN generated inputs, for the picture
        self.sample_units: list[Tensor] = []  # and the unit the classifier gives each

    @property
    def name(self) -> str:
        return "dgr_distill" if self.distill else "dgr"

    def setup(self) -> None:
        ctx = self.ctx
        hidden = self.hidden
        if hidden is None:  # the classifier's fully connected layers, mirrored (the authors' generator)
            linear = list((linear_layers(ctx.model) or {}).values())
            require(len(linear) >= 2, f"method.hidden=null mirrors an MLP's hidden layers; "
                    f"{type(ctx.model).__name__} is not one: set method.hidden=[...]")
            hidden = [m.out_features for m in linear[:-1]]
        likelihood = self.likelihood
        if likelihood == "auto":  # Bernoulli pixels where the inputs allow it, as the authors' [0, 1] MNIST
            x = ctx.stream.tasks[0].train_x
            likelihood = "bernoulli" if bool((x.min() >= 0) & (x.max() <= 1)) else "gaussian"
        elif likelihood == "bernoulli":
            lo = min(float(t.train_x.min()) for t in ctx.stream.tasks)
            hi = max(float(t.train_x.max()) for t in ctx.stream.tasks)
            require(lo >= 0 and hi <= 1, f"method.likelihood=bernoulli needs inputs in [0, 1], these span "
                    f"[{lo:.3g}, {hi:.3g}]: set data.normalize=false, or method.likelihood=gaussian")
        with torch.random.fork_rng(devices=[]):  # its own initialisation: the run's random state stays put
            torch.manual_seed(ctx.seed * 7727 + 11)
            self.generator = VAE(ctx.stream.in_shape, hidden, self.z_dim, likelihood).to(ctx.device)
        self.rng = torch.Generator().manual_seed(ctx.seed * 104729 + 17)  # noise, replay draws, its batches

    @property
    def replay_batch_size(self) -> int:
        return self._replay_batch_size or self.ctx.batch_size

    def before_task(self, task_id: int) -> None:
        self.steps_this_task = 0

    # ---- the classifier's step
    def replay(self, batch: Batch) -> Batch | None:
        if self.old_model is None:
            return None
        n, old_tasks = self.replay_batch_size, batch.task
        per_head = self.per_head
        if per_head and old_tasks > 1:  # each old head its own share, rounded up (the authors' ceil)
            n = -(-n // old_tasks)
        with torch.no_grad():
            x = self.old_generator.sample(n * old_tasks if per_head else n, self.rng)
            old_logits = self.old_model(x)
        if per_head:  # each sample stands for the old task whose head labels it
            ids = torch.arange(old_tasks, device=x.device).repeat_interleave(n)
            labels = self.ctx.scenario.masked(old_logits, ids, old_tasks - 1).argmax(1)
        else:
            ids = torch.full((len(x),), batch.task, dtype=torch.long, device=x.device)
            labels = old_logits.argmax(1)
        return Batch(x, labels, ids, batch.task, stored_logits=old_logits)

    @property
    def per_head(self) -> bool:
        """Whether each old head replays its own samples (task-IL with task_il_samples=per_head)."""
        return self.task_il_samples == "per_head" and self.ctx.scenario.uses_task_id

    def unit_groups(self, task: int, ids: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(the new model's units, the old model's units) per replay term at task ``task`` (0-based), as bool
        masks [B, n_outputs]: one per old head in task-IL, one otherwise. With per-head samples, one group whose
        rows each span their own head: the heads' shares are equal, so its mean is the mean of the heads' terms."""
        sc, ctx = self.ctx.scenario, self.ctx
        if self.per_head:
            units = sc.candidates(ids, task)  # each row's own head
            return [(units, units)]
        if sc.uses_task_id:
            return [(u, u) for u in (sc.task_units[k].expand(len(ids), -1) for k in range(task))]
        new = ctx.train_candidates(ids, task)  # class-IL: every class seen so far (or the whole head)
        old = sc.candidates(ids, task - 1)  # class-IL: the classes of the old tasks; domain-IL: all
        return [(new, old)]

    def replay_loss(self, logits: Tensor, replayed: Batch) -> Tensor:
        low = torch.finfo(logits.dtype).min / 2
        total = logits.new_zeros(())
        groups = self.unit_groups(replayed.task, replayed.task_ids)
        for new, old in groups:
            new_logits = logits.masked_fill(~new, low)
            old_logits = replayed.stored_logits.masked_fill(~old, low)
            if not self.distill:  # the old model's label: its most likely unit among the old ones
                total = total + F.cross_entropy(new_logits, old_logits.argmax(1))
                continue
            T = self.temperature
            p_old = F.softmax(old_logits / T, dim=1)  # zero on units the old model did not answer with
            log_p_new = F.log_softmax(new_logits / T, dim=1)
            kd = (torch.xlogy(p_old, p_old) - p_old * log_p_new).sum(1).mean() * T * T
            if self.kd_mean == "units":
                kd = kd / new[0].sum()
            total = total + kd
        return total / len(groups)

    def data_loss(self, step: Step) -> Tensor:
        b = step.batch
        current = self.ctx.ce(step.new_logits, b.y, b.task_ids, b.task)
        if step.replayed is None:
            return current
        rnt = 1.0 / (b.task + 1)  # the new task's share: 1/t, t counted from 1
        return rnt * current + (1 - rnt) * self.replay_loss(step.replay_logits, step.replayed)

    def after_step(self, step: Step) -> None:
        if step.phase == "train":
            self.steps_this_task += 1

    # ---- the generator's phase, after the classifier's
    def after_task(self, task_id: int) -> None:
        t0 = time.perf_counter()
        self.train_generator(task_id, self.iters or self.steps_this_task)
        self.generator_seconds += time.perf_counter() - t0
        self.old_generator = frozen_copy(self.generator)
        self.old_model = frozen_copy(self.ctx.model)
        with torch.no_grad():  # what task t + 1 replays, and the units the classifier gives it
            x = self.generator.sample(SAMPLES_SHOWN, torch.Generator().manual_seed(self.ctx.seed * 31 + task_id))
            seen = self.ctx.scenario.seen_units[task_id]  # domain-IL: every unit
            units = self.old_model(x).masked_fill(~seen, -math.inf).argmax(1)
        self.samples.append(x.cpu())
        self.sample_units.append(units.cpu())

    def train_generator(self, task_id: int, steps: int) -> None:
        task = self.ctx.stream.tasks[task_id]
        gen = self.generator
        optimizer = torch.optim.Adam(gen.parameters(), lr=self.lr, betas=(0.9, 0.999))
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        n, bs = len(task.train_y), self.ctx.batch_size
        rnt = 1.0 / (task_id + 1)
        gen.train()
        done = 0
        while done < steps:
            order = torch.randperm(n, generator=self.rng).to(task.train_x.device)
            for s in range(0, n, bs):
                if done >= steps:
                    break
                loss = gen.loss(task.inputs(task.train_x[order[s : s + bs]]), self.rng)
                if self.old_generator is not None:
                    with torch.no_grad():
                        x_old = self.old_generator.sample(self.replay_batch_size, self.rng)
                    loss = rnt * loss + (1 - rnt) * gen.loss(x_old, self.rng)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
        self.optimizer_state = optimizer.state_dict()

    # ---- reporting
    def extra_metrics(self) -> dict:
        gen = self.generator
        kept = [m for m in (self.old_generator, self.old_model) if m is not None]
        return {"buffer_bytes": 0,
                "generator_parameters": sum(p.numel() for p in gen.parameters()) if gen is not None else 0,
                "generator_seconds": self.generator_seconds,
                "snapshot_bytes": sum(p.nbytes for m in kept for p in m.parameters())}

    def outputs(self) -> dict[str, dict[str, np.ndarray]]:
        if not self.samples:
            return {}
        return {"replay_samples": {"samples": torch.stack(self.samples).numpy(),
                                   "units": torch.stack(self.sample_units).numpy()}}

