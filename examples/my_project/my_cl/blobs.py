"""Drifting blobs: the same classes in every task, each task moving every class mean by a fresh random offset
of size ``drift`` (domain-IL: one head, inputs that shift, so a network tuned to the new task forgets the old)."""

from __future__ import annotations

import torch

from clrun.streams import Stream, Task


def drifting_blobs(n_tasks: int = 4, n_classes: int = 4, dim: int = 16, n_train: int = 100, n_test: int = 50,
                   drift: float = 3.0, noise: float = 2.0, stream_seed: int = 0, **_ignored) -> Stream:
    """A clrun stream factory: returns a Stream of Tasks whose labels are local (0..n_classes-1). clrun also
    passes data_root, download and normalize, which generated data does not need."""
    g = torch.Generator().manual_seed(stream_seed)
    means = torch.randn(n_classes, dim, generator=g)

    def draw(centre: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n_classes).repeat_interleave(n)
        return centre[y] + noise * torch.randn(len(y), dim, generator=g), y

    tasks = []
    for t in range(n_tasks):
        centre = means + drift * torch.randn(n_classes, dim, generator=g)
        (train_x, train_y), (eval_x, eval_y) = draw(centre, n_train), draw(centre, n_test)
        tasks.append(Task(t, f"drift{t}", list(range(n_classes)), train_x, train_y, eval_x, eval_y))
    return Stream("drifting_blobs", tasks, in_shape=(dim,), data_source="generated")
