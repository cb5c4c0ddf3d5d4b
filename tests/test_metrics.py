import math

import numpy as np
import pytest

from clrun.metrics import (
    all_metrics,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forward_transfer,
    learning_accuracy,
)

# T = 3. Row 0 = init (b_j), rows 1..3 after each task.
R3 = np.array([
    [0.10, 0.20, 0.30],
    [0.90, 0.25, 0.35],
    [0.70, 0.80, 0.40],
    [0.60, 0.50, 0.95],
])


def test_three_task_values_by_hand():
    assert average_accuracy(R3) == pytest.approx((0.60 + 0.50 + 0.95) / 3)
    assert learning_accuracy(R3) == pytest.approx((0.90 + 0.80 + 0.95) / 3)
    # task 1: max(0.90, 0.70) - 0.60 = 0.30 ; task 2: max(0.25, 0.80) - 0.50 = 0.30
    assert average_forgetting(R3) == pytest.approx(0.30)
    # (0.60 - 0.90 + 0.50 - 0.80) / 2
    assert backward_transfer(R3) == pytest.approx(-0.30)
    # (R[1,2] - b2 + R[2,3] - b3) / 2 = (0.25 - 0.20 + 0.40 - 0.30) / 2
    assert forward_transfer(R3) == pytest.approx(0.075)


def test_forgetting_uses_the_max_over_earlier_rows_not_the_diagonal():
    # task 1 peaks after task 2 (positive transfer), then drops: forgetting counts from the peak, BWT from R_jj
    R = np.array([[0.1, 0.1, 0.1], [0.5, 0.1, 0.1], [0.9, 0.8, 0.1], [0.7, 0.8, 0.9]])
    assert average_forgetting(R) == pytest.approx(((0.9 - 0.7) + (0.8 - 0.8)) / 2)
    assert backward_transfer(R) == pytest.approx(((0.7 - 0.5) + (0.8 - 0.8)) / 2)


def test_two_tasks():
    R = np.array([[0.5, 0.4], [1.0, 0.6], [0.8, 0.9]])
    m = all_metrics(R)
    assert m["ACC"] == pytest.approx(0.85)
    assert m["forgetting"] == pytest.approx(0.2)
    assert m["BWT"] == pytest.approx(-0.2)
    assert m["FWT"] == pytest.approx(0.2)
    assert m["learning_accuracy"] == pytest.approx(0.95)


def test_single_task_has_no_transfer_metrics():
    R = np.array([[0.1], [0.9]])
    m = all_metrics(R)
    assert m["ACC"] == pytest.approx(0.9) and m["learning_accuracy"] == pytest.approx(0.9)
    assert all(math.isnan(m[k]) for k in ("forgetting", "BWT", "FWT"))


def test_positive_backward_transfer_and_no_forgetting():
    R = np.array([[0.0, 0.0], [0.6, 0.0], [0.8, 0.9]])
    assert backward_transfer(R) == pytest.approx(0.2)
    assert average_forgetting(R) == pytest.approx(-0.2)  # Chaudhry's definition can go negative


@pytest.mark.parametrize("shape", [(3, 3), (2, 3), (1, 0), (4,)])
def test_bad_shapes_are_rejected(shape):
    with pytest.raises(ValueError, match="shape"):
        average_accuracy(np.zeros(shape))
