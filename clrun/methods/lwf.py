"""Learning without Forgetting (Li & Hoiem 2017): distil the previous model's outputs on the new data,
alpha * T^2 * KL(softmax(z_old/T) || softmax(z_new/T)). Task-IL distils each old task's head; class-IL and
domain-IL distil the shared head's previously seen units.

``weighting=by_task`` is van de Ven & Tolias's form: at task t the loss is (1/t) CE + (1 - 1/t) KD, with KD
averaged over the old heads.

``kd_units=seen`` (class-IL): the new model's softmax runs over every unit seen so far, the current task's
included, against the old model's distribution on the old units padded with zeros (van de Ven & Tolias's
code), so distillation also pushes the new classes down on the new data; ``old`` (default) compares the two
models on the old units only. Task- and domain-IL are the same either way.

``warmup_epochs`` > 0 is Li & Hoiem's warm-up (mammoth's ``begin_task``): before each task after the first,
the head's units of the new task are trained alone on its data, the trunk frozen, for that many epochs of
plain SGD at ``warmup_lr``, so the new units do not start from random against a trained trunk.
``train_units`` overrides the scenario's for LwF's cross-entropy (mammoth's LwF spans the classes seen so far
where its protocol spans the whole head).

``kd_mean=units`` averages the distillation's cross-entropy over the units of each softmax as well as over the
batch, dividing it by their number (10 for a 10-way head, every seen unit with ``kd_units=seen``): van de Ven &
Tolias's 2018 ``utils.loss_fn_kd`` took ``(-targets * log_probs).mean()``, the code behind their 2019 permuted-MNIST
table; their later code sums over units (``batch``, the default and the textbook KL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clrun.methods.base import Batch, Method, frozen_copy, require, require_backbone


class LwF(Method):
    def __init__(self, alpha: float = 1.0, temperature: float = 2.0, weighting: str = "constant",
                 kd_units: str = "old", warmup_epochs: int = 0, warmup_lr: float = 0.01,
                 train_units: str | None = None, kd_mean: str = "batch"):
        require(alpha >= 0, f"method.alpha={alpha!r} must be >= 0")
        require(temperature > 0, f"method.temperature={temperature!r} must be > 0")
        require(weighting in ("constant", "by_task"), f"method.weighting={weighting!r} is not allowed; use "
                "constant (CE + alpha KD) or by_task ((1/t) CE + (1 - 1/t) alpha KD, van de Ven & Tolias)")
        self.lam = self.alpha = float(alpha)
        self.temperature = float(temperature)
        require(kd_units in ("old", "seen"), f"method.kd_units={kd_units!r} is not allowed; use old or seen")
        self.weighting = weighting
        self.kd_units = kd_units
        require(isinstance(warmup_epochs, int) and warmup_epochs >= 0,
                f"method.warmup_epochs={warmup_epochs!r} must be an integer >= 0")
        require(warmup_lr > 0, f"method.warmup_lr={warmup_lr!r} must be > 0")
        require(train_units in (None, "seen", "all"),
                f"method.train_units={train_units!r} is not allowed; use null (the scenario's), seen or all")
        self.warmup_epochs, self.warmup_lr, self.train_units = warmup_epochs, float(warmup_lr), train_units
        require(kd_mean in ("batch", "units"), f"method.kd_mean={kd_mean!r} is not allowed; use batch (sum over "
                "units, mean over the batch) or units (mean over both, van de Ven & Tolias's 2018 code)")
        self.kd_mean = kd_mean
        self.old_model: torch.nn.Module | None = None
        self.old_tasks = 0

    def setup(self) -> None:
        ctx = self.ctx
        require(self.train_units != "all" or ctx.scenario.name == "class_il",
                f"method.train_units=all is for class_il (the whole head); scenario={ctx.scenario.name}")
        require(self.train_units is None or ctx.train_units == self.train_units,
                "method.train_units applies to the primary method's cross-entropy; LwF is a regulariser here")
        if self.warmup_epochs:
            require_backbone(self, ctx.model, "method.warmup_epochs trains the head on the trunk's features")

    def before_task(self, task_id: int) -> None:
        if task_id > 0 and self.warmup_epochs:
            self.warm_up_head(task_id)

    def warm_up_head(self, task_id: int) -> None:
        """Train the new task's head units on its data with the trunk frozen and as at evaluation (mammoth's
        begin_task); the other units' rows get no gradient, and plain SGD leaves them as they are."""
        ctx = self.ctx
        model = ctx.model
        units = ctx.scenario.task_units[task_id]

        def head_loss(x: Tensor, local_y: Tensor) -> Tensor:
            with torch.no_grad():
                feats = model.features(x)
            # the task's local labels index its own units, in order
            return F.cross_entropy(model.head(feats)[:, units], local_y.to(feats.device))

        g = torch.Generator().manual_seed(ctx.seed * 15485863 + task_id)  # its own: the batch order stays put
        ctx.fit(task_id, self.warmup_epochs, head_loss, list(model.head.parameters()), self.warmup_lr, g)

    def after_task(self, task_id: int) -> None:
        self.old_model = frozen_copy(self.ctx.model)
        self.old_tasks = task_id + 1

    def unit_groups(self) -> list[Tensor]:
        """Groups of output units whose old distributions are kept: one per old head, or the old shared head."""
        sc = self.ctx.scenario
        if sc.uses_task_id:
            return [sc.task_units[k] for k in range(self.old_tasks)]
        return [sc.seen_units[self.old_tasks - 1]]

    def penalty(self, batch: Batch, logits: Tensor) -> Tensor | None:
        if self.old_model is None or self.alpha == 0:
            return None
        with torch.no_grad():
            old_logits = self.old_model(batch.x)
        T = self.temperature
        total = logits.new_zeros(())
        groups = self.unit_groups()
        sc = self.ctx.scenario
        for units in groups:
            p_old = F.log_softmax(old_logits[:, units] / T, dim=1)
            if self.kd_units == "seen" and not sc.uses_task_id:
                # log of the new softmax over all seen units, read on the old ones (the padded zeros add nothing)
                now = sc.seen_units[batch.task]
                p_new = logits[:, units] / T - torch.logsumexp(logits[:, now] / T, dim=1, keepdim=True)
            else:
                now = units
                p_new = F.log_softmax(logits[:, units] / T, dim=1)
            kd = F.kl_div(p_new, p_old, log_target=True, reduction="batchmean")
            if self.kd_mean == "units":  # the 2018 code's .mean() over the whole matrix: padded zeros count
                kd = kd / now.sum()  # now: a mask over the whole head; a tensor, so no host sync
            total = total + kd
        if self.weighting == "by_task":  # (t - 1) x the mean over old heads; loss_scale then takes 1/t
            total = total * self.old_tasks / len(groups)
        return self.alpha * T * T * total

    def loss_scale(self) -> float:
        # by_task: the penalty carries (t - 1) x KD, so 1/t of the whole step loss is (1/t) CE + (1 - 1/t) KD,
        # primary or regulariser; the learner applies it to every other penalty too
        return 1.0 / (self.old_tasks + 1) if self.weighting == "by_task" else 1.0

    def extra_metrics(self) -> dict:
        return {"snapshot_bytes": sum(p.nbytes for p in self.old_model.parameters()) if self.old_model else 0}
