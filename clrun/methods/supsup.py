"""Supermasks in Superposition (Wortsman et al. 2020): the weights stay random and frozen; each task learns a
binary mask over them (edge-popup: real-valued scores, the top ``1 - sparsity`` fraction per layer kept, the
gradient passed straight through to the scores). After a task only its mask is kept: one bit per weight.

Task-IL (``task_inference=given``): the given task id selects the mask. Without task ids
(``task_inference=oneshot``, domain-IL or class-IL): the paper's one-shot inference. For each evaluation batch
of ``inference_batch`` samples of one task, superpose the learnt masks with weights alpha_i = 1/k, take the
gradient of the mean output entropy H with respect to alpha, and answer with mask argmin_i dH/dalpha_i."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call

from clrun.methods.adapters import entropies
from clrun.methods.base import Method, Step, require


def top_mask(scores: Tensor, keep: float) -> Tensor:
    """Bool mask of the ``keep`` fraction of entries with the largest scores."""
    n = scores.numel()
    k = max(1, int(round(keep * n)))
    # a selection (kthvalue) instead of topk: with k ~ n/2 topk is a partial sort, 3x slower per forward
    mask = scores >= scores.flatten().kthvalue(n - k + 1).values
    if int(mask.sum()) != k:  # ties at the threshold: fall back to exactly k by index
        mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
        mask[scores.flatten().topk(k).indices] = True
        mask = mask.view_as(scores)
    return mask


def entropy(logits: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of the softmax of each row."""
    return entropies(logits).mean()


class SupSup(Method):
    def __init__(self, sparsity: float = 0.5, score_lr_scale: float = 10.0, task_inference: str = "given",
                 inference_batch: int = 128):
        require(0.0 < sparsity < 1.0, f"method.sparsity={sparsity!r} must be in (0, 1): the fraction of weights masked")
        require(score_lr_scale > 0, f"method.score_lr_scale={score_lr_scale!r} must be > 0")
        require(task_inference in ("given", "oneshot", "binary"),
                f"method.task_inference={task_inference!r} must be given (task-IL), oneshot or binary (no task ids)")
        require(inference_batch >= 1, f"method.inference_batch={inference_batch!r} must be >= 1")
        self.sparsity = float(sparsity)
        self.score_lr_scale = float(score_lr_scale)
        self.task_inference = task_inference
        self.inference_batch = int(inference_batch)
        # with the task id given SupSup is task-IL only; one-shot inference serves the settings without it
        self.scenarios = ("task_il",) if task_inference == "given" else ("domain_il", "class_il")
        self.masks: dict[int, dict[str, Tensor]] = {}  # finished tasks: bool masks, the only per-task storage
        self.inference_hits = 0  # evaluated batches whose task was inferred right (true task already learnt)
        self.inference_total = 0

    def setup(self) -> None:
        model = self.ctx.model
        self.names = [n for n, p in model.named_parameters() if p.dim() > 1]
        keep = 1.0 - self.sparsity
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.zero_()  # no biases: the network is the random weights and a mask
                else:  # the paper's signed Kaiming constant, scaled for the weights a mask keeps
                    p.copy_(torch.sign(p) * (2.0 / (keep * p[0].numel())) ** 0.5)
                p.requires_grad_(False)
        # one score tensor per weight for every task, created up front so untrained tasks have a (random) mask
        g = torch.Generator().manual_seed(self.ctx.seed + 1)
        params = dict(model.named_parameters())
        def scores_like(w: Tensor) -> nn.Parameter:  # edge-popup's Kaiming-uniform score init
            bound = (6.0 / w[0].numel()) ** 0.5
            s = (torch.rand(w.shape, generator=g) * 2 - 1) * bound
            return nn.Parameter(s.to(w.device), requires_grad=False)

        model.supermask_scores = nn.ModuleList(
            nn.ParameterList(scores_like(params[n]) for n in self.names) for _ in range(len(self.ctx.stream)))

    def before_task(self, task_id: int) -> None:
        for p in self.ctx.model.supermask_scores[task_id]:
            p.requires_grad_(True)

    def transform_gradient(self, step: Step) -> None:
        # the straight-through gradient reaching a score is scaled by a small weight: edge-popup trains scores
        # with a 10x larger step than weights usually get (lr 0.1), so the scores' step is lr * score_lr_scale
        if self.score_lr_scale != 1.0:
            for p in self.ctx.model.supermask_scores[self.ctx.current_task]:
                if p.grad is not None:
                    p.grad.mul_(self.score_lr_scale)

    def task_masks(self, task_id: int) -> dict[str, Tensor]:
        if task_id in self.masks:
            return {n: m.float() for n, m in self.masks[task_id].items()}
        scores = self.ctx.model.supermask_scores[task_id]
        keep = 1.0 - self.sparsity
        # straight-through: the forward uses the hard mask, the backward treats it as the scores
        return {n: top_mask(s.detach(), keep).float() + s - s.detach() for n, s in zip(self.names, scores)}

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        model = self.ctx.model
        params = dict(model.named_parameters())
        masked = {n: params[n] * m for n, m in self.task_masks(task_id).items()}
        return functional_call(model, masked, (x,))

    def after_task(self, task_id: int) -> None:
        scores = self.ctx.model.supermask_scores[task_id]
        self.masks[task_id] = {n: top_mask(s.detach(), 1.0 - self.sparsity) for n, s in zip(self.names, scores)}
        for p in scores:  # the float scores are training scaffolding: only the bits stay
            p.requires_grad_(False)
            p.data = torch.empty(0, device=p.device)

    # ---- one-shot task inference
    def superposed_logits(self, x: Tensor, alphas: Tensor, stacked: dict[str, Tensor]) -> Tensor:
        """Logits of the network whose mask is sum_i alphas[i] * M_i (``stacked[name]``: [k, *weight.shape])."""
        params = dict(self.ctx.model.named_parameters())
        weights = {n: params[n] * torch.tensordot(alphas, m, dims=1) for n, m in stacked.items()}
        return functional_call(self.ctx.model, weights, (x,))

    def infer_task(self, x: Tensor, tasks: list[int], stacked: dict[str, Tensor] | None = None,
                   upto: int | None = None) -> int:
        """The learnt task whose mask best explains ``x`` by the entropy gradient at alpha = 1/k (``oneshot``:
        argmin_i dH/dalpha_i; ``binary``: keep the half with the smaller gradients, re-spread alpha, repeat)."""
        if stacked is None:
            stacked = self.stacked_masks(tasks)
        upto = max(tasks) if upto is None else upto
        alive = torch.ones(len(tasks), dtype=torch.bool, device=x.device)
        ids = torch.zeros(len(x), dtype=torch.long, device=x.device)  # class-IL: all seen units compete
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone()
            while True:
                alphas = (alive.float() / alive.sum()).requires_grad_(True)
                logits = self.ctx.scenario.masked(self.superposed_logits(x, alphas, stacked), ids, upto)
                (grad,) = torch.autograd.grad(entropy(logits), alphas)
                grad = grad.masked_fill(~alive, float("inf"))
                if self.task_inference == "oneshot" or int(alive.sum()) <= 2:
                    return tasks[int(grad.argmin())]
                keep = (int(alive.sum()) + 1) // 2
                alive = torch.zeros_like(alive).index_fill_(0, grad.topk(keep, largest=False).indices, True)

    def stacked_masks(self, tasks: list[int]) -> dict[str, Tensor]:
        # normal tensors even when called from evaluation: the entropy gradient needs them in its graph
        with torch.inference_mode(False), torch.no_grad():
            per_task = [self.task_masks(t) for t in tasks]
            return {n: torch.stack([m[n].detach() for m in per_task]) for n in self.names}

    def predict(self, x: Tensor, task_id: int, upto: int) -> Tensor:
        if self.task_inference == "given":
            return super().predict(x, task_id, upto)
        # the learnt masks are the candidates; before any task is learnt, every seen task's initial mask
        tasks = sorted(self.masks) or list(range(upto + 1))
        stacked = self.stacked_masks(tasks)
        scenario = self.ctx.scenario
        out = []
        for s in range(0, len(x), self.inference_batch):
            chunk = x[s : s + self.inference_batch]
            inferred = self.infer_task(chunk, tasks, stacked, upto)
            if task_id in self.masks:
                self.inference_hits += int(inferred == task_id)
                self.inference_total += 1
            logits = self.forward(chunk, inferred)
            # class-IL: the inferred task's mask answers among that task's classes; domain-IL: all units
            units = scenario.task_units[inferred] if scenario.name == "class_il" else None
            out.append(logits if units is None else logits.masked_fill(~units, torch.finfo(logits.dtype).min / 2))
        return torch.cat(out)

    def extra_metrics(self) -> dict:
        row = {"mask_bits_per_task": sum(self.ctx.model.get_parameter(n).numel() for n in self.names)}
        if self.task_inference != "given":
            row["task_inference_acc"] = self.inference_hits / max(1, self.inference_total)
        return row
