"""Per-task adapters on a frozen trunk: the trunk (the model's ``features``) is trained on the first task, or
loaded from a checkpoint (``trunk=PATH``), and then frozen; every later task trains only a small adapter in
each of the trunk's Linear and Conv2d layers and its own head over its own output units (the model's head is
replaced by these per-task heads, each initialised as the model's head rows of its units).

- ``kind=bottleneck`` (Houlsby et al. 2019): a residual bottleneck on each layer's output,
  z + up(relu(down(z))), down C -> rank, up rank -> C, ``up`` zero so a new adapter starts as the identity.
- ``kind=lora`` (Hu et al. 2022): a low-rank update of each layer's weight, W + (alpha / rank) B A, applied as
  B (A x); A as the layer's own init, B zero so a new adapter starts as the trunk (a Conv2d's A is a conv of
  the layer's kernel, stride and padding into ``rank`` channels, B a 1x1 conv).

Task-IL (``task_inference=given``) routes by the task id, so a task's outputs never change once it is learnt.
Without task ids (``task_inference=entropy``: domain-IL, class-IL) each learnt task's network answers every
group of ``inference_batch`` evaluation samples (all of one task, as SupSup's one-shot inference assumes; 1 for
one sample at a time), and the one whose answers have the lowest mean entropy is taken: over all units in
domain-IL, over its own task's units in class-IL, which then answers among them."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from clrun.errors import ConfigError
from clrun.methods.base import Method, require, require_backbone

KINDS = ("bottleneck", "lora")


class Bottleneck(nn.Module):
    """z + up(relu(down(z))) over the channel dimension (dim 1) of a Linear's or a Conv2d's output."""

    def __init__(self, channels: int, rank: int):
        super().__init__()
        self.down = nn.Linear(channels, rank)
        self.up = nn.Linear(rank, channels)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor, out: Tensor) -> Tensor:
        z = out.movedim(1, -1)  # channels last, so a conv's map goes through the same Linear layers
        return out + self.up(F.relu(self.down(z))).movedim(-1, 1)


class LoRA(nn.Module):
    """out + (alpha / rank) B (A x) for the layer's input x: a rank-``rank`` change of its weight."""

    def __init__(self, layer: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.scale = alpha / rank
        if isinstance(layer, nn.Linear):
            self.A = nn.Linear(layer.in_features, rank, bias=False)
            self.B = nn.Linear(rank, layer.out_features, bias=False)
        else:
            self.A = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                               layer.dilation, bias=False)
            self.B = nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        nn.init.zeros_(self.B.weight)

    def forward(self, x: Tensor, out: Tensor) -> Tensor:
        return out + self.scale * self.B(self.A(x))


def entropies(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of the softmax of each row."""
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def load_trunk(path: str) -> dict[str, Tensor]:
    """The ``features.*`` weights in ``path``: a clrun run directory (its checkpoint.pt) or a file of a model's
    state_dict (torch.save). Read with ``weights_only``: no code in the file runs."""
    from clrun import checkpoint as ckpt

    p = Path(path).expanduser()
    file = p / ckpt.CHECKPOINT_FILE if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"method.trunk={path!r}: no such file or run directory with a {ckpt.CHECKPOINT_FILE}; "
                          "give a run directory of a run with checkpoint=true, or a file of a model's state_dict")
    if p.is_dir():
        state = ckpt.model_state(p)
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one line
            raise ConfigError(f"method.trunk={path!r} cannot be read as a state_dict ({type(err).__name__}); "
                              "save one with torch.save(model.state_dict(), PATH)") from None
    trunk = {k[len("features."):]: v for k, v in dict(state).items() if k.startswith("features.")}
    if not trunk:
        raise ConfigError(f"method.trunk={path!r} holds no features.* weights: it is not a clrun model's state")
    return trunk


class TaskHeads(nn.Module):
    """One Linear per task over that task's own output units; the forward answers for ``active`` (set by the
    method), its units' logits in place and every other unit at a huge negative, as the scenario masks them."""

    def __init__(self, head: nn.Linear, task_units: Tensor):
        super().__init__()
        self.n_outputs = head.out_features
        self.units = [u.nonzero().squeeze(1) for u in task_units.cpu()]
        self.heads = nn.ModuleList()
        for units in self.units:
            task_head = nn.Linear(head.in_features, len(units), bias=head.bias is not None)
            with torch.no_grad():  # the model's own initial rows for the task's units
                task_head.weight.copy_(head.weight[units])
                if head.bias is not None:
                    task_head.bias.copy_(head.bias[units])
            self.heads.append(task_head)
        self.active = 0

    def forward(self, features: Tensor) -> Tensor:
        units = self.units[self.active]
        out = self.heads[self.active](features)
        if len(units) == self.n_outputs:  # domain-IL: every task answers on all units
            return out
        full = out.new_full((len(features), self.n_outputs), torch.finfo(out.dtype).min / 2)
        return full.index_copy(1, units.to(out.device), out)


class Adapters(Method):
    def __init__(self, kind: str = "bottleneck", rank: int = 16, alpha: float = 16.0, trunk: str | None = None,
                 task_inference: str = "given", inference_batch: int = 128):
        require(kind in KINDS, f"method.kind={kind!r} is not allowed; use one of {', '.join(KINDS)}")
        require(int(rank) >= 1, f"method.rank={rank!r} must be >= 1")
        require(alpha > 0, f"method.alpha={alpha!r} must be > 0 (LoRA's update is scaled by alpha / rank)")
        require(task_inference in ("given", "entropy"),
                f"method.task_inference={task_inference!r} must be given (task-IL) or entropy (no task ids)")
        require(int(inference_batch) >= 1, f"method.inference_batch={inference_batch!r} must be >= 1")
        self.kind, self.rank, self.alpha = kind, int(rank), float(alpha)
        self.trunk = None if trunk in (None, "") else str(trunk)
        self.task_inference = task_inference
        self.inference_batch = int(inference_batch)
        self.scenarios = ("task_il",) if task_inference == "given" else ("domain_il", "class_il")
        self.learnt: list[int] = []
        self.inference_hits = 0  # evaluation groups whose task was inferred right (true task already learnt)
        self.inference_total = 0

    @property
    def name(self) -> str:
        return f"adapters_{self.kind}"

    def setup(self) -> None:
        model = self.ctx.model
        require_backbone(self, model, "adapters go into the trunk, a head per task")
        self.layer_names = [n for n, m in model.features.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        require(bool(self.layer_names), f"method=adapters needs Linear or Conv2d layers in the model's trunk; "
                f"{type(model).__name__}.features has none")
        if self.trunk is not None:
            state = load_trunk(self.trunk)
            try:
                model.features.load_state_dict({k: v.to(self.ctx.device) for k, v in state.items()})
            except RuntimeError as err:
                first = " ".join(str(err).split())[:160]
                raise ConfigError(f"method.trunk={self.trunk!r} does not fit model={type(model).__name__} "
                                  f"({first}); use the model and widths the trunk was trained with") from None
        # the trunk trains on task 0 with no adapter (task 0's network is the trunk); a given trunk adapts every task
        self.first_adapted = 0 if self.trunk is not None else 1
        modules = dict(model.features.named_modules())
        T = len(self.ctx.stream)
        with torch.random.fork_rng(devices=[]):  # the adapters' init shifts no other draw of the run
            torch.manual_seed(self.ctx.seed + 2)
            model.task_adapters = nn.ModuleList(
                nn.ModuleDict() if t < self.first_adapted else
                nn.ModuleDict({n.replace(".", "_"): self._adapter(modules[n]) for n in self.layer_names})
                for t in range(T))
        model.head = TaskHeads(model.head, self.ctx.scenario.task_units)
        model.to(self.ctx.device)
        self.norms = [m for m in model.features.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for n in self.layer_names:
            modules[n].register_forward_hook(self._hook(n.replace(".", "_")))
        self._freeze_all()

    def _adapter(self, layer: nn.Module) -> nn.Module:
        if self.kind == "lora":
            return LoRA(layer, self.rank, self.alpha)
        channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        return Bottleneck(channels, self.rank)

    def _hook(self, key: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
            active = self.ctx.model.head.active
            if active < self.first_adapted:
                return None
            return self.ctx.model.task_adapters[active][key](inputs[0], out)
        return hook

    def _freeze_all(self) -> None:
        for p in self.ctx.model.parameters():
            p.requires_grad_(False)

    def trunk_frozen(self) -> bool:
        return self.trunk is not None or self.ctx.current_task > 0

    def before_task(self, task_id: int) -> None:
        model = self.ctx.model
        self._freeze_all()
        heads = model.head.heads
        if self.ctx.scenario.name == "domain_il" and task_id > 0 and task_id - 1 in self.learnt:
            heads[task_id].load_state_dict(heads[task_id - 1].state_dict())  # the same classes: start from the last
        trainable = [*model.task_adapters[task_id].parameters(), *heads[task_id].parameters()]
        if not self.trunk_frozen():
            trainable += list(model.features.parameters())
        for p in trainable:
            p.requires_grad_(True)

    def after_task(self, task_id: int) -> None:
        self._freeze_all()
        if task_id not in self.learnt:
            self.learnt.append(task_id)

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        model = self.ctx.model
        if self.trunk_frozen() and model.training:
            for m in self.norms:  # a frozen trunk's batch-norm statistics stay as they were learnt
                m.eval()
        model.head.active = task_id  # the task whose adapters the trunk's hooks apply and whose head answers
        return model.head(model.features(x))

    def predict(self, x: Tensor, task_id: int, upto: int) -> Tensor:
        if self.task_inference == "given":
            return super().predict(x, task_id, upto)
        scenario = self.ctx.scenario
        tasks = sorted(self.learnt) or list(range(upto + 1))  # nothing learnt yet: every seen task's initial network
        logits = torch.stack([self.forward(x, t) for t in tasks])  # [k, B, units]
        if scenario.name == "class_il":  # each task's head answers among its own classes
            units = scenario.task_units[tasks].unsqueeze(1)  # [k, 1, units]
            logits = logits.masked_fill(~units, torch.finfo(logits.dtype).min / 2)
        h = entropies(logits)  # [k, B]
        groups = torch.arange(len(x), device=x.device) // self.inference_batch
        n_groups = int(groups[-1]) + 1
        mean_h = torch.zeros(len(tasks), n_groups, device=x.device).index_add_(1, groups, h)
        pick = mean_h.argmin(0)[groups]  # [B]: the inferred task's row of each sample
        if task_id in self.learnt:
            first = torch.arange(0, len(x), self.inference_batch, device=x.device)
            self.inference_hits += int((torch.tensor(tasks, device=x.device)[pick[first]] == task_id).sum())
            self.inference_total += len(first)
        return logits[pick, torch.arange(len(x), device=x.device)]

    # ---- checkpoints: what was learnt; the layer list and hooks are rebuilt by setup
    def state_dict(self) -> dict:
        return {"learnt": list(self.learnt), "inference_hits": self.inference_hits,
                "inference_total": self.inference_total}

    # ---- reporting
    def extra_metrics(self) -> dict:
        model = self.ctx.model
        last = len(self.ctx.stream) - 1
        per_task = sum(p.numel() for p in model.task_adapters[last].parameters())
        head = sum(p.numel() for p in model.head.heads[last].parameters())
        trunk = sum(p.numel() for p in model.features.parameters())
        row = {"adapter_parameters_per_task": per_task, "head_parameters_per_task": head,
               "added_bytes_per_task": 4 * (per_task + head), "trunk_parameters": trunk,
               "added_fraction_per_task": (per_task + head) / max(1, trunk)}
        if self.task_inference != "given":
            row["task_inference_acc"] = self.inference_hits / max(1, self.inference_total)
        return row
