"""Before/after timings of three hot spots that profiling (cProfile on short runs) pointed at:

* the pixel permutation of permuted-MNIST tasks, per batch: advanced indexing ``x[:, perm]`` (before) against
  ``torch.index_select`` (clrun.streams.Task.inputs now);
* SupSup's top-50% mask over a layer's scores, every forward: ``topk`` (before) against a ``kthvalue``
  threshold (clrun.methods.supsup.top_mask now);
* GEM's projection when a constraint is violated: the whole K x P memory-gradient matrix to float64 NumPy
  (before) against only the K x K Gram matrix and G g (clrun.methods.gem.gem_project now).

Each pair is checked to give the same result, then timed (median of ``--reps`` repetitions of ``--inner`` calls).
Writes results/speed/kernels.csv.

    python scripts/speed/kernels.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import quadprog
import torch

from clrun.methods.gem import gem_project
from clrun.methods.supsup import top_mask

HERE = Path(__file__).resolve().parents[2] / "results" / "speed"


def timed(fn: Callable[[], object], reps: int, inner: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        runs.append((time.perf_counter() - t0) / inner)
    return statistics.median(runs) * 1e3


def gem_project_full_numpy(g: torch.Tensor, G: torch.Tensor, margin: float = 0.5, eps: float = 1e-8) -> torch.Tensor:
    """The previous gem_project: every memory gradient converted to float64 NumPy, g~ formed there."""
    mem = G.detach().cpu().double().numpy()
    grad = g.detach().cpu().double().numpy()
    k = mem.shape[0]
    P = mem @ mem.T
    P = 0.5 * (P + P.T) + np.eye(k) * (eps * max(np.trace(P) / k, 1e-30))
    v = quadprog.solve_qp(P, -(mem @ grad), np.eye(k), np.zeros(k) + margin)[0]
    return torch.from_numpy(v @ mem + grad).to(g.dtype)


def topk_mask(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """The previous top_mask."""
    k = max(1, int(round(keep * scores.numel())))
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[scores.flatten().topk(k).indices] = True
    return mask.view_as(scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--inner", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = []

    def pair(what: str, before: Callable, after: Callable, same: bool) -> None:
        b, n = timed(before, a.reps, a.inner), timed(after, a.reps, a.inner)
        rows.append({"kernel": what, "before_ms": b, "after_ms": n, "speedup": b / n, "same_result": same})

    perm = torch.randperm(784)
    for batch in (128, 4096):
        x = torch.randn(batch, 1, 28, 28)
        fancy = lambda x=x: x.flatten(1)[:, perm].view_as(x)  # noqa: E731
        select = lambda x=x: torch.index_select(x.flatten(1), 1, perm).view_as(x)  # noqa: E731
        pair(f"permute a batch of {batch} MNIST images", fancy, select, torch.equal(fancy(), select()))

    scores = torch.randn(400, 784)
    pair("SupSup top-50% mask, 400x784 scores", lambda: topk_mask(scores, 0.5), lambda: top_mask(scores, 0.5),
         torch.equal(topk_mask(scores, 0.5), top_mask(scores, 0.5)))

    P = 784 * 400 + 400 + 400 * 400 + 400 + 400 * 10 + 10  # MLP 784-400-400-10
    for k in (4, 19):
        G = torch.randn(k, P) * 1e-3
        g = -G.sum(0) * 0.7 + 1e-3 * torch.randn(P)
        old, new = gem_project_full_numpy(g, G), gem_project(g, G)
        pair(f"GEM projection, {k} memories x {P:,} parameters", lambda g=g, G=G: gem_project_full_numpy(g, G),
             lambda g=g, G=G: gem_project(g, G), bool(((old - new).norm() / old.norm()) < 1e-4))

    out = pd.DataFrame(rows)
    out.to_csv(HERE / "kernels.csv", index=False, float_format="%.4g")
    print(f"torch {torch.__version__}, {a.threads} threads")
    print(out.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
