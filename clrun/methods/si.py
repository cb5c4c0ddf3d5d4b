"""Synaptic Intelligence (Zenke et al. 2017): importance accumulated online during training as the path
integral w_i = sum_steps -g_i * delta theta_i (g: gradient of the loss without SI's penalty), then
Omega_i += w_i / (Delta theta_i^2 + xi) at the task's end; penalty c * sum Omega_i (theta_i - theta*_i)^2, c = lam.

``path_grad=total`` takes g with the penalty's gradient included, as van de Ven & Tolias' code does (their W
uses the gradient of the total loss); ``task`` (default) is Zenke et al.'s unregularised gradient.
``clip_value``: every gradient entry clamped to [-v, v] once the penalty's is added, before the step (mammoth's
SI clips at 1); with path_grad=total the path integral takes the clamped gradient, as mammoth's does."""

from __future__ import annotations

import torch
from torch import Tensor

from clrun.methods.base import Step, require
from clrun.methods.quadratic import QuadraticPenalty


class SI(QuadraticPenalty):
    scale = 1.0

    def __init__(self, lam: float = 100.0, xi: float = 0.1, path_grad: str = "task", clip_value: float | None = None):
        require(xi > 0, f"method.xi={xi!r} must be > 0 (it keeps the importance finite)")
        require(path_grad in ("task", "total"), f"method.path_grad={path_grad!r} is not allowed; use task or total")
        super().__init__(lam, online=True, gamma=1.0)  # Omega accumulates; the anchor is the latest optimum
        self.xi = float(xi)
        require(clip_value is None or clip_value > 0, f"method.clip_value={clip_value!r} must be > 0 or null")
        self.path_grad = path_grad
        self.clip_value = clip_value
        self.path: dict[str, Tensor] = {}
        self.start: dict[str, Tensor] = {}
        self._grad: list[Tensor] = []
        self._before: list[Tensor] = []

    def _params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.ctx.model.named_parameters() if p.requires_grad]

    def before_task(self, task_id: int) -> None:
        self.start = {n: p.detach().clone() for n, p in self._params()}
        self.path = {n: torch.zeros_like(p) for n, p in self._params()}

    def add_penalty_gradient(self, scale: float) -> Tensor | None:
        # g and theta just before the optimiser moves theta; with path_grad=task g is the gradient of the loss
        # without SI's own surrogate (Zenke et al.'s "unregularised gradient"), recorded before the penalty's
        params = [p for _, p in self._params()]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.path_grad == "task":
            self._record(params)
        return super().add_penalty_gradient(scale)

    def transform_gradient(self, step: Step) -> None:
        params = [p for _, p in self._params()]
        if self.clip_value is not None:
            for p in params:
                p.grad.clamp_(-self.clip_value, self.clip_value)
        if self.path_grad == "total":  # the gradient the step takes: penalty included, clipped (mammoth's SI)
            self._record(params)

    def _record(self, params: list[torch.nn.Parameter]) -> None:
        self._grad = torch._foreach_mul([p.grad for p in params], 1.0)  # copies, in one fused call
        self._before = torch._foreach_mul([p.detach() for p in params], 1.0)

    def after_step(self, step: Step) -> None:
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
