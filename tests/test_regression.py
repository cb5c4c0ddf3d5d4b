"""Regression streams (R of mean squared errors, lower is better) and OML, the meta-learning method built on them."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import make_cfg

from clrun import io
from clrun.errors import ConfigError
from clrun.learner import Learner
from clrun.methods.base import Method
from clrun.methods.oml import OML
from clrun.metrics import all_metrics
from clrun.models import MLP
from clrun.report import select
from clrun.run import run
from clrun.streams import Scenario, sine

TINY_SINE = ["benchmark=sine", "benchmark.n_tasks=3", "benchmark.train_per_task=64", "benchmark.eval_per_task=256",
             "quiet=true", "device=cpu", "plots=false", "batch_size=32", "model.hidden=[32]", "lr=0.01"]

# R of mean squared errors: row 0 untrained, row i after task i, column j task j
MSE_R = np.array([[4.0, 4.0, 4.0],
                  [1.0, 5.0, 6.0],
                  [2.0, 1.0, 5.0],
                  [3.0, 2.0, 1.0]])


def test_metrics_of_an_error_matrix_keep_their_meaning():
    m = all_metrics(MSE_R, lower_is_better=True)
    assert m["ACC"] == pytest.approx(2.0)  # the mean final error
    # each old task's error above its lowest: task 1 3 - 1, task 2 2 - 1
    assert m["forgetting"] == pytest.approx(1.5)
    # error drops from just-learned to the end (negative: worse): task 1 1 - 3, task 2 1 - 2
    assert m["BWT"] == pytest.approx(-1.5)
    # error drops against the untrained model before each task is trained: 4 - 5 for tasks 2 and 3
    assert m["FWT"] == pytest.approx(-1.0)
    assert m["learning_accuracy"] == pytest.approx(1.0)
    # read as accuracies, the same matrix has opposite transfers and another forgetting
    acc = all_metrics(MSE_R)
    assert (acc["BWT"], acc["FWT"], acc["forgetting"]) == pytest.approx((1.5, 1.0, 1.0))  # (2 - 3 + 5 - 2) / 2


def test_sine_stream_is_javed_and_whites_functions():
    stream = sine(n_tasks=4, train_per_task=50, eval_per_task=70, stream_seed=3)
    assert stream.measure == "mse" and stream.in_shape == (5,) and len(stream) == 4
    for k, task in enumerate(stream.tasks):
        x, y = task.train_x, task.train_y
        assert x.shape == (50, 5) and task.eval_x.shape == (70, 5) and y.dtype == torch.float32
        assert torch.equal(x[:, :4], F.one_hot(torch.full((50,), k), 4).float())  # one-hot of the task's place
        a, p = stream.meta["amplitude"][k], stream.meta["phase"][k]
        assert 0.1 <= a <= 5.1 and 0 <= p <= math.pi
        assert torch.allclose(y, a * torch.sin(x[:, 4].double() + p).float(), atol=1e-5)
        assert x[:, 4].min() >= -5 and x[:, 4].max() <= 5
    again = sine(n_tasks=4, train_per_task=50, eval_per_task=70, stream_seed=3)
    assert torch.equal(again.tasks[2].train_y, stream.tasks[2].train_y)
    assert stream.meta["amplitude"] != sine(n_tasks=4, stream_seed=4).meta["amplitude"]


def test_scenarios_on_a_regression_stream():
    stream = sine(n_tasks=3, train_per_task=8, eval_per_task=8)
    assert Scenario("domain_il", stream).n_outputs == 1
    task_il = Scenario("task_il", stream)
    assert task_il.n_outputs == 3
    out = torch.arange(6.0).view(2, 3)
    assert task_il.values(out, torch.tensor([2, 0])).tolist() == [2.0, 3.0]  # each task's own unit
    with pytest.raises(ConfigError, match="scenario=class_il needs classes"):
        Scenario("class_il", stream)


def test_R_of_a_regression_run_is_each_tasks_mean_squared_error(tmp_path):
    stream = sine(n_tasks=2, train_per_task=64, eval_per_task=100)
    scenario = Scenario("domain_il", stream)
    model = MLP(stream.in_shape, 1, [16])
    learner = Learner(model, stream, scenario, RegressionNaive(), batch_size=32, eval_batch_size=30)
    learner.train_task(0)
    with torch.no_grad():
        expected = [F.mse_loss(model(t.eval_x)[:, 0], t.eval_y).item() for t in stream.tasks]
    assert learner.evaluate_all(0) == pytest.approx(expected, rel=1e-5)  # in batches of 30, summed exactly

    row = run(make_cfg(*TINY_SINE, "method=naive"), tmp_path / "run")
    R = pd.read_csv(tmp_path / "run" / io.R_FILE, index_col=0).to_numpy(dtype=float)
    assert row["measure"] == "mse" and row["status"] == "completed"
    assert row["ACC"] == pytest.approx(R[-1].mean()) and (R > 0).all()
    # R.csv keeps 6 significant digits
    assert row["forgetting"] == pytest.approx(all_metrics(R, lower_is_better=True)["forgetting"], abs=1e-4)
    log = pd.read_csv(tmp_path / "run" / io.LOG_FILE)
    assert (log["train_acc"] > 0).all()  # the running training MSE
    assert pd.read_csv(tmp_path / "run" / io.METRICS_FILE)["measure"].tolist() == ["mse"]


class RegressionNaive(Method):
    """Plain fine-tuning that declares regression support (the contract's ``measures``)."""

    measures = ("accuracy", "mse")


def test_replay_on_a_regression_stream_stores_real_targets(tmp_path):
    row = run(make_cfg(*TINY_SINE, "method=er", "buffer=50"), tmp_path / "er")
    assert row["status"] == "completed" and row["measure"] == "mse"


@pytest.mark.parametrize("method", ["ewc", "lwf"])
def test_a_classification_method_is_refused_on_a_regression_stream(tmp_path, method):
    with pytest.raises(ConfigError, match=f"method {method} does not support the mse stream sine"):
        run(make_cfg(*TINY_SINE, f"method={method}"), tmp_path / "r")
    assert not (tmp_path / "r" / io.METRICS_FILE).exists()


@pytest.mark.parametrize("measure, chosen_lam", [("mse", 10), ("accuracy", 1)])
def test_select_takes_the_lowest_error_on_a_regression_sweep(measure, chosen_lam):
    by_cfg = pd.DataFrame({"method": ["m"] * 3, "measure": [measure] * 3, "lam": [1, 10, 100],
                           "ACC_mean": [2.0, 0.5, 3.0], "forgetting_mean": [0.1, 0.2, 0.3], "n": [3, 3, 3]})
    best = select(by_cfg, max_forgetting=0.25)  # lam 100 forgets too much; of the others the best ACC
    assert best["lam"].tolist() == [chosen_lam]


# ---- OML


def _tiny_oml(**kwargs) -> tuple[OML, Learner]:
    stream = sine(n_tasks=2, train_per_task=16, eval_per_task=16)
    model = MLP(stream.in_shape, 1, [4, 3]).double()
    method = OML(rln_layers=1, meta_steps=0, meta_functions=5, trajectory_tasks=2, steps_per_task=2, inner_batch=3,
                 inner_lr=0.05, **kwargs)
    learner = Learner(model, stream, Scenario("domain_il", stream), method, batch_size=8)
    return method, learner


def _trajectory(method: OML):
    g = torch.Generator().manual_seed(0)
    if not hasattr(method, "pool"):
        from clrun.streams import SineFunctions

        method.pool = SineFunctions.draw(5, 2, g)
    return [t.double() if t.is_floating_point() else t for t in method.trajectory(g)]


def _sgd_on_a_pln_copy(method: OML, data) -> list[torch.Tensor]:
    """The inner loop replayed by hand: plain SGD steps of a detached copy of the PLN on the RLN's features."""
    x_traj, y_traj = data[:2]
    weights = [p.detach().clone().requires_grad_(True) for p in method.pln_parameters()]
    for x, y in zip(x_traj, y_traj):
        loss = F.mse_loss(method.pln_forward(method.rln(x).detach(), weights)[:, 0], y)
        grads = torch.autograd.grad(loss, weights)
        weights = [(w - 0.05 * g).detach().requires_grad_(True) for w, g in zip(weights, grads)]
    return weights


def test_oml_inner_loop_is_sgd_on_the_pln_alone():
    method, learner = _tiny_oml(first_order=True)
    data = _trajectory(method)
    rln_before = [p.detach().clone() for p in method.rln.parameters()]
    pln_before = [p.detach().clone() for p in method.pln_parameters()]
    weights = _sgd_on_a_pln_copy(method, data)
    # OML's meta-loss is the loss of those weights on the remembered samples
    loss = method.meta_loss(*data)
    x_mem, y_mem = data[3:5]
    expected = F.mse_loss(method.pln_forward(method.rln(x_mem), weights)[:, 0], y_mem)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    # the inner loop moved copies: neither network's own weights changed
    assert all(torch.equal(a, b) for a, b in zip(rln_before, method.rln.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(pln_before, method.pln_parameters()))


def _meta_loss_of(method: OML, vector: torch.Tensor, params: list, data) -> torch.Tensor:
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(vector, params)
    return method.meta_loss(*data)


def test_oml_meta_gradient_matches_finite_differences():
    method, learner = _tiny_oml(first_order=False)
    params = [*method.rln.parameters(), *method.pln_parameters()]
    for p in params:
        p.requires_grad_(True)
    data = _trajectory(method)
    loss = method.meta_loss(*data)
    analytic = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    theta = torch.nn.utils.parameters_to_vector(params).detach().clone()
    eps, numeric = 1e-6, torch.empty_like(theta)
    for i in range(len(theta)):
        up, down = theta.clone(), theta.clone()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (_meta_loss_of(method, up, params, data) - _meta_loss_of(method, down, params, data)) / (2 * eps)
    assert analytic.abs().max() > 1e-3  # a gradient worth checking
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_oml_first_order_meta_gradient_treats_the_inner_steps_as_constants():
    method, learner = _tiny_oml(first_order=True)
    rln = list(method.rln.parameters())
    for p in rln:
        p.requires_grad_(True)
    data = _trajectory(method)
    first = torch.autograd.grad(method.meta_loss(*data), [*rln, *method.pln_parameters()])
    # the released code's estimate: the remembered samples' loss at the final PLN weights, differentiated with
    # respect to those weights (for the PLN's start) and to the RLN under them
    weights = _sgd_on_a_pln_copy(method, data)
    x_mem, y_mem = data[3:5]
    at_end = torch.autograd.grad(F.mse_loss(method.pln_forward(method.rln(x_mem), weights)[:, 0], y_mem),
                                 [*rln, *weights])
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(first, at_end))
    second, _ = _tiny_oml(first_order=False)
    second.ctx.model.load_state_dict(method.ctx.model.state_dict())
    for p in second.rln.parameters():
        p.requires_grad_(True)
    full = torch.autograd.grad(second.meta_loss(*data), [*second.rln.parameters(), *second.pln_parameters()])
    assert not all(torch.allclose(a, b) for a, b in zip(first, full))  # the full meta-gradient is another one


def test_oml_trains_only_the_pln_on_the_stream(tmp_path):
    row = run(make_cfg(*TINY_SINE, "method=oml", "model.hidden=[16,16,8]", "method.rln_layers=2",
                       "method.meta_steps=3", "method.meta_functions=20", "method.steps_per_task=2",
                       "method.inner_batch=8", "method.trajectory_tasks=3"), tmp_path / "oml")
    assert row["status"] == "completed" and row["meta_steps"] == 3 and row["meta_train_seconds"] > 0
    assert row["meta_data"] == "pool of 20 new sine functions"
    assert row["rln_parameters"] == 4 * 16 + 16 + 16 * 16 + 16  # 2 layers of the 4: inputs are 3 one-hot + x


def test_oml_freezes_the_rln_during_the_stream():
    stream = sine(n_tasks=2, train_per_task=32, eval_per_task=16)
    model = MLP(stream.in_shape, 1, [8, 8, 4])
    method = OML(rln_layers=2, meta_steps=2, meta_functions=6, trajectory_tasks=2, steps_per_task=2, inner_batch=4)
    learner = Learner(model, stream, Scenario("domain_il", stream), method, batch_size=8,
                      optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.05))
    initial = [p.detach().clone() for p in method.rln.parameters()]
    learner.train_task(0)  # meta-trains first, then the task
    after_meta = [p.detach().clone() for p in method.rln.parameters()]
    pln_before = [p.detach().clone() for p in method.pln_parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(initial, after_meta))  # meta-training moved the RLN
    learner.train_task(1)
    assert all(torch.equal(a, b) for a, b in zip(after_meta, method.rln.parameters()))  # the stream did not
    assert not all(torch.equal(a, b) for a, b in zip(pln_before, method.pln_parameters()))  # the PLN learnt
    assert {id(p) for g in learner.optimizer.param_groups for p in g["params"]} == {id(p) for p in
                                                                                   method.pln_parameters()}


def test_oml_settings_are_checked_before_any_file(tmp_path):
    with pytest.raises(ConfigError, match="method.rln_layers=5 leaves no layer"):
        run(make_cfg(*TINY_SINE, "method=oml", "method.rln_layers=5"), tmp_path / "a")
    with pytest.raises(ConfigError, match="meta_data=first_tasks needs"):
        run(make_cfg(*TINY_SINE, "method=oml", "method.meta_data=first_tasks"), tmp_path / "b")
    with pytest.raises(ConfigError, match="method oml does not support the accuracy stream synthetic: it is built for"):
        run(make_cfg("benchmark=synthetic", "quiet=true", "method=oml", "plots=false"), tmp_path / "c")
    assert not any(tmp_path.rglob(io.METRICS_FILE))


def test_seen_average_is_the_learning_curve():
    from clrun.metrics import seen_average

    assert seen_average(MSE_R).tolist() == pytest.approx([1.0, 1.5, 2.0])  # its last entry is ACC


def test_oml_seeds_are_not_stacked():
    from clrun.vectorized import why_not

    method, learner = _tiny_oml()
    assert why_not([learner]) == "method oml trains each seed's model on its own (Method.stackable is false)"


def test_a_trajectory_longer_than_the_streams_one_hot_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="method.trajectory_tasks=5: a trajectory's k-th function takes"):
        run(make_cfg(*TINY_SINE, "method=oml", "model.hidden=[8,8]", "method.rln_layers=1",
                     "method.trajectory_tasks=5"), tmp_path / "r")


def test_oml_meta_trains_on_the_streams_first_tasks_when_asked(tmp_path):
    row = run(make_cfg(*TINY_SINE, "method=oml", "model.hidden=[16,8]", "method.rln_layers=1", "method.meta_steps=2",
                       "method.meta_data=first_tasks", "method.meta_tasks=2", "method.trajectory_tasks=2",
                       "method.steps_per_task=2", "method.inner_batch=8"), tmp_path / "oml")
    assert row["status"] == "completed" and row["meta_data"] == "the stream's first 2 tasks"
    assert row["meta_loss_first"] > 0
