"""Progressive Neural Networks (Rusu et al. 2016): a new column (an MLP of the configured widths) per task,
earlier columns frozen, lateral connections from the frozen columns' hidden layers into the new one.
Task-IL: task t is answered by column t, so earlier tasks cannot be forgotten.

Laterals: each layer l of column k gets one adapter Linear(h_{l-1} -> h_l) applied to the mean of the earlier
columns' layer l-1 activations, so each column adds the same number of parameters (linear growth in T)."""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clrun.methods.base import Method, require
from clrun.models import LINEAR_INITS, init_linear_


class ProgressiveNet(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], n_outputs: int, init: str = "torch"):
        super().__init__()
        self.widths = [in_features, *hidden]
        self.n_outputs = n_outputs
        self.init = init
        self.columns = nn.ModuleList()  # column k: hidden layers then its head
        self.laterals = nn.ModuleList()  # column k: adapters into hidden layers 1.. and the head

    def add_column(self) -> None:
        w = self.widths
        layers = [nn.Linear(w[i], w[i + 1]) for i in range(len(w) - 1)] + [nn.Linear(w[-1], self.n_outputs)]
        self.columns.append(nn.ModuleList(layers))
        if len(self.columns) > 1:
            outs = [*w[2:], self.n_outputs]
            self.laterals.append(nn.ModuleList(nn.Linear(w[i + 1], o, bias=False) for i, o in enumerate(outs)))
        else:
            self.laterals.append(nn.ModuleList())
        init_linear_(self.columns[-1], self.init)
        init_linear_(self.laterals[-1], self.init)

    def forward(self, x: Tensor, column: int) -> Tensor:
        h0 = x.flatten(1)
        prev: list[Tensor] | None = None  # summed activations of the earlier columns, per layer
        for k in range(column + 1):
            h, acts = h0, []
            layers = self.columns[k]
            for i, layer in enumerate(layers):
                z = layer(h)
                if k > 0 and i > 0:
                    z = z + self.laterals[k][i - 1](prev[i - 1] / k)  # mean: same scale for every column
                h = z if i == len(layers) - 1 else F.relu(z)
                acts.append(h)
            prev = acts if prev is None else [p + a for p, a in zip(prev, acts)]
        return h


class PNN(Method):
    scenarios = ("task_il",)

    def __init__(self, hidden: list[int] = (100, 100), init: str = "torch"):
        require(len(hidden) >= 1 and all(h >= 1 for h in hidden), f"method.hidden={hidden!r} needs widths >= 1")
        require(init in LINEAR_INITS, f"method.init={init!r} is not allowed; use one of {', '.join(LINEAR_INITS)}")
        self.hidden = list(hidden)
        self.init = init

    def setup(self) -> None:
        L = self.learner
        in_features = math.prod(L.stream.tasks[0].train_x.shape[1:])
        L.model = ProgressiveNet(in_features, self.hidden, L.scenario.n_outputs, self.init)
        L.model.add_column()  # the untrained model that row init measures
        L.model.to(L.device)

    def before_task(self, task_id: int) -> None:
        net: ProgressiveNet = self.learner.model
        while len(net.columns) <= task_id:
            net.add_column()
        net.to(self.learner.device)
        for k, (column, lateral) in enumerate(zip(net.columns, net.laterals)):
            for p in [*column.parameters(), *lateral.parameters()]:
                p.requires_grad_(k == task_id)  # only the new column and its adapters learn

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        net: ProgressiveNet = self.learner.model
        return net(x, min(task_id, len(net.columns) - 1))

    def extra_metrics(self) -> dict:
        return {"columns": len(self.learner.model.columns)}
