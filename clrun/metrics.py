"""Continual-learning metrics as pure functions of the accuracy (or error) matrix.

``R`` has shape (T+1, T): row 0 is the untrained model (``init``, the b_j of forward transfer), row i >= 1 is
after training task i, column j is task j. With T tasks and R_{i,j} in that indexing:

* ACC        = 1/T     sum_j R_{T,j}
* forgetting = 1/(T-1) sum_{j<T} max_{1<=l<T} R_{l,j} - R_{T,j}        (Chaudhry et al. 2018)
* BWT        = 1/(T-1) sum_{j<T} R_{T,j} - R_{j,j}                     (Lopez-Paz & Ranzato 2017)
* FWT        = 1/(T-1) sum_{j>=2} R_{j-1,j} - R_{0,j}                  (against row init)
* learning accuracy = 1/T sum_j R_{j,j}

Forgetting, BWT and FWT need two tasks; with T = 1 they are NaN.

When R holds a measure where lower is better (a regression stream's mean squared error), ACC and learning
accuracy are the mean errors, and the other three keep their meaning and sign: forgetting is how far each
task's error rose above its lowest (>= 0 is worse), BWT and FWT are the error drops (> 0 is better):

* forgetting = 1/(T-1) sum_{j<T} R_{T,j} - min_{1<=l<T} R_{l,j}
* BWT        = 1/(T-1) sum_{j<T} R_{j,j} - R_{T,j}
* FWT        = 1/(T-1) sum_{j>=2} R_{0,j} - R_{j-1,j}
"""

from __future__ import annotations

import math

import numpy as np

MEASURES = ("accuracy", "mse")  # what R holds: accuracy (higher is better) or mean squared error (lower is better)
LOWER_IS_BETTER = frozenset({"mse"})


def _check(R: np.ndarray) -> tuple[np.ndarray, int]:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] + 1 or R.shape[1] < 1:
        raise ValueError(f"R must have shape (T+1, T) with row 0 = init; got {R.shape}")
    return R, R.shape[1]


def average_accuracy(R: np.ndarray) -> float:
    R, T = _check(R)
    return float(R[T].mean())


def learning_accuracy(R: np.ndarray) -> float:
    R, T = _check(R)
    return float(np.mean([R[j, j - 1] for j in range(1, T + 1)]))


def average_forgetting(R: np.ndarray, lower_is_better: bool = False) -> float:
    R, T = _check(R)
    if T < 2:
        return math.nan
    if lower_is_better:
        return float(np.mean([R[T, j] - R[1:T, j].min() for j in range(T - 1)]))
    return float(np.mean([R[1:T, j].max() - R[T, j] for j in range(T - 1)]))


def backward_transfer(R: np.ndarray, lower_is_better: bool = False) -> float:
    R, T = _check(R)
    if T < 2:
        return math.nan
    sign = -1.0 if lower_is_better else 1.0
    return float(sign * np.mean([R[T, j] - R[j + 1, j] for j in range(T - 1)]))


def forward_transfer(R: np.ndarray, lower_is_better: bool = False) -> float:
    R, T = _check(R)
    if T < 2:
        return math.nan
    sign = -1.0 if lower_is_better else 1.0
    return float(sign * np.mean([R[j, j] - R[0, j] for j in range(1, T)]))


def seen_average(R: np.ndarray) -> np.ndarray:
    """After each task i, the mean of R over the tasks seen so far, 1/i sum_{j<=i} R_{i,j} (the learning curve
    of Javed & White's Fig. 3 and of most incremental-learning plots); its last entry is ACC."""
    R, T = _check(R)
    return np.array([R[i, :i].mean() for i in range(1, T + 1)])


def all_metrics(R: np.ndarray, lower_is_better: bool = False) -> dict[str, float]:
    """Every metric of R; ``lower_is_better`` for an error measure (a regression stream's MSE)."""
    return {
        "ACC": average_accuracy(R),
        "forgetting": average_forgetting(R, lower_is_better),
        "BWT": backward_transfer(R, lower_is_better),
        "FWT": forward_transfer(R, lower_is_better),
        "learning_accuracy": learning_accuracy(R),
    }
