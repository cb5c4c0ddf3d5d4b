"""Task streams and scenario rules: the one place that decides what a task is and what the model may output.

A benchmark turns a dataset into tasks whose labels are *local* (0..k-1 within the task). A scenario maps
local labels to output units and says which units compete at train and test time:

* ``task_il``  : tasks get disjoint units (a shared output layer with the other tasks' logits masked, which
  is one head per task); the task id selects them.
* ``domain_il``: one head of k units shared by every task; no task id.
* ``class_il`` : tasks get disjoint units; the candidates are all units of the tasks seen so far.

A stream's ``measure`` says what R holds: ``accuracy`` (classification, higher is better) or ``mse`` (regression,
lower is better: each task is one real-valued output unit, its own under task_il, one shared under domain_il).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clrun import data as datamod
from clrun.errors import ConfigError

SCENARIOS = ("task_il", "domain_il", "class_il")


@dataclass
class Task:
    id: int
    name: str
    classes: list[int]  # dataset labels taught by this task, in local-label order (none for regression)
    train_x: Tensor
    train_y: Tensor  # local labels, or real-valued targets on a regression stream
    eval_x: Tensor  # the split R is measured on (test, or validation when val_fraction > 0)
    eval_y: Tensor
    perm: Tensor | None = None  # pixel permutation applied per batch (permuted MNIST), never materialised

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def inputs(self, x: Tensor) -> Tensor:
        """The task's view of raw inputs ``x`` (applies the permutation, if any)."""
        if self.perm is None:
            return x
        # index_select, not x[:, perm]: the same gather 4-6x faster on CPU (0.8 -> 0.13 ms for a batch of 128)
        return torch.index_select(x.flatten(1), 1, self.perm).view_as(x)


@dataclass
class Stream:
    name: str
    tasks: list[Task]
    in_shape: tuple[int, ...]
    data_source: str
    eval_split: str = "test"
    meta: dict = field(default_factory=dict)
    measure: str = "accuracy"  # one of clrun.metrics.MEASURES

    @property
    def regression(self) -> bool:
        return self.measure == "mse"

    def __len__(self) -> int:
        return len(self.tasks)

    def to(self, device: torch.device) -> Stream:
        """Move every tensor to ``device`` once (shared tensors stay shared)."""
        moved: dict[int, Tensor] = {}

        def mv(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            if id(t) not in moved:
                moved[id(t)] = t.to(device)
            return moved[id(t)]

        for task in self.tasks:
            task.train_x, task.train_y = mv(task.train_x), mv(task.train_y)
            task.eval_x, task.eval_y = mv(task.eval_x), mv(task.eval_y)
            task.perm = mv(task.perm)
        return self


class Scenario:
    """Maps local labels to output units and gives the candidate-unit mask for any (task ids, seen-so-far)."""

    def __init__(self, name: str, stream: Stream, train_units: str = "seen"):
        if name not in SCENARIOS:
            raise ConfigError(f"scenario={name!r} is unknown; allowed: {', '.join(SCENARIOS)}")
        if train_units not in ("seen", "all") or (train_units == "all" and name != "class_il"):
            raise ConfigError(f"scenario.train_units={train_units!r} is not allowed for {name}: class_il takes "
                              "'seen' (the loss spans the classes seen so far) or 'all' (the whole head, as in "
                              "mammoth); other scenarios take 'seen'")
        self.regression = stream.regression
        if self.regression and name == "class_il":
            raise ConfigError(f"scenario=class_il needs classes to compete; the regression stream {stream.name} "
                              "takes domain_il (one output shared by every task) or task_il (an output per task)")
        self.name = name
        self.train_units = train_units
        sizes = [1 if self.regression else t.n_classes for t in stream.tasks]
        if name == "domain_il":
            self.offsets = [0] * len(sizes)
            self.n_outputs = max(sizes)
        else:
            self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            self.n_outputs = sum(sizes)
        units = torch.zeros(len(sizes), self.n_outputs, dtype=torch.bool)
        for i, (off, k) in enumerate(zip(self.offsets, sizes)):
            units[i, off : off + k] = True
        self.task_units = units  # [T, n_outputs]: the units that task i's labels live on
        self.seen_units = units.cumsum(0).bool()  # [T, n_outputs]: units of tasks 0..i
        self.first_unit = torch.as_tensor(self.offsets)  # [T]: a regression task's one output unit

    @property
    def uses_task_id(self) -> bool:
        return self.name == "task_il"

    def to(self, device: torch.device) -> Scenario:
        self.task_units, self.seen_units = self.task_units.to(device), self.seen_units.to(device)
        self.first_unit = self.first_unit.to(device)
        return self

    def targets(self, local_y: Tensor, task_ids: Tensor | int) -> Tensor:
        """Output-unit targets for local labels of the given task(s) (a regression stream's values as they are)."""
        if self.name == "domain_il" or self.regression:
            return local_y
        offsets = torch.as_tensor(self.offsets, device=local_y.device)
        return local_y + offsets[task_ids]

    def mask(self, task_ids: Tensor, upto: int) -> Tensor | None:
        """Bool [B, n_outputs] of the units that compete for each sample, or None when all do.

        ``upto`` is the last task whose units are 'seen' (class-IL candidates)."""
        if self.name == "domain_il":
            return None
        if self.name == "task_il":
            return self.task_units[task_ids]
        return self.seen_units[upto].expand(*task_ids.shape, -1)

    def candidates(self, task_ids: Tensor, upto: int) -> Tensor:
        """Like :meth:`mask`, but always a bool [B, n_outputs] tensor."""
        m = self.mask(task_ids, upto)
        if m is None:
            return torch.ones(len(task_ids), self.n_outputs, dtype=torch.bool, device=task_ids.device)
        return m

    def masked(self, logits: Tensor, task_ids: Tensor, upto: int) -> Tensor:
        """Logits with non-candidate units pushed to a huge negative (finite, so KL terms stay finite)."""
        m = self.mask(task_ids, upto)
        if m is None:
            return logits
        return logits.masked_fill(~m, torch.finfo(logits.dtype).min / 2)

    def train_masked(self, logits: Tensor, task_ids: Tensor, upto: int, units: str | None = None) -> Tensor:
        """The logits the training loss sees: :meth:`masked`, or the whole class-IL head with train_units=all
        (not-yet-seen classes are pushed down from the first task, as in mammoth). ``units`` overrides
        ``train_units`` (a method whose published code spans other units than the protocol's)."""
        return logits if (units or self.train_units) == "all" else self.masked(logits, task_ids, upto)

    def values(self, outputs: Tensor, task_ids: Tensor) -> Tensor:
        """A regression stream's predictions: each sample's value on its task's output unit, [B]."""
        return outputs.gather(-1, self.first_unit[task_ids].unsqueeze(-1)).squeeze(-1)

    def loss(self, logits: Tensor, y: Tensor, task_ids: Tensor, upto: int, units: str | None = None) -> Tensor:
        """The data loss: cross-entropy over the candidates of :meth:`train_masked`, or on a regression stream
        the mean squared error of :meth:`values`."""
        if self.regression:
            return F.mse_loss(self.values(logits, task_ids), y)
        return F.cross_entropy(self.train_masked(logits, task_ids, upto, units), y)

    def row_losses(self, logits: Tensor, y: Tensor, task_ids: Tensor, upto: int, units: str | None = None
                   ) -> Tensor | None:
        """Each row's term of :meth:`loss`, for rows on any leading axes (logits [..., units], y and task_ids
        [...]): the mean of a batch's rows is its loss, with the same gradient. None on a regression stream (its
        squared error's gradient would round otherwise)."""
        if self.regression:
            return None
        masked = self.train_masked(logits, task_ids, upto, units)
        return F.cross_entropy(masked.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)

    def score(self, scores: Tensor, y: Tensor, task_ids: Tensor) -> Tensor:
        """The measure summed over a batch (0-d, on the device): correct predictions (``scores`` already masked),
        or on a regression stream the squared errors. Batches stacked on a leading axis ([N, B, units]) give one
        sum each ([N])."""
        if self.regression:
            return (self.values(scores, task_ids) - y).square().sum(-1)
        return (scores.argmax(-1) == y).sum(-1)

    def train_candidates(self, task_ids: Tensor, upto: int, units: str | None = None) -> Tensor:
        """Bool [B, n_outputs] of the units :meth:`train_masked` lets compete (every unit with train_units=all)."""
        if (units or self.train_units) == "all":
            return torch.ones(len(task_ids), self.n_outputs, dtype=torch.bool, device=task_ids.device)
        return self.candidates(task_ids, upto)


# ----------------------------------------------------------------------------------------------------------
# benchmarks: each builds a Stream of tasks with local labels


def _split_val(ds: datamod.Dataset, val_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """(train_x, train_y, eval_x, eval_y, eval_split): a stratified seeded validation split, or the test set."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"benchmark.val_fraction={val_fraction} must be in [0, 1)")
    if val_fraction == 0:
        return ds.train_x, ds.train_y, ds.test_x, ds.test_y, "test"
    g = torch.Generator().manual_seed(seed + 1)
    val_idx = []
    for c in ds.train_y.unique():
        idx = (ds.train_y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_idx.append(idx[: max(1, int(round(val_fraction * len(idx))))])
    val = torch.cat(val_idx)
    keep = torch.ones(len(ds.train_y), dtype=torch.bool)
    keep[val] = False
    return ds.train_x[keep], ds.train_y[keep], ds.train_x[val], ds.train_y[val], "val"


def _check_n_tasks(n_tasks: int, low: int, high: int, what: str) -> None:
    if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or not low <= n_tasks <= high:
        raise ConfigError(f"benchmark.n_tasks={n_tasks!r} is not allowed for {what}: use an integer in [{low}, {high}]")


def _class_split(name, x, y, ex, ey, class_order: list[int], n_tasks: int, offset: int = 0) -> list[Task]:
    n_classes = len(class_order)
    _check_n_tasks(n_tasks, 1, n_classes, f"{name} ({n_classes} classes)")
    if n_classes % n_tasks:
        raise ConfigError(f"benchmark.n_tasks={n_tasks} must divide the {n_classes} classes of {name}")
    per = n_classes // n_tasks
    groups = [class_order[i * per : (i + 1) * per] for i in range(n_tasks)]
    data, key = (x, y, ex, ey), (tuple(class_order), n_tasks)
    last = _LAST_SPLIT[0] if _LAST_SPLIT else None
    if last is not None and last[1] == key and all(a is b for a, b in zip(last[0], data)):
        parts = last[2]
    else:
        # one lookup table maps dataset labels to local labels for every task at once
        local = torch.empty(max(class_order) + 1, dtype=torch.int64)
        parts = []
        for classes in map(torch.tensor, groups):
            local[classes] = torch.arange(per)
            tr, te = torch.isin(y, classes), torch.isin(ey, classes)
            parts.append((x[tr], local[y[tr]], ex[te], local[ey[te]]))
        _LAST_SPLIT[:] = [(data, key, parts)]
    tasks = []
    for i, (classes, part) in enumerate(zip(groups, parts)):
        label = "-".join(str(c) for c in classes) if per <= 5 else f"{classes[0]}..{classes[-1]}"
        tasks.append(Task(offset + i, f"{name}:{label}", list(classes), *part))
    return tasks


# the last split's task tensors, with the data and split they came from: the seeds of a sweep built one after the
# other in a process (a stacked model's) that split the same data the same way (a fixed class order) share them
# instead of copying the dataset once a seed; nothing writes into a task's tensors
_LAST_SPLIT: list[tuple[tuple[Tensor, ...], tuple, list[tuple[Tensor, ...]]]] = []


SHUFFLE_RNGS = ("torch", "numpy")


def _order(n_classes: int, seed: int, fixed: bool, shuffle_rng: str = "torch") -> list[int]:
    if fixed:
        return list(range(n_classes))
    if shuffle_rng == "numpy":
        # van de Ven & Tolias's data.py: np.random.seed(seed); class c is relabelled p[c] and task k takes the new
        # labels 2k, 2k+1, so the task's classes are p's inverse, in the order of their new labels
        p = np.random.RandomState(seed).permutation(n_classes)
        return np.argsort(p).tolist()
    if shuffle_rng != "torch":
        raise ConfigError(f"benchmark.shuffle_rng={shuffle_rng!r} is not one of {', '.join(SHUFFLE_RNGS)}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_classes, generator=g).tolist()


def split(dataset: str = "mnist", n_tasks: int = 5, stream_seed: int = 0, fixed_class_order: bool = False,
          shuffle_rng: str = "torch", val_fraction: float = 0.0, data_root: str | None = None, download: bool = True,
          normalize: bool = True, name: str | None = None, **dataset_kwargs) -> Stream:
    """Class-incremental split of ``dataset`` into ``n_tasks`` groups of classes (order fixed by seed, or
    0-1/2-3/... with ``fixed_class_order``). ``shuffle_rng="numpy"`` draws the order as van de Ven & Tolias's code
    does, so seed s pairs the classes as their run s did."""
    ds = _load(dataset, data_root, download, stream_seed, dataset_kwargs, normalize)
    x, y, ex, ey, split_name = _split_val(ds, val_fraction, stream_seed)
    order = _order(ds.n_classes, stream_seed, fixed_class_order, shuffle_rng)
    tasks = _class_split(name or f"split_{dataset}", x, y, ex, ey, order, n_tasks)
    return Stream(name or f"split_{dataset}", tasks, tuple(ds.train_x.shape[1:]), ds.source, split_name,
                  {"class_order": order})


def _train_subset(x: Tensor, y: Tensor, n: int | None, seed: int, task_id: int) -> tuple[Tensor, Tensor]:
    """``n`` training samples drawn for one task (GEM's 1,000 per task), or all of them when ``n`` is null."""
    if n is None:
        return x, y
    if not isinstance(n, int) or not 1 <= n <= len(y):
        raise ConfigError(f"benchmark.train_per_task={n!r} must be an integer in [1, {len(y)}] or null (all)")
    g = torch.Generator().manual_seed(seed * 1009 + task_id)
    idx = torch.randperm(len(y), generator=g)[:n]
    return x[idx], y[idx]


def _pad(x: Tensor, pad: int) -> Tensor:
    """``x`` with ``pad`` pixels of background (the image minimum) on every side (MNIST 28x28 -> 32x32)."""
    if not isinstance(pad, int) or pad < 0:
        raise ConfigError(f"benchmark.pad={pad!r} must be a non-negative integer")
    return F.pad(x, (pad, pad, pad, pad), value=float(x.amin())) if pad else x


def permuted(dataset: str = "mnist", n_tasks: int = 10, stream_seed: int = 0, val_fraction: float = 0.0,
             data_root: str | None = None, download: bool = True, normalize: bool = True, name: str | None = None,
             train_per_task: int | None = None, pad: int = 0, **dataset_kwargs) -> Stream:
    """Each task is the whole dataset (or ``train_per_task`` samples of it) under a fixed pixel permutation;
    task 1 is the identity. ``pad`` pads the images first, so the permutation also scatters the border."""
    _check_n_tasks(n_tasks, 1, 10_000, "permuted streams")
    ds = _load(dataset, data_root, download, stream_seed, dataset_kwargs, normalize)
    x, y, ex, ey, split_name = _split_val(ds, val_fraction, stream_seed)
    x, ex = _pad(x, pad), _pad(ex, pad)
    n_pix = math.prod(x.shape[1:])
    g = torch.Generator().manual_seed(stream_seed)
    classes = list(range(ds.n_classes))
    tasks = []
    for i in range(n_tasks):
        perm = None if i == 0 else torch.randperm(n_pix, generator=g)
        # the same tensors serve every task: the permutation is applied per batch
        tx, ty = _train_subset(x, y, train_per_task, stream_seed, i)
        tasks.append(Task(i, f"perm{i}", classes, tx, ty, ex, ey, perm=perm))
    return Stream(name or f"permuted_{dataset}", tasks, tuple(x.shape[1:]), ds.source, split_name)


INTERPOLATIONS = ("bilinear", "nearest")


def _rotate(x: Tensor, degrees: float, chunk: int = 8192, interpolation: str = "bilinear") -> Tensor:
    """Rotate image batch ``x`` by ``degrees`` (``interpolation`` bilinear or nearest, background = the image
    minimum)."""
    if degrees % 360 == 0:
        return x
    theta = math.radians(degrees)
    rot = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0], [math.sin(theta), math.cos(theta), 0.0]])
    bg = x.amin()
    out = torch.empty_like(x)
    for s in range(0, len(x), chunk):  # chunked to bound the sampling grid's memory
        xb = x[s : s + chunk] - bg
        grid = F.affine_grid(rot.expand(len(xb), 2, 3), list(xb.shape), align_corners=False)
        out[s : s + chunk] = F.grid_sample(xb, grid, mode=interpolation, align_corners=False) + bg
    return out


def rotated(dataset: str = "mnist", n_tasks: int = 5, angles: list[float] | None = None, max_angle: float = 180.0,
            random_angles: bool = False, stream_seed: int = 0, val_fraction: float = 0.0,
            data_root: str | None = None, download: bool = True, normalize: bool = True, name: str | None = None,
            train_per_task: int | None = None, interpolation: str = "bilinear", **dataset_kwargs) -> Stream:
    """Each task rotates the whole dataset (or ``train_per_task`` samples of it) by a fixed angle: ``angles``,
    or evenly spaced in [0, max_angle), or with ``random_angles`` drawn uniformly in [0, max_angle) from
    ``stream_seed`` (DER's R-MNIST). ``interpolation``: bilinear, or nearest (torchvision's and PIL's default
    rotation, which mammoth and GEM use)."""
    _check_n_tasks(n_tasks, 1, 1000, "rotated streams")
    if interpolation not in INTERPOLATIONS:  # checked before the dataset is loaded
        raise ConfigError(f"benchmark.interpolation={interpolation!r} must be one of {', '.join(INTERPOLATIONS)}")
    if angles and random_angles:
        raise ConfigError("benchmark.angles and benchmark.random_angles=true both set the angles: pick one")
    if random_angles:
        g = torch.Generator().manual_seed(stream_seed)
        angles = (torch.rand(n_tasks, generator=g, dtype=torch.float64) * max_angle).tolist()
    angles = list(angles) if angles else [i * max_angle / n_tasks for i in range(n_tasks)]
    if len(angles) != n_tasks:
        raise ConfigError(f"benchmark.angles has {len(angles)} entries but benchmark.n_tasks={n_tasks}")
    ds = _load(dataset, data_root, download, stream_seed, dataset_kwargs, normalize)
    x, y, ex, ey, split_name = _split_val(ds, val_fraction, stream_seed)
    classes = list(range(ds.n_classes))
    tasks = []
    for i, a in enumerate(angles):
        tx, ty = _train_subset(x, y, train_per_task, stream_seed, i)
        tasks.append(Task(i, f"rot{a:g}", classes, _rotate(tx, a, interpolation=interpolation), ty,
                          _rotate(ex, a, interpolation=interpolation), ey))
    return Stream(name or f"rotated_{dataset}", tasks, tuple(x.shape[1:]), ds.source, split_name,
                  {"angles": angles})


def domains(dataset: str = "mnist", n_tasks: int = 3, angle: float = 45.0, noise_std: float = 1.0,
            stream_seed: int = 0, val_fraction: float = 0.0, data_root: str | None = None,
            download: bool = True, normalize: bool = True, name: str | None = None, **dataset_kwargs) -> Stream:
    """The reference text's Domain-IL example: clean -> rotated -> noisy (Gaussian noise, fixed by seed)."""
    _check_n_tasks(n_tasks, 1, 3, "mnist_domains (clean, rotated, noisy)")
    ds = _load(dataset, data_root, download, stream_seed, dataset_kwargs, normalize)
    x, y, ex, ey, split_name = _split_val(ds, val_fraction, stream_seed)
    g = torch.Generator().manual_seed(stream_seed)

    def noisy(t: Tensor) -> Tensor:
        return t + noise_std * torch.randn(t.shape, generator=g)

    views = [("clean", x, ex), (f"rot{angle:g}", _rotate(x, angle), _rotate(ex, angle)), ("noisy", noisy(x), noisy(ex))]
    classes = list(range(ds.n_classes))
    tasks = [Task(i, n, classes, tx, y, tex, ey) for i, (n, tx, tex) in enumerate(views[:n_tasks])]
    return Stream(name or f"{dataset}_domains", tasks, tuple(x.shape[1:]), ds.source, split_name)


def sequence(datasets: list[str], stream_seed: int = 0, val_fraction: float = 0.0, data_root: str | None = None,
             download: bool = True, name: str | None = None, n_tasks: int | None = None,
             normalize: bool = True) -> Stream:
    """One task per dataset, in order (CIFAR-10 then SVHN: the forgetting demo). Inputs must share a shape."""
    if n_tasks is not None and n_tasks != len(datasets):
        raise ConfigError(f"benchmark.n_tasks={n_tasks} must equal the number of datasets ({len(datasets)})")
    tasks, shape, sources = [], None, set()
    for i, dname in enumerate(datasets):
        ds = _load(dname, data_root, download, stream_seed, {}, normalize)
        x, y, ex, ey, split_name = _split_val(ds, val_fraction, stream_seed)
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise ConfigError(f"benchmark.datasets: {dname} inputs {tuple(x.shape[1:])} differ from {shape}")
        shape = tuple(x.shape[1:])
        sources.add(ds.source)
        tasks.append(Task(i, dname, list(range(ds.n_classes)), x, y, ex, ey))
    return Stream(name or "_".join(datasets), tasks, shape, "+".join(sorted(sources)), split_name)


@dataclass
class SineFunctions:
    """Javed & White's incremental sine waves: function i is y = a_i sin(x + p_i). A sample of function i in
    slot k (its place in the stream or in a meta-training trajectory) has input [one-hot(k) of ``slots``, x]
    with x uniform in ``x_range``, as in their code (datasets/task_sampler.py, SampleSine)."""

    amplitude: Tensor  # [F]
    phase: Tensor  # [F]
    slots: int
    x_range: tuple[float, float] = (-5.0, 5.0)

    @classmethod
    def draw(cls, n: int, slots: int, generator: torch.Generator, amplitude: tuple[float, float] = (0.1, 5.1),
             phase: tuple[float, float] = (0.0, math.pi), x_range: tuple[float, float] = (-5.0, 5.0)) -> SineFunctions:
        """``n`` functions with amplitude and phase uniform in their ranges (their code: amplitude (u + 0.02) x 5,
        phase u x pi)."""
        (a_lo, a_hi), (p_lo, p_hi) = amplitude, phase
        amp = a_lo + (a_hi - a_lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        ph = p_lo + (p_hi - p_lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        return cls(amp, ph, slots, (float(x_range[0]), float(x_range[1])))

    def __len__(self) -> int:
        return len(self.amplitude)

    def sample(self, functions: Tensor, slots: Tensor, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` fresh points of each of ``functions`` [K] in ``slots`` [K]: inputs [K, n, slots + 1], targets
        [K, n], float32."""
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(len(functions), n, generator=generator, dtype=torch.float64)
        y = self.amplitude[functions, None] * torch.sin(x + self.phase[functions, None])
        inputs = torch.zeros(len(functions), n, self.slots + 1)
        inputs[torch.arange(len(functions)), :, slots] = 1.0
        inputs[..., self.slots] = x.float()
        return inputs, y.float()


def sine(n_tasks: int = 10, train_per_task: int = 1280, eval_per_task: int = 9600, stream_seed: int = 0,
         amplitude: tuple[float, float] = (0.1, 5.1), phase: tuple[float, float] = (0.0, math.pi),
         x_range: tuple[float, float] = (-5.0, 5.0), name: str | None = None, data_root: str | None = None,
         download: bool = True, normalize: bool = True) -> Stream:
    """Incremental sine waves (Javed & White 2019), a regression stream: task k is one sine function, its inputs
    carry the one-hot of k, R holds mean squared errors. Javed & White train each function for 40 batches of 32
    (``train_per_task`` 1280) and measure it on 300 batches of 32 (``eval_per_task`` 9600). Generated: the data
    options (data_root, download, normalize) do not apply."""
    _check_n_tasks(n_tasks, 1, 10_000, "sine streams")
    for key, value in (("train_per_task", train_per_task), ("eval_per_task", eval_per_task)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"benchmark.{key}={value!r} must be a positive integer")
    for key, pair in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
        if len(pair) != 2 or not pair[0] < pair[1]:
            raise ConfigError(f"benchmark.{key}={list(pair)!r} must be a range [low, high] with low < high")
    g = torch.Generator().manual_seed(stream_seed)
    functions = SineFunctions.draw(n_tasks, n_tasks, g, tuple(amplitude), tuple(phase), tuple(x_range))
    ids, slots = torch.arange(n_tasks), torch.arange(n_tasks)
    train_x, train_y = functions.sample(ids, slots, train_per_task, g)
    eval_x, eval_y = functions.sample(ids, slots, eval_per_task, g)
    tasks = [Task(k, f"sine{k}", [], train_x[k], train_y[k], eval_x[k], eval_y[k]) for k in range(n_tasks)]
    meta = {"amplitude": functions.amplitude.tolist(), "phase": functions.phase.tolist(),
            "ranges": {"amplitude": list(amplitude), "phase": list(phase), "x_range": list(x_range)}}
    return Stream(name or "sine", tasks, (n_tasks + 1,), "generated", "test", meta, measure="mse")


def _load(dataset: str, root: str | None, download: bool, seed: int, kwargs: dict,
          normalize: bool = True) -> datamod.Dataset:
    if dataset == "synthetic":
        return datamod.synthetic(seed=seed, **kwargs)
    if kwargs:
        raise ConfigError(f"benchmark keys {sorted(kwargs)} are not understood for dataset {dataset}")
    return datamod.load(dataset, root, download, seed, normalize)
