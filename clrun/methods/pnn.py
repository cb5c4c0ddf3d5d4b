"""Progressive Neural Networks (Rusu et al. 2016): a new column (an MLP of the configured widths) per task,
earlier columns frozen, lateral connections from the frozen columns' hidden layers into the new one.
Task-IL: task t is answered by column t, so earlier tasks cannot be forgotten.

Laterals (``method.laterals``):
- ``mean``: every layer of column k but the first gets one bias-free adapter Linear(h_{l-1} -> h_l) applied to
  the mean of the earlier columns' layer l-1 activations, so each column adds the same number of parameters
  (linear growth in T).
- ``per_column``: as A-GEM's code builds PROG-NN (model.py, extensible_fc_column_progNN): every layer of
  column k, the first included, gets from each earlier column j its own Linear with bias on column j's previous
  layer (the input for the first layer), summed. Column k then adds k + 1 columns' worth of parameters
  (quadratic growth in T)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clrun.methods.base import Method, require
from clrun.models import LINEAR_INITS, MLP, init_linear_

LATERALS = ("mean", "per_column")


class LateralBank(nn.Module):
    """Per-column laterals into one layer: n_sources Linears (each with its bias, each initialised as its own
    Linear), stored side by side so that one matmul applies them all."""

    def __init__(self, n_sources: int, in_features: int, out_features: int, init: str, shared_input: bool):
        super().__init__()
        blocks = nn.ModuleList(nn.Linear(in_features, out_features) for _ in range(n_sources))
        init_linear_(blocks, init)
        self.weight = nn.Parameter(torch.cat([b.weight.detach() for b in blocks], 1))  # (out, n * in)
        self.bias = nn.Parameter(torch.stack([b.bias.detach() for b in blocks]))  # (n, out)
        self.shared_input = shared_input
        self._frozen_sum: tuple[tuple, Tensor, Tensor] | None = None

    def _summed(self) -> tuple[Tensor, Tensor]:
        weight = self.weight.view(self.weight.shape[0], self.bias.shape[0], -1).sum(1)
        return weight, self.bias.sum(0)

    def forward(self, sources: list[Tensor]) -> Tensor:
        if not self.shared_input:
            return F.linear(torch.cat(sources, 1), self.weight, self.bias.sum(0))
        # every source is the network input: sum the maps, then apply once; a frozen bank keeps its sum,
        # which would otherwise cost a pass over all its weights in every forward
        if self.weight.requires_grad:
            return F.linear(sources[0], *self._summed())
        key = (self.weight.data_ptr(), self.weight._version, self.bias.data_ptr(), self.bias._version)
        if self._frozen_sum is None or self._frozen_sum[0] != key:
            with torch.no_grad():
                self._frozen_sum = (key, *self._summed())
        return F.linear(sources[0], self._frozen_sum[1], self._frozen_sum[2])


class ProgressiveNet(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], n_outputs: int, init: str = "torch",
                 laterals: str = "mean"):
        super().__init__()
        self.widths = [in_features, *hidden]
        self.n_outputs = n_outputs
        self.init = init
        self.lateral_kind = laterals
        self.columns = nn.ModuleList()  # column k: hidden layers then its head
        # mean: laterals[k][l-1] feeds layer l >= 1; per_column: laterals[k][l] feeds layer l from columns < k
        self.laterals = nn.ModuleList()

    def add_column(self) -> None:
        w = self.widths
        outs = [*w[1:], self.n_outputs]
        self.columns.append(nn.ModuleList(nn.Linear(i, o) for i, o in zip(w, outs)))
        k = len(self.columns) - 1
        if self.lateral_kind == "per_column" and k > 0:
            lateral = nn.ModuleList(LateralBank(k, i, o, self.init, shared_input=(n == 0))
                                    for n, (i, o) in enumerate(zip(w, outs)))
        elif k > 0:
            lateral = nn.ModuleList(nn.Linear(i, o, bias=False) for i, o in zip(w[1:], outs[1:]))
        else:
            lateral = nn.ModuleList()
        self.laterals.append(lateral)
        init_linear_(self.columns[-1], self.init)
        init_linear_(self.laterals[-1], self.init)

    def forward(self, x: Tensor, column: int) -> Tensor:
        h0 = x.flatten(1)
        inputs: list[list[Tensor]] = []  # per earlier column, the input of each of its layers
        prev_sum: list[Tensor] | None = None  # mean laterals: the earlier columns' layer inputs, summed
        for k in range(column + 1):
            h, seen = h0, []
            layers = self.columns[k]
            for i, layer in enumerate(layers):
                seen.append(h)
                z = layer(h)
                if self.lateral_kind == "per_column" and k > 0:
                    z = z + self.laterals[k][i]([inp[i] for inp in inputs])
                elif k > 0 and i > 0:
                    z = z + self.laterals[k][i - 1](prev_sum[i] / k)  # mean: same scale for every column
                h = z if i == len(layers) - 1 else F.relu(z)
            if self.lateral_kind == "per_column":
                inputs.append(seen)
            else:
                prev_sum = seen if prev_sum is None else [p + a for p, a in zip(prev_sum, seen)]
        return h


class PNN(Method):
    scenarios = ("task_il",)

    def __init__(self, hidden: list[int] = (100, 100), init: str = "torch", laterals: str = "mean"):
        require(len(hidden) >= 1 and all(h >= 1 for h in hidden), f"method.hidden={hidden!r} needs widths >= 1")
        require(init in LINEAR_INITS, f"method.init={init!r} is not allowed; use one of {', '.join(LINEAR_INITS)}")
        require(laterals in LATERALS, f"method.laterals={laterals!r} is not allowed; use one of {', '.join(LATERALS)}")
        self.hidden = list(hidden)
        self.init = init
        self.laterals = laterals

    def setup(self) -> None:
        L = self.ctx
        # its columns are MLPs of method.hidden: any other configured model would be silently replaced
        require(isinstance(L.model, MLP), f"method=pnn builds its own MLP columns (method.hidden); it cannot use "
                f"model={type(L.model).__name__}: use model=mlp")
        in_features = math.prod(L.stream.tasks[0].train_x.shape[1:])
        L.model = ProgressiveNet(in_features, self.hidden, L.scenario.n_outputs, self.init, self.laterals)
        L.model.add_column()  # the untrained model that row init measures
        L.model.to(L.device)

    def before_task(self, task_id: int) -> None:
        net: ProgressiveNet = self.ctx.model
        while len(net.columns) <= task_id:
            net.add_column()
        net.to(self.ctx.device)
        for k, (column, lateral) in enumerate(zip(net.columns, net.laterals)):
            for p in [*column.parameters(), *lateral.parameters()]:
                p.requires_grad_(k == task_id)  # only the new column and its adapters learn

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        net: ProgressiveNet = self.ctx.model
        return net(x, min(task_id, len(net.columns) - 1))

    def extra_metrics(self) -> dict:
        return {"columns": len(self.ctx.model.columns)}
