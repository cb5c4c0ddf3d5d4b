"""iCaRL (Rebuffi et al. 2017): exemplars chosen by herding (buffer // classes seen per class), training on
new data + exemplars with binary cross-entropy whose old-class targets are the previous model's sigmoid
outputs (distillation; ``temperature`` T > 1 softens them to sigmoid(z_old / T), as van de Ven's code does with
T = 2), and a nearest-class-mean classifier on L2-normalised features for prediction.

Exemplars are replayed either as a batch drawn from them at every step (``replay: batch``) or, as iCaRL's
paper and mammoth's ``icarl_replay`` do, merged into the task's training set (``replay: merged``), so each
exemplar is seen once per epoch among the new samples.

``merged_inputs: uint8_truncated`` reproduces a bug, not a method: mammoth's 2020 iCaRL (the DER paper's code)
casts the stored [0, 1] MNIST exemplars to uint8 without scaling them by 255 before merging them, so they
train as near-black images (every pixel below 1 becomes 0) while the class means still use the true ones.
It exists to measure what that did to the paper's numbers; ``stored`` (default) merges them as they are."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clrun.methods.base import Batch, Step, frozen_copy, require, require_backbone
from clrun.methods.replay import ReplayMethod

REPLAY_MODES = ("batch", "merged")
LOSS_UNITS = ("sum", "mean")
CLASS_MEANS = ("normalized", "mammoth", "raw")
MERGED_INPUTS = ("stored", "uint8_truncated")


def herding(features: Tensor, m: int) -> Tensor:
    """Indices of ``m`` samples whose running mean best tracks the mean of ``features`` [N, D], in order
    of choice (so the first k are the best k-exemplar set)."""
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    for k in range(1, min(m, len(features)) + 1):
        # distance of the mean after adding each candidate; one vectorised pass per exemplar
        dist = (mu - (running + features) / k).norm(dim=1).masked_fill(~available, float("inf"))
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += features[i]
    return torch.tensor(chosen, dtype=torch.long, device=features.device)


class ICaRL(ReplayMethod):
    scenarios = ("class_il", "task_il")

    def __init__(self, buffer_size: int = 200, replay_batch_size: int | None = None, herding_batch: int = 2048,
                 replay: str = "batch", loss_units: str = "sum", class_means: str = "normalized",
                 temperature: float = 1.0, merged_inputs: str = "stored"):
        require(replay in REPLAY_MODES,
                f"method.replay={replay!r} is not allowed; use one of {', '.join(REPLAY_MODES)}")
        require(loss_units in LOSS_UNITS,
                f"method.loss_units={loss_units!r} is not allowed; use one of {', '.join(LOSS_UNITS)}")
        require(class_means in CLASS_MEANS,
                f"method.class_means={class_means!r} is not allowed; use one of {', '.join(CLASS_MEANS)}")
        require(temperature > 0, f"method.temperature={temperature!r} must be > 0")
        require(merged_inputs in MERGED_INPUTS,
                f"method.merged_inputs={merged_inputs!r} is not allowed; use one of {', '.join(MERGED_INPUTS)}")
        require(merged_inputs == "stored" or replay == "merged",
                "method.merged_inputs applies to merged exemplars; set method.replay=merged")
        self.merged_inputs = merged_inputs
        super().__init__(buffer_size, "reservoir", replay_batch_size)
        self.temperature = float(temperature)
        self.herding_batch = herding_batch
        self.replay_mode = replay
        self.loss_units = loss_units
        self.class_mean_kind = class_means
        self.old_model: torch.nn.Module | None = None
        # unit -> (stored inputs, before the task's view, in herding order; task ids)
        self.exemplars: dict[int, tuple[Tensor, Tensor]] = {}
        self.class_means: Tensor | None = None  # [n_outputs, D], NaN rows for classes without exemplars

    def setup(self) -> None:
        # exemplar sets replace the generic buffer; herding and the class means need the trunk's features
        require_backbone(self, self.ctx.model, "herding and nearest-mean-of-exemplars use its features")

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        model = self.ctx.model
        was = model.training
        model.eval()
        out = torch.cat([model.features(x[s : s + self.herding_batch]) for s in range(0, len(x), self.herding_batch)])
        model.train(was)
        return F.normalize(out, dim=1) if self.class_mean_kind == "normalized" else out

    def _memory(self, viewed: bool = True) -> tuple[Tensor, Tensor, Tensor] | None:
        if not self.exemplars:
            return None
        units = list(self.exemplars)
        xs = torch.cat([self.exemplars[u][0] for u in units])
        ys = torch.cat([torch.full((len(self.exemplars[u][0]),), u, dtype=torch.long) for u in units])
        ids = torch.cat([self.exemplars[u][1] for u in units])
        return (self.ctx.view(xs, ids) if viewed else xs), ys.to(xs.device), ids

    def training_set(self, task_id: int) -> tuple[Tensor, Tensor, Tensor]:
        x, y, ids = super().training_set(task_id)
        memory = self._memory(viewed=False) if self.replay_mode == "merged" else None
        if memory is None:
            return x, y, ids
        if self.merged_inputs == "uint8_truncated":  # mammoth 2020: .type(torch.uint8) of [0, 1] floats, read / 255
            mx = memory[0]
            require(bool(mx.min() >= 0) and bool(mx.max() <= 1), "method.merged_inputs=uint8_truncated reproduces "
                    "a cast of [0, 1] pixels; these inputs are standardised: set data.normalize=false")
            memory = (mx.to(torch.uint8).to(mx.dtype) / 255, *memory[1:])
        return tuple(torch.cat([a, b.to(a.device)]) for a, b in zip((x, y, ids), memory))  # type: ignore[return-value]

    def replay(self, batch: Batch) -> Batch | None:
        if self._mem is None:
            return None
        mx, my, mids = self._mem
        pick = torch.randperm(len(my), generator=self.ctx.generator)[: self.replay_batch_size].to(mx.device)
        return Batch(mx[pick], my[pick], mids[pick], batch.task)

    def data_loss(self, step: Step) -> Tensor:
        """Binary cross-entropy over new + replayed rows; the old units' targets are the previous model's."""
        sc, task = self.ctx.scenario, step.batch.task
        x, y, ids = step.batch.x, step.batch.y, step.batch.task_ids
        if step.replayed is not None:
            r = step.replayed
            x, y, ids = torch.cat([x, r.x]), torch.cat([y, r.y]), torch.cat([ids, r.task_ids])
        target = F.one_hot(y, sc.n_outputs).float()
        mask = sc.candidates(ids, task)
        if self.old_model is not None:  # distillation: old units learn the old model's sigmoid outputs
            with torch.no_grad():  # softened by the temperature (van de Ven's code: sigmoid(scores / T), T = 2)
                old = torch.sigmoid(self.old_model(x) / self.temperature)
            old_units = sc.seen_units[task - 1]
            target[:, old_units] = old[:, old_units]
            # every sample distils every old unit: in task-IL a sample's candidates are its own task's units,
            # which would multiply the old heads' distillation by zero
            mask = mask | old_units
        mask = mask.float()
        bce = F.binary_cross_entropy_with_logits(step.logits, target, reduction="none")
        # per sample, the BCE summed over its candidate units, or averaged over them (iCaRL's and mammoth's code)
        per_sample = len(y) if self.loss_units == "sum" else mask.sum()
        return (bce * mask).sum() / per_sample

    def before_task(self, task_id: int) -> None:
        self._mem = self._memory() if self.replay_mode == "batch" else None  # merged: training_set holds them

    def after_task(self, task_id: int) -> None:
        L = self.ctx
        self.old_model = frozen_copy(L.model)
        x, y, ids = L.task_sample(task_id)  # every sample, in the task's order: row i is train_x[i] viewed
        stored = L.stream.tasks[task_id].train_x
        new_units = y.unique().tolist()
        per_class = max(1, self.buffer_size // (len(self.exemplars) + len(new_units)))
        for u in self.exemplars:  # herding order means the first m are the best m
            ex, ex_ids = self.exemplars[u]
            self.exemplars[u] = (ex[:per_class], ex_ids[:per_class])
        for u in new_units:
            chosen = herding(self.embed(x[y == u]), per_class)
            self.exemplars[u] = (stored[(y == u).to(stored.device)][chosen.to(stored.device)], ids[y == u][chosen])
        feats = self.embed(self._memory()[0])
        means = torch.full((L.scenario.n_outputs, feats.shape[1]), float("nan"), device=feats.device)
        start = 0
        for u in self.exemplars:
            f = feats[start : start + len(self.exemplars[u][0])]
            start += len(f)
            if self.class_mean_kind == "normalized":
                means[u] = F.normalize(f.mean(0), dim=0)
            elif self.class_mean_kind == "raw":  # mammoth's 2020 compute_class_means: one mean of raw features
                means[u] = f.mean(0)
            else:  # mammoth's later compute_class_means: batch means averaged pairwise, later batches weigh more
                means[u] = f[: L.batch_size].mean(0)
                for b in range(L.batch_size, len(f), L.batch_size):
                    means[u] = (means[u] + f[b : b + L.batch_size].mean(0)) / 2
        self.class_means = means

    def predict(self, x: Tensor, task_id: int, upto: int) -> Tensor:
        if self.class_means is None:  # before any exemplar exists: the network's own outputs
            return super().predict(x, task_id, upto)
        f = self.embed(x)
        scores = -torch.cdist(f, torch.nan_to_num(self.class_means, nan=1e3))  # classes without a mean lose
        ids = torch.full((len(x),), task_id, dtype=torch.long, device=x.device)
        return self.ctx.scenario.masked(scores, ids, upto)

    def load_state_dict(self, state: dict) -> None:
        if isinstance(state.get("replay"), str):  # checkpoints written before the replay hook kept the mode there
            state = {**state, "replay_mode": state["replay"]}
            del state["replay"]
        super().load_state_dict(state)

    def extra_metrics(self) -> dict:
        return {"buffer_bytes": sum(t.nbytes for ex in self.exemplars.values() for t in ex)}
