import subprocess

import numpy as np
import pandas as pd
import pytest

from clrun import io
from clrun.run import run
from clrun.streams import ConfigError
from tests.conftest import FAST, REPO, clrun_cmd, make_cfg


def test_clrun_subprocess_writes_the_three_csvs_with_their_schema(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(clrun_cmd(*FAST, "seed=1", f"hydra.run.dir={out}"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / ".hydra" / "config.yaml").exists()

    R = pd.read_csv(out / "R.csv", index_col=0)
    assert list(R.index) == ["init"] + [f"after_task_{i}" for i in range(1, 6)]
    assert list(R.columns) == [f"task_{j}" for j in range(1, 6)]
    assert ((R.to_numpy() >= 0) & (R.to_numpy() <= 1)).all()

    m = pd.read_csv(out / "metrics.csv")
    assert len(m) == 1
    assert list(m.columns[: len(io.METRICS_COLUMNS)]) == io.METRICS_COLUMNS
    row = m.iloc[0]
    assert (row.benchmark, row.scenario, row.method, row.seed, row.n_tasks) == ("synthetic", "class_il", "naive", 1, 5)
    assert row.status == "completed" and row.data_source == "synthetic" and row.device == "cpu"
    assert row.ACC == pytest.approx(R.iloc[-1].mean(), abs=1e-5)
    assert row.parameters > 0 and row.peak_rss_mb > 0 and row.wall_seconds >= row.train_seconds > 0

    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == io.LOG_COLUMNS
    assert log.task.tolist() == [1, 2, 3, 4, 5] and (log.steps > 0).all()
    # quiet=true: no progress bars, no R table
    assert "after_task_5" not in proc.stdout and "task 1/5" not in proc.stderr


def test_progress_and_table_when_not_quiet(tmp_path):
    proc = subprocess.run(clrun_cmd(*FAST, "quiet=false", "benchmark.n_tasks=2", f"hydra.run.dir={tmp_path}"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "after_task_2" in proc.stdout and "ACC=" in proc.stdout


def test_hydra_cfg_flag_works():
    proc = subprocess.run(clrun_cmd("--cfg", "job"), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and "permuted_mnist" in proc.stdout and "_target_" in proc.stdout


def test_default_experiment_is_permuted_mnist_domain_il():
    cfg = make_cfg()
    assert cfg.benchmark.name == "permuted_mnist" and cfg.scenario.name == "domain_il"
    assert make_cfg("benchmark=split_mnist").scenario.name == "class_il"
    assert make_cfg("benchmark=split_mnist", "scenario=task_il").scenario.name == "task_il"


def test_same_seed_same_R_and_other_seed_differs(tmp_path):
    R = [io.read_R(_run(tmp_path / f"r{i}", "seed=4") / "R.csv") for i in range(2)]
    assert np.array_equal(R[0], R[1])
    other = io.read_R(_run(tmp_path / "r2", "seed=5") / "R.csv")
    assert not np.array_equal(R[0], other)


def _run(out, *overrides):
    run(make_cfg(*FAST, *overrides), out)
    return out


def test_naive_forgets_and_joint_does_not_on_synthetic_class_il(tmp_path):
    naive = run(make_cfg(*FAST, "epochs=3"), tmp_path / "naive")
    joint = run(make_cfg(*FAST, "epochs=3", "method=joint"), tmp_path / "joint")
    assert naive["BWT"] < -0.3 and naive["ACC"] < 0.7
    assert joint["ACC"] > 0.9 and joint["forgetting"] < 0.05


def test_joint_final_trains_only_at_the_last_task_on_every_task(tmp_path):
    final = run(make_cfg(*FAST, "epochs=3", "method=joint", "method.schedule=final", "scenario=task_il"),
                tmp_path / "final")
    R = pd.read_csv(tmp_path / "final" / "R.csv", index_col=0).to_numpy()
    # nothing trained before the last task: every row up to it is the untrained model's (task-IL: the same
    # heads answer at every row, so the untrained model scores the same)
    assert np.allclose(R[1:-1], R[0]) and final["ACC"] > 0.9
    log = pd.read_csv(tmp_path / "final" / io.LOG_FILE)
    assert set(log.task) == {5}  # one task's worth of epochs, all of it the last
    # with iters the empty tasks still take no steps (they would otherwise spin forever)
    run(make_cfg(*FAST, "iters=3", "method=joint", "method.schedule=final"), tmp_path / "iters")
    with pytest.raises(ConfigError, match="method.schedule"):
        run(make_cfg(*FAST, "method=joint", "method.schedule=sometimes"), tmp_path / "bad")


def test_task_il_forgets_less_than_class_il(tmp_path):
    cil = run(make_cfg(*FAST, "epochs=3"), tmp_path / "cil")
    til = run(make_cfg(*FAST, "epochs=3", "scenario=task_il"), tmp_path / "til")
    assert til["ACC"] > cil["ACC"] + 0.2


def test_iters_overrides_epochs(tmp_path):
    _run(tmp_path, "iters=7", "epochs=5")
    log = pd.read_csv(tmp_path / "log.csv")
    assert log.groupby("task").steps.sum().tolist() == [7] * 5


@pytest.mark.parametrize("bench", ["permuted_mnist", "rotated_mnist", "mnist_domains", "split_mnist"])
def test_every_mnist_benchmark_runs_on_a_synthetic_stand_in(tmp_path, bench):
    # the same stream constructors on generated data: shapes, heads and scenarios fit together
    cfg = make_cfg(f"benchmark={bench}", "+benchmark.n_classes=10", "+benchmark.side=8",
                   "+benchmark.n_train=10", "+benchmark.n_test=5", "benchmark.dataset=synthetic",
                   "quiet=true", "device=cpu", "benchmark.n_tasks=2")
    row = run(cfg, tmp_path)
    assert row["status"] == "completed" and row["n_tasks"] == 2


@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet18"])
def test_every_model_trains(tmp_path, model):
    row = run(make_cfg("benchmark=synthetic", f"model={model}", "quiet=true", "device=cpu",
                       "benchmark.n_tasks=2", "benchmark.n_train=8", "benchmark.n_test=4"),
              tmp_path)
    assert row["status"] == "completed"


def test_method_rejects_unsupported_scenario(tmp_path):
    from clrun.methods.base import Method

    class OnlyTaskIL(Method):
        scenarios = ("task_il",)

    from clrun.learner import Learner
    from clrun.models import MLP
    from clrun.streams import Scenario, split

    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=4, n_test=2)
    with pytest.raises(ConfigError, match="does not support scenario=class_il; it supports: task_il"):
        Learner(MLP((1, 4, 4), 10), s, Scenario("class_il", s), OnlyTaskIL())


def test_nan_loss_stops_with_status_diverged_and_keeps_earlier_rows(tmp_path):
    # a huge EWC weight explodes as soon as the penalty exists, i.e. in task 2
    row = run(make_cfg(*FAST, "method=ewc", "lam=1e9", "benchmark.n_tasks=2"), tmp_path)
    assert row["status"] == "diverged" and row["tasks_done"] == 1 and "non-finite" in row["error"]
    R = pd.read_csv(tmp_path / "R.csv", index_col=0)
    assert R.loc["after_task_1"].notna().all() and R.loc["after_task_2"].isna().all()
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert m.status[0] == "diverged"


def test_nan_loss_skip_mode_counts_skipped_steps(tmp_path):
    # half the steps of task 2 are skipped: a run only under a loose skip_limit (the default 0.1 stops it)
    row = run(make_cfg(*FAST, "method=ewc", "lam=1e9", "benchmark.n_tasks=2", "on_nan=skip", "skip_limit=0.6"),
              tmp_path)
    assert row["status"] == "completed"
    log = pd.read_csv(tmp_path / "log.csv")
    assert log.skipped_steps.sum() > 0 and np.isfinite(log.loss).all()


def test_diverged_run_exits_non_zero(tmp_path):
    proc = subprocess.run(clrun_cmd(*FAST, "method=ewc", "lam=1e9", "benchmark.n_tasks=2", f"hydra.run.dir={tmp_path}"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "diverged" in proc.stderr


def test_reset_optimizer_false_keeps_one_optimiser_and_adds_new_parameters():
    import torch

    from clrun.learner import Learner
    from clrun.methods.pnn import PNN
    from clrun.models import MLP
    from clrun.streams import Scenario, split

    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=20, n_test=5)
    sc = Scenario("task_il", s)
    for reset in (True, False):
        L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, PNN(hidden=[8]), batch_size=16,
                    optimizer_factory=lambda ps: torch.optim.Adam(ps, lr=1e-3), reset_optimizer=reset)
        L.train_task(0, iters=3)
        first = L.optimizer
        L.train_task(1, iters=3)
        assert (L.optimizer is first) is (not reset)
        in_optimizer = {id(p) for g in L.optimizer.param_groups for p in g["params"]}
        assert {id(p) for p in L.trainable_parameters()} <= in_optimizer  # the new column is optimised
        if not reset:  # the one optimiser still holds the first column's Adam state from task 1 (3 steps)
            steps = [int(L.optimizer.state[p]["step"]) for p in L.model.columns[0].parameters()]
            assert steps and all(n == 3 for n in steps)


def test_class_il_train_units_all_trains_the_whole_head_from_the_first_task():
    import torch

    from clrun.learner import Learner
    from clrun.methods.naive import Naive
    from clrun.models import MLP
    from clrun.streams import Scenario, split

    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=20, n_test=5)
    moved = {}
    for units in ("seen", "all"):
        torch.manual_seed(0)
        sc = Scenario("class_il", s, train_units=units)
        model = MLP((1, 4, 4), sc.n_outputs, hidden=[8])
        head = list(model.parameters())[-1]  # output bias: one entry per class
        before = head.detach().clone()
        L = Learner(model, s, sc, Naive(), batch_size=16, optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.5))
        L.train_task(0, iters=5)
        moved[units] = (head.detach() - before).abs()[2:]  # the units of tasks 2-5, not seen yet
    assert torch.all(moved["seen"] == 0)  # masked out of the loss: untouched
    assert torch.all(moved["all"] > 0)  # the whole head: unseen classes are pushed down already
    with pytest.raises(ConfigError, match="train_units"):
        Scenario("task_il", s, train_units="all")
    with pytest.raises(ConfigError, match="train_units"):
        Scenario("class_il", s, train_units="some")


def test_mlp_xavier_init_is_mammoths_scale_with_zero_biases():
    import math

    import torch

    from clrun.models import MLP

    torch.manual_seed(0)
    xavier, default = MLP((1, 28, 28), 10, [100, 100], init="xavier"), MLP((1, 28, 28), 10, [100, 100])
    for (fan_out, fan_in), layer in [((100, 784), 1), ((100, 100), 3)]:
        w = xavier.features[layer].weight.detach()
        bound = math.sqrt(6 / (fan_in + fan_out))  # U(-a, a), a = sqrt(3) * sqrt(2 / (fan_in + fan_out))
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        assert w.std() > 1.5 * default.features[layer].weight.detach().std()  # larger than PyTorch's default
        assert torch.all(xavier.features[layer].bias == 0)
    assert torch.all(xavier.head.bias == 0)
    with pytest.raises(ConfigError, match="model.init"):
        MLP((1, 28, 28), 10, init="orthogonal")


def test_mlp_trunc_normal_init_is_agems_tf_initialiser():
    import torch

    from clrun.models import MLP

    torch.manual_seed(0)
    net = MLP((1, 28, 28), 10, [256, 256], init="trunc_normal")
    for layer in (net.features[1], net.features[3], net.head):
        w = layer.weight.detach()
        assert w.abs().max() <= 0.2  # tf.truncated_normal_initializer(stddev=0.1) redraws beyond 2 std
        assert abs(w.std().item() - 0.088) < 0.003  # the std of N(0, 0.1) cut at +-2 std
        assert torch.all(layer.bias == 0.1)  # tf.constant_initializer(0.1)


def test_a_finished_run_leaves_no_stream_behind(tmp_path):
    # a sweep runs job after job in one process: the last job's tensors must be gone before the next builds its own
    import gc

    from clrun.streams import Stream

    gc.disable()  # only run() itself may collect: the automatic collector must not do it for us
    try:
        run(make_cfg(*FAST), tmp_path / "a")
        alive = [o for o in gc.get_objects() if type(o) is Stream]
    finally:
        gc.enable()
    assert alive == []


def test_log_every_writes_a_curve_into_log_csv_and_the_loss_plot_draws_it(tmp_path):
    from clrun import plots

    run(make_cfg(*FAST, "benchmark.n_tasks=2", "iters=6", "log_every=2", "plots=true"), tmp_path)
    log = pd.read_csv(tmp_path / "log.csv")
    curve = log[log.kind == "interval"]
    assert curve.groupby("task").step.apply(list).tolist() == [[2, 4, 6], [2, 4, 6]]
    assert (curve.steps == 2).all() and curve.loss.notna().all() and curve.train_acc.between(0, 1).all()
    assert log[log.kind == "epoch"].groupby("task").steps.sum().tolist() == [6, 6]  # the epoch rows stay
    assert (tmp_path / "loss.png").exists()
    fig = plots.figure_loss(tmp_path)
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_title() == "Training loss across the stream" and loss_ax.get_ylabel() == "training loss"
    assert acc_ax.get_ylabel() == "running training accuracy"
    assert loss_ax.get_xlabel() == "training step (tasks in sequence)"
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["task 1", "task 2"]
    assert loss_ax.lines[1].get_xdata().tolist() == [8, 10, 12]  # task 2 drawn after task 1's 6 steps
    assert fig._suptitle.get_text() == "naive on synthetic (class_il), seed 0"
    (r_ax, _colorbar) = plots.figure_R(tmp_path).axes
    assert r_ax.get_title() == "Accuracy matrix R: naive on synthetic (class_il), seed 0"
    assert (r_ax.get_xlabel(), r_ax.get_ylabel()) == ("evaluated on", "model after")
    assert [t.get_text() for t in r_ax.get_yticklabels()] == ["init", "after_task_1", "after_task_2"]
    assert [t.get_text() for t in r_ax.get_legend().get_texts()] == [
        "just learned (R_jj)", "FWT: before training (vs init)", "BWT: after the last task"]
    (curve_ax,) = plots.figure_task_curves(tmp_path).axes
    assert curve_ax.get_title().startswith("Accuracy of each task over the stream")
    assert (curve_ax.get_xlabel(), curve_ax.get_ylabel()) == ("tasks trained", "accuracy")
    assert [t.get_text() for t in curve_ax.get_legend().get_texts()] == ["task 1", "task 2"]


def test_clrun_help_is_clruns_own(tmp_path):
    out = subprocess.run(clrun_cmd("--help"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert out.stdout.startswith("clrun: continual-learning experiments.")
    assert "method: adapters, agem, der, derpp, dgr, dgr_distill, er, ewc" in out.stdout
    assert "scenario: class_il, domain_il, task_il" in out.stdout
    assert out.stdout.count("\n  clrun ") == 6  # six example commands, a paper preset among them
    assert "paper/der2020: common, perm_mnist, perm_mnist_buffer" in out.stdout
    assert "Powered by Hydra" not in out.stdout


@pytest.mark.parametrize("entry", ["clrun.report:report_main", "clrun.report:select_main", "clrun.plots:main",
                                   "clrun.checkpoint:main"])
def test_every_console_script_argument_has_help(entry, capsys):
    import argparse
    import importlib

    module, func = entry.split(":")
    parsers = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        parsers.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            getattr(importlib.import_module(module), func)([])
    finally:
        argparse.ArgumentParser.parse_args = original
    actions = [a for a in parsers[0]._actions if not isinstance(a, argparse._HelpAction)]
    for sub in [a for a in actions if isinstance(a, argparse._SubParsersAction)]:
        actions += [x for p in sub.choices.values() for x in p._actions if not isinstance(x, argparse._HelpAction)]
    assert actions and all(a.help for a in actions), [a.dest for a in actions if not a.help]
