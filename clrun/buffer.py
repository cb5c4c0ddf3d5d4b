"""Replay memory: a fixed number of stored samples (inputs in their task's view, unit labels, task ids and,
where a method needs them, the logits seen at insertion), filled without per-sample Python.

* ``reservoir``: Vitter's algorithm R over the whole stream: item n (0-based) is kept with probability
  capacity / (n + 1), replacing a uniformly chosen slot; the buffer is a uniform sample of everything seen.
* ``class_balanced``: every seen class gets an equal share of the slots (classes with fewer samples give
  their spare slots to the others); within a class, a uniform sample of that class's stream, kept by giving
  each sample a random key and holding the smallest keys per class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

POLICIES = ("reservoir", "class_balanced")


def balanced_quotas(available: Tensor, capacity: int) -> Tensor:
    """Slots per class: equal shares of ``capacity`` (differing by at most one), never more than available."""
    quota = torch.zeros_like(available)
    open_ = available > 0
    remaining = capacity
    while remaining > 0 and bool(open_.any()):
        n_open = int(open_.sum())
        share = remaining // n_open
        if share == 0:  # fewer slots than classes still open: one each to the first ones
            idx = open_.nonzero().squeeze(1)[:remaining]
            quota[idx] += 1
            break
        give = torch.minimum(available - quota, torch.full_like(quota, share)) * open_
        quota += give
        remaining -= int(give.sum())
        open_ = open_ & (quota < available)
    return quota


def per_class_first(labels: Tensor, n: int) -> Tensor:
    """Mask keeping, of ``labels`` in a random order, the first few of each class: ``n`` in all, split
    equally over the classes (a class with fewer samples gives its spare slots to the others)."""
    _, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    quota = balanced_quotas(counts, n)
    # rank of each sample among its class's samples, in the given order (a stable sort keeps that order)
    by_class = torch.sort(inverse, stable=True).indices
    rank = torch.empty_like(inverse)
    rank[by_class] = torch.arange(len(labels)) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    return rank < quota[inverse]


class ReplayBuffer:
    def __init__(self, capacity: int, policy: str = "reservoir", device: torch.device | str = "cpu", seed: int = 0):
        if policy not in POLICIES:
            raise ValueError(f"buffer_policy={policy!r} is not allowed; use one of {', '.join(POLICIES)}")
        if capacity < 1:
            raise ValueError(f"buffer={capacity} must be at least 1 for a replay method")
        self.capacity, self.policy, self.device = int(capacity), policy, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.n_seen = 0
        self.size = 0
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.task_ids: Tensor | None = None
        self.logits: Tensor | None = None
        self.keys: Tensor | None = None  # class_balanced: each stored sample's random priority

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict:  # torch.Generator does not pickle; its state does
        state = dict(self.__dict__)
        state["generator"] = self.generator.get_state()
        return state

    def __setstate__(self, state: dict) -> None:
        gen_state = state.pop("generator")
        self.__dict__.update(state)
        self.generator = torch.Generator()
        self.generator.set_state(gen_state)

    def _allocate(self, x: Tensor, y: Tensor, logits: Tensor | None) -> None:
        n = self.capacity
        self.x = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=self.device)
        self.y = torch.empty(n, dtype=y.dtype, device=self.device)  # labels, or a regression stream's values
        self.task_ids = torch.empty(n, dtype=torch.long, device=self.device)
        if logits is not None:
            self.logits = torch.empty((n, *logits.shape[1:]), dtype=logits.dtype, device=self.device)
        self.keys = torch.empty(n, device=self.device)

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor, task_ids: Tensor, logits: Tensor | None = None) -> None:
        if self.x is None:
            self._allocate(x, y, logits)
        if self.policy == "reservoir":
            self._reservoir_add(x, y, task_ids, logits)
        else:
            self._class_balanced_add(x, y, task_ids, logits)
        self.n_seen += len(y)

    def _write(self, slots: Tensor, x: Tensor, y: Tensor, task_ids: Tensor, logits: Tensor | None,
               keys: Tensor | None = None) -> None:
        self.x[slots], self.y[slots], self.task_ids[slots] = x, y, task_ids
        if self.logits is not None and logits is not None:
            self.logits[slots] = logits
        if keys is not None:
            self.keys[slots] = keys

    def _reservoir_add(self, x: Tensor, y: Tensor, task_ids: Tensor, logits: Tensor | None) -> None:
        # the slots on the host in numpy: a dozen tiny torch ops cost ~0.2 ms a batch, a replay step's largest
        # per-step cost at batch 10; the draws are the generator's, in float32 as a torch product would be
        n = len(y)
        position = self.n_seen + np.arange(n)  # global index of each incoming item
        uniform = torch.rand(n, generator=self.generator).numpy()
        draw = (uniform * (position + 1).astype(np.float32)).astype(np.int64)
        slot = np.where(position < self.capacity, position, draw)
        accepted = np.flatnonzero(slot < self.capacity)
        self.size = min(self.capacity, self.n_seen + n)
        if not len(accepted):  # most batches once the stream is long (each item kept with p = capacity / (n + 1))
            return
        # several items of one batch may hit one slot: the later one wins, as in the sequential algorithm
        slots, last_in_reversed = np.unique(slot[accepted][::-1], return_index=True)
        items = torch.from_numpy(accepted[::-1][last_in_reversed].copy()).to(y.device)
        self._write(torch.from_numpy(slots).to(self.device), x[items], y[items], task_ids[items],
                    None if logits is None else logits[items])

    def _class_balanced_add(self, x: Tensor, y: Tensor, task_ids: Tensor, logits: Tensor | None) -> None:
        new_keys = torch.rand(len(y), generator=self.generator).to(self.device)
        n_old = self.size
        cand_y = torch.cat([self.y[:n_old], y.to(self.device)])
        cand_keys = torch.cat([self.keys[:n_old], new_keys])
        n_classes = int(cand_y.max()) + 1
        quota = balanced_quotas(torch.bincount(cand_y, minlength=n_classes), self.capacity)
        # group candidates by class, smallest keys first, and keep each class's first `quota` of them
        order = torch.argsort(cand_keys)
        order = order[torch.argsort(cand_y[order], stable=True)]
        grouped = cand_y[order]
        starts = torch.searchsorted(grouped, grouped, right=False)
        rank = torch.arange(len(order), device=self.device) - starts
        keep = order[rank < quota[grouped]]
        old_keep, new_keep = keep[keep < n_old], keep[keep >= n_old] - n_old
        # rebuild the stored arrays: survivors first, then the new arrivals
        k_old = len(old_keep)
        store = [t for t in (self.x, self.y, self.task_ids, self.logits, self.keys) if t is not None]
        for t in store:
            t[:k_old] = t[old_keep].clone()
        nk = new_keep.to(y.device)
        slots = torch.arange(k_old, k_old + len(new_keep), device=self.device)
        self._write(slots, x[nk], y[nk], task_ids[nk], None if logits is None else logits[nk], new_keys[new_keep])
        self.size = k_old + len(new_keep)

    def sample(self, n: int, replace: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``n`` stored samples without replacement (all of them if fewer are stored); ``replace``: min(n, size)
        independent uniform draws."""
        if replace:
            idx = torch.randint(self.size, (min(n, self.size),), generator=self.generator).to(self.device)
        else:
            idx = torch.randperm(self.size, generator=self.generator)[:n].to(self.device)
        logits = self.logits[idx] if self.logits is not None else None
        return self.x[idx], self.y[idx], self.task_ids[idx], logits

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.x, self.y, self.task_ids, self.logits) if t is not None)
