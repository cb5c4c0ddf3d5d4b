"""Synaptic Intelligence (Zenke et al. 2017): importance accumulated online during training as the path
integral w_i = sum_steps -g_i * delta theta_i (g: gradient of the loss without SI's penalty), then
Omega_i += w_i / (Delta theta_i^2 + xi) at the task's end; penalty c * sum Omega_i (theta_i - theta*_i)^2, c = lam.

``path_grad=total`` takes g with the penalty's gradient included, as van de Ven & Tolias' code does (their W
uses the gradient of the total loss); ``task`` (default) is Zenke et al.'s unregularised gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from clrun.methods.base import require
from clrun.methods.quadratic import QuadraticPenalty


class SI(QuadraticPenalty):
    scale = 1.0

    def __init__(self, lam: float = 1.0, xi: float = 0.1, path_grad: str = "task"):
        require(xi > 0, f"method.xi={xi!r} must be > 0 (it keeps the importance finite)")
        require(path_grad in ("task", "total"), f"method.path_grad={path_grad!r} is not allowed; use task or total")
        super().__init__(lam, online=True, gamma=1.0)  # Omega accumulates; the anchor is the latest optimum
        self.xi = float(xi)
        self.path_grad = path_grad
        self.path: dict[str, Tensor] = {}
        self.start: dict[str, Tensor] = {}
        self._grad: list[Tensor] = []
        self._before: list[Tensor] = []

    def _params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.learner.model.named_parameters() if p.requires_grad]

    def before_task(self, task_id: int) -> None:
        self.start = {n: p.detach().clone() for n, p in self._params()}
        self.path = {n: torch.zeros_like(p) for n, p in self._params()}

    def after_backward(self) -> None:
        # g and theta just before the optimiser moves theta; with path_grad=task g is the gradient of the loss
        # without SI's own surrogate (Zenke et al.'s "unregularised gradient"), recorded before the penalty's
        params = [p for _, p in self._params()]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.path_grad == "total":
            super().after_backward()
        self._grad = torch._foreach_mul([p.grad for p in params], 1.0)  # copies, in one fused call
        self._before = torch._foreach_mul([p.detach() for p in params], 1.0)
        if self.path_grad == "task":
            super().after_backward()

    def after_step(self) -> None:
        if not self._grad:
            return
        params = self._params()
        delta = torch._foreach_sub([p.detach() for _, p in params], self._before)
        torch._foreach_mul_(delta, self._grad)
        torch._foreach_sub_([self.path[n] for n, _ in params], delta)  # w -= g * delta theta
        self._grad, self._before = [], []

    def after_task(self, task_id: int) -> None:
        omega = {n: self.path[n] / ((p.detach() - self.start[n]).pow(2) + self.xi) for n, p in self._params()}
        self.consolidate(omega)
