"""EWC (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018): (lam/2) sum F_i (theta_i - theta*_i)^2
with F the diagonal Fisher at each task's optimum (``fisher=empirical|true|expected|predicted|weighted_empirical``).

``fisher_form=lowrank``: (lam/2) [ sum_{i<=rank} l_i (v_i . d)^2 + sum_j r_j d_j^2 ], d = theta - theta*, with
(l_i, v_i) the top-``rank`` eigenpairs of the task's Fisher (Lanczos on Fisher-vector products, see
clrun.importance) and r = diag(F) - sum_i l_i v_i^2 the diagonal of the remainder, so no direction goes
unpenalised. Memory: rank * P per task plus the diagonal.

The eigenbasis concentrates the curvature: along v_1 the penalty's curvature is lam * l_1, far above any
diagonal entry, and an explicit gradient step overshoots once lr * lam * l_1 > 2. ``lowrank_step=implicit``
(default) therefore applies the low-rank part as its proximal step after each optimiser step: the component
c_i = v_i . d shrinks to c_i / (1 + lr * lam * l_i), the backward-Euler step of the same quadratic (equal to
the gradient step to first order in lr, stable for every lam), taken for one task's basis after the other (a
sequential splitting: summed from the same point, tasks whose bases share a direction would overshoot). It is
plain SGD's proximal step, so ``implicit`` needs optimizer=sgd without momentum or weight decay. ``explicit``
adds lam V (l * V^T d) to the gradients instead, with any optimiser.

``fisher_form=kfac``: per Linear layer the Fisher block over W' = [W, b] is A (x) G (clrun.importance.kfac_factors:
A from the layer's inputs, G from the gradients at its outputs; Ritter et al. 2018, van de Ven's ``--fisher-kfac``),
and the penalty (lam/2) sum_layers tr(dW'^T G dW' A) needs no Kronecker product. One (A, G, W'*) per layer and
task; ``online=true`` keeps one pair per layer, (gamma A, G) and the new pair merged by
clrun.importance.add_kronecker (van de Ven's code), anchored at the latest W'*. Its gradient lam G dW' A is added in
closed form."""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector

from clrun.importance import (
    FISHER_KINDS,
    LABEL_KINDS,
    SampleGradients,
    add_kronecker,
    fisher_diag,
    fisher_labels,
    kfac_factors,
    lanczos_top,
    linear_layers,
)
from clrun.methods.base import require
from clrun.methods.quadratic import QuadraticPenalty

log = logging.getLogger("clrun")


class EWC(QuadraticPenalty):
    def __init__(self, lam: float = 100.0, fisher: str = "true", fisher_samples: int | None = 2000,
                 online: bool = False, gamma: float = 0.95, chunk: int = 16, backend: str = "auto",
                 fisher_form: str = "diagonal", rank: int = 20, lowrank_step: str = "implicit"):
        allowed = ", ".join(FISHER_KINDS)
        require(fisher in FISHER_KINDS, f"method.fisher={fisher!r} is not allowed; use one of {allowed}")
        require(fisher_samples is None or fisher_samples >= 1,
                f"method.fisher_samples={fisher_samples!r} must be a positive integer or null (all)")
        require(0.0 < gamma <= 1.0, f"method.gamma={gamma!r} must be in (0, 1]")
        require(fisher_form in FISHER_FORMS,
                f"method.fisher_form={fisher_form!r} is not allowed; use one of {', '.join(FISHER_FORMS)}")
        if fisher_form == "kfac":
            require(fisher in LABEL_KINDS, f"method.fisher_form=kfac takes one label per sample: method.fisher="
                    f"{fisher} is not allowed with it; use true, empirical or predicted")
        if fisher_form == "lowrank":
            require(isinstance(rank, int) and rank >= 1, f"method.rank={rank!r} must be an integer >= 1")
            require(not online, "method.fisher_form=lowrank keeps one eigenbasis per task; online=true is not "
                                "supported with it")
            require(fisher in LABEL_KINDS, "method.fisher_form=lowrank needs per-sample "
                    "gradients of one unweighted label: use fisher=true, empirical or predicted")
            require(lowrank_step in ("implicit", "explicit"),
                    f"method.lowrank_step={lowrank_step!r} is not allowed; use implicit or explicit")
        super().__init__(lam, online=online, gamma=gamma)
        self.fisher, self.fisher_samples, self.chunk, self.backend = fisher, fisher_samples, chunk, backend
        self.fisher_form, self.rank, self.lowrank_step = fisher_form, int(rank), lowrank_step
        self.eigen: list[tuple[Tensor, Tensor, Tensor]] = []  # lowrank: (eigenvalues, vectors [P, r], theta*)
        self.kfac: list[dict[str, list[Tensor]]] = []  # kfac: per task (one when online) {layer: [A, G, W'*]}

    @property
    def name(self) -> str:
        form = "" if self.fisher_form == "diagonal" else f"_{self.fisher_form}"
        return f"online_ewc{form}" if self.online else f"ewc{form}"

    def setup(self) -> None:
        if self.fisher_form == "kfac":
            require(linear_layers(self.ctx.model) is not None, f"method.fisher_form=kfac factors the Fisher of "
                    f"Linear layers; {type(self.ctx.model).__name__} has weights in other layers: use model=mlp, or "
                    "fisher_form=diagonal")
        if self.fisher_form == "lowrank" and self.lowrank_step == "implicit":
            # the proximal step shrinks by 1 / (1 + lr lam l): the step plain SGD takes, and no other optimiser
            require(self.ctx.plain_sgd_lr() is not None,
                    f"method.lowrank_step=implicit is the proximal step of plain SGD; optimizer="
                    f"{self.ctx.optimizer_name()} with these settings takes another step: use "
                    "method.lowrank_step=explicit, or optimizer=sgd without momentum and weight decay")

    def after_task(self, task_id: int) -> None:
        L = self.ctx
        if task_id == len(L.stream) - 1:
            return  # no later task would be anchored by it
        x, y, ids = L.task_sample(task_id, self.fisher_samples)
        g = torch.Generator().manual_seed(L.seed * 104729 + task_id)  # labels sampled for the true Fisher
        mask = L.train_candidates(ids, task_id)  # the units the training loss spans (train_units=all: every one)
        if self.fisher_form == "kfac":
            self.consolidate_kfac(kfac_factors(L.model, x, y, mask, self.fisher, generator=g))
            return
        if self.fisher_form == "diagonal":
            self.consolidate(fisher_diag(L.model, x, y, mask, self.fisher, self.chunk, generator=g,
                                         backend=self.backend))
            return
        y = fisher_labels(L.model, x, y, mask, self.fisher, generator=g)
        grads = SampleGradients(L.model, x, y, mask, self.backend, chunk=self.chunk)
        evals, vecs = lanczos_top(grads.fisher_matmul, grads.dim, self.rank, generator=g, device=grads._device())
        evals = evals.clamp_min(0)
        residual = (grads.fisher_diag_flat() - vecs.pow(2) @ evals).clamp_min(0)
        self.consolidate(grads.split(residual))  # the remainder's diagonal: the fused quadratic path
        self.eigen.append((evals, vecs, self._theta().clone()))
        lr = L.plain_sgd_lr()
        stiffness = self.lam * float(evals[0]) * (lr if lr is not None else math.nan)
        # an explicit plain-SGD step overshoots along v_1 when lr * lam * l_1 > 2
        if stiffness > 2 and self.lowrank_step == "explicit":
            log.warning("ewc lowrank: lr * lam * top eigenvalue = %.3g > 2 after task %d: the penalty's step is "
                        "unstable along the top eigenvector; lower lam or lr", stiffness, task_id + 1)

    def consolidate_kfac(self, factors: dict[str, tuple[Tensor, Tensor]]) -> None:
        layers = dict(self.ctx.model.named_modules())
        new = {n: [A, G, _augmented(layers[n]).detach().clone()] for n, (A, G) in factors.items()}
        if self.online and self.kfac:  # one running pair per layer: (gamma A, G) + (A_new, G_new), latest anchor
            old = self.kfac[0]
            new = {n: [*add_kronecker((self.gamma * old[n][0], old[n][1]), (A, G)), W] for n, (A, G, W) in new.items()}
            self.kfac = [new]
        else:
            self.kfac.append(new)
        self._check_kfac_stability()

    def _check_kfac_stability(self) -> None:
        """Warn when an explicit SGD step on the penalty overshoots: its curvature along the sharpest direction of a
        layer is lam x (the sum over tasks of) top eig(A) x top eig(G), a Kronecker product's eigenvalues being
        products."""
        limit = self.ctx.sgd_stability_limit()
        if limit is None or self.lam == 0:
            return
        lr, bound = limit
        top = {n: 0.0 for n in self.kfac[-1]}
        for task in self.kfac:
            for n, (A, G, _) in task.items():
                top[n] += float(torch.linalg.eigvalsh(A)[-1]) * float(torch.linalg.eigvalsh(G)[-1])
        name, curvature = max(top.items(), key=lambda kv: kv[1])
        if lr * self.lam * curvature > bound:
            log.warning("%s: lr x lam x the penalty's top curvature in layer %s is %.3g > %.3g: an explicit SGD step "
                        "overshoots the anchor along it and the run may diverge; lam <= %.3g keeps it stable, or "
                        "lower lr", self.name, name, lr * self.lam * curvature, bound, bound / (lr * curvature))

    def _kfac_terms(self, detach: bool):
        """(layer, dW', G dW' A) for every task's factors and layer: the pieces of the value and of its gradient."""
        model = self.ctx.model
        for task in self.kfac:
            for name, (A, G, anchor) in task.items():
                layer = model.get_submodule(name)
                d = _augmented(layer) - anchor
                if detach:
                    d = d.detach()
                yield layer, d, G @ d @ A

    def kfac_value(self) -> Tensor:
        """(lam/2) sum over tasks and layers of tr(dW'^T G dW' A) = vec(dW')^T (A (x) G) vec(dW')."""
        total = torch.zeros((), device=self.ctx.device)
        for _, d, grad in self._kfac_terms(detach=False):
            total = total + (d * grad).sum()
        return 0.5 * self.lam * total

    def _add_kfac_gradient(self, scale: float) -> Tensor:
        """Add lam x scale x G dW' A (the gradient of :meth:`kfac_value`) to each layer's weight and bias
        gradients; return the value. Two matmuls a layer and task, a third of what autograd's backward costs."""
        total = torch.zeros((), device=self.ctx.device)
        for layer, d, grad in self._kfac_terms(detach=True):
            total += (d * grad).sum()
            for p, g in ((layer.weight, grad[:, : layer.in_features]),
                         (layer.bias, grad[:, layer.in_features :].squeeze(1))):
                if p is None or not p.requires_grad:
                    continue
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(g, alpha=self.lam * scale)
        return 0.5 * self.lam * total

    def _theta(self) -> Tensor:
        return parameters_to_vector(self.ctx.trainable_parameters()).detach()

    def _lowrank_gradient(self, theta: Tensor) -> Tensor:
        """sum over tasks of V (l * V^T (theta - theta*)): the low-rank term's gradient over lam."""
        out = torch.zeros_like(theta)
        for evals, vecs, anchor in self.eigen:
            out += vecs @ (evals * (vecs.T @ (theta - anchor)))
        return out

    def _add_to(self, tensors: list[Tensor], flat: Tensor, alpha: float) -> None:
        at = 0
        for t in tensors:
            t.add_(flat[at : at + t.numel()].view_as(t), alpha=alpha)
            at += t.numel()

    def value(self) -> Tensor:
        total = super().value()
        if self.eigen:  # differentiable: theta is not detached here
            total = total + self._lowrank_value(parameters_to_vector(self.ctx.trainable_parameters()))
        return total

    def penalty_value(self) -> Tensor | None:
        if self.kfac:
            return self.kfac_value() if self.lam != 0 else None
        if self.lowrank_step == "implicit" or not self.eigen:  # implicit: the low-rank part is no gradient term
            return super().penalty_value()
        return self.value() if self.lam != 0 else None

    def _lowrank_value(self, theta: Tensor) -> Tensor:
        return sum(0.5 * self.lam * (evals * (vecs.T @ (theta - anchor)).pow(2)).sum()
                   for evals, vecs, anchor in self.eigen)

    def add_penalty_gradient(self, scale: float) -> Tensor | None:
        if self.kfac:
            return self._add_kfac_gradient(scale) if self.lam != 0 else None
        value = super().add_penalty_gradient(scale)
        if not self.eigen or self.lam == 0 or self.lowrank_step != "explicit":
            return value
        params = self.ctx.trainable_parameters()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        theta = self._theta()
        # d/dtheta (lam/2) sum_i l_i (v_i . d)^2 = lam V (l * V^T d)
        self._add_to([p.grad for p in params], self._lowrank_gradient(theta), self.lam * scale)
        return self._lowrank_value(theta) + (value if value is not None else 0.0)

    def after_step(self, step) -> None:
        if not self.eigen or self.lam == 0 or self.lowrank_step != "implicit":
            return
        c = self.ctx.plain_sgd_lr() * self.lam * step.scale
        # one proximal step per task's eigenbasis, each from where the previous left theta: each component shrinks
        # by 1 / (1 + lr lam l_i). Summing the tasks' steps taken from the same theta instead overshoots wherever
        # their bases share a stiff direction (k tasks move it k times): unstable from a few tasks on.
        theta = self._theta()
        start = theta.clone()
        for evals, vecs, anchor in self.eigen:
            theta -= vecs @ (c * evals / (1 + c * evals) * (vecs.T @ (theta - anchor)))
        with torch.no_grad():
            self._add_to(self.ctx.trainable_parameters(), theta - start, 1.0)

    def extra_metrics(self) -> dict:
        row = super().extra_metrics()
        row["importance_bytes"] += sum(t.nbytes for e in self.eigen for t in e)
        row["importance_bytes"] += sum(t.nbytes for task in self.kfac for ts in task.values() for t in ts)
        return row


FISHER_FORMS = ("diagonal", "lowrank", "kfac")


def _augmented(layer: torch.nn.Linear) -> Tensor:
    """W' = [W, b]: the weight with the bias as its last column (K-FAC's input with a 1 appended)."""
    return layer.weight if layer.bias is None else torch.cat([layer.weight, layer.bias[:, None]], 1)
