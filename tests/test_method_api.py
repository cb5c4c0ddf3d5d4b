"""The method contract: one step owned by the learner, every method and regulariser through it, the bugs the
copies of the step caused, and methods, streams and models from a user's own project."""

import os
import shutil
import subprocess

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clrun.app import user_search_path
from clrun.checks import build
from clrun.learner import Learner
from clrun.methods.base import Batch, Step
from clrun.methods.ewc import EWC
from clrun.methods.icarl import ICaRL
from clrun.methods.lwf import LwF
from clrun.methods.naive import Naive
from clrun.models import MLP
from clrun.run import run
from clrun.streams import ConfigError, Scenario, split
from tests.conftest import FAST, REPO, clrun_cmd, make_cfg

METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))
SCENARIOS = ["task_il", "domain_il", "class_il"]
# a small sine stream and a network OML can split, with a few short meta-training steps
REGRESSION = ["benchmark=sine", "benchmark.train_per_task=384", "benchmark.eval_per_task=32", "model.hidden=[16,16,8]",
              "method.rln_layers=2", "method.meta_steps=2", "method.meta_functions=8", "method.trajectory_tasks=2",
              "method.steps_per_task=2", "method.inner_batch=4"]


def _stream():
    return split(dataset="synthetic", n_tasks=5, side=4, n_train=10, n_test=2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("stacked", [False, True])
def test_every_method_yaml_trains_through_the_one_step(tmp_path, method, scenario, stacked):
    """Each conf/method/*.yaml, alone and under +regularizers=[ewc,lwf], in every scenario it claims: a few steps
    with check_step=true, which asserts at every step that the gradient applied is autograd's gradient of the
    loss logged (closed-form penalties, loss scales and all)."""
    overrides = [*FAST, f"method={method}", f"scenario={scenario}", "benchmark.n_tasks=2", "iters=3",
                 "check_step=true", "checkpoint=false", "lam=0.5"]
    if stacked:
        overrides.append("+regularizers=[ewc,lwf]")
    if method == "mer":  # a step per example and per memory draw: small batches keep the checked steps few
        overrides.append("batch_size=4")
    cfg = make_cfg(*overrides)
    if "accuracy" not in build(cfg.method).measures:  # a regression method: the same on a small sine stream
        cfg = make_cfg(*overrides, *REGRESSION)
        if stacked:  # EWC's Fisher and LwF's distillation need class probabilities
            with pytest.raises(ConfigError, match="does not support the mse stream|class_il needs classes"):
                run(cfg, tmp_path)
            return
    if scenario not in build(cfg.method).scenarios:
        with pytest.raises(ConfigError, match=f"does not support scenario={scenario}|{scenario} needs classes"):
            run(cfg, tmp_path)
        return
    if stacked and method in ("ewc", "lwf"):  # the same penalty twice would count it twice
        with pytest.raises(ConfigError, match="is given twice"):
            run(cfg, tmp_path)
        return
    if stacked and method in ("adapters", "pnn", "packnet", "supsup"):  # they route inputs through their own layers
        with pytest.raises(ConfigError, match="cannot be stacked"):
            run(cfg, tmp_path)
        return
    row = run(cfg, tmp_path)
    assert row["status"] == "completed"
    log = pd.read_csv(tmp_path / "log.csv")
    assert len(log) == 2 and log["loss"].notna().all() and (log["skipped_steps"] == 0).all()


def _lwf_step_loss(lwf_first: bool, scenario: str, alpha: float = 0.7, T: float = 2.0):
    """(logged loss of one step at task t = 4, and (1/t) CE + (1 - 1/t) alpha T^2 KD computed by hand)."""
    s = _stream()
    sc = Scenario(scenario, s)
    torch.manual_seed(0)
    lwf = LwF(alpha=alpha, temperature=T, weighting="by_task")
    primary, regs = (lwf, []) if lwf_first else (Naive(), [lwf])
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, primary, regs, check_step=True)
    L.make_optimizer()
    for t in range(3):
        lwf.after_task(t)
    with torch.no_grad():  # move the model off its snapshot so that KD > 0
        L.model.head.weight.add_(0.5 * torch.randn_like(L.model.head.weight))
    x, y, ids = L.task_sample(3, 8)
    with torch.no_grad():
        logits, old = L.model(x), lwf.old_model(x)
        ce = L.ce(logits, y, ids, 3)
        groups = [sc.task_units[k] for k in range(3)] if sc.uses_task_id else [sc.seen_units[2]]
        kd = sum(F.kl_div(F.log_softmax(logits[:, u] / T, 1), F.log_softmax(old[:, u] / T, 1), log_target=True,
                          reduction="batchmean") for u in groups) / len(groups)
    logged = L.step(Batch(x, y, ids, 3))[0]
    return float(logged), float(ce / 4 + (3 / 4) * alpha * T * T * kd)


@pytest.mark.parametrize("scenario", ["task_il", "class_il"])
@pytest.mark.parametrize("lwf_first", [True, False])
def test_lwf_by_task_loss_is_the_documented_mix_as_primary_or_regulariser(scenario, lwf_first):
    logged, expected = _lwf_step_loss(lwf_first, scenario)
    assert logged == pytest.approx(expected, rel=1e-5)


def test_loss_scale_of_lwf_by_task_scales_a_stacked_quadratic_penalty_too():
    s = _stream()
    sc = Scenario("task_il", s)
    torch.manual_seed(0)
    lwf, ewc = LwF(weighting="by_task"), EWC(lam=5.0, fisher="empirical")
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, lwf, [ewc], check_step=True)
    L.make_optimizer()
    lwf.after_task(0)
    ewc.after_task(0)
    with torch.no_grad():
        for p in L.model.parameters():
            p.add_(0.1)
    x, y, ids = L.task_sample(1, 8)
    # check_step raises unless the EWC gradient added is 1/2 of its own (t = 2): the logged loss's gradient
    loss = L.step(Batch(x, y, ids, 1))[0]
    assert torch.isfinite(loss)


def test_icarl_in_task_il_distils_into_the_old_heads_on_new_data():
    s = _stream()
    sc = Scenario("task_il", s)
    torch.manual_seed(0)
    icarl = ICaRL(buffer_size=20)
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[16]), s, sc, icarl, batch_size=8)
    L.train_task(0)
    with torch.no_grad():  # the model moves away from its snapshot, as it does while learning task 2
        L.model.head.weight.add_(0.3 * torch.randn_like(L.model.head.weight))
    x, y, ids = L.task_sample(1, 8)
    step = Step(Batch(x, y, ids, 1), None, L.model(x))  # new data only, nothing replayed
    icarl.data_loss(step).backward()
    old_rows = L.model.head.weight.grad[sc.task_units[0]]
    assert old_rows.abs().max() > 1e-4  # the old head learns its old outputs back, not 0.0 x distillation


def test_packnet_keeps_old_tasks_exact_with_adam_carried_across_tasks(tmp_path):
    # noisier classes, so that a moved head row shows in the accuracy (before the fix: drops of 0.025)
    row = run(make_cfg(*FAST, "method=packnet", "scenario=task_il", "optimizer=adam", "lr=0.03",
                       "reset_optimizer=false", "epochs=2", "benchmark.noise=3"), tmp_path)
    R = pd.read_csv(tmp_path / "R.csv", index_col=0).to_numpy()
    assert row["status"] == "completed"
    for j in range(5):  # after its own task (trained, pruned, retrained), task j's accuracy never changes
        assert (R[j + 1 :, j] == R[j + 1, j]).all(), R


def test_fisher_follows_the_training_loss_units_with_train_units_all():
    s = _stream()
    sc = Scenario("class_il", s, train_units="all")
    torch.manual_seed(0)
    ewc = EWC(lam=1.0, fisher="empirical")
    Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, Naive(), [ewc]).ctx.current_task = 0
    ewc.after_task(0)
    unseen = ~sc.seen_units[0]
    # the loss spans the whole head, so its unseen rows have gradients, and Fisher mass
    assert ewc.importance["head.bias"][0][unseen].min() > 0


@pytest.mark.parametrize("overrides, message", [
    (["method=pnn", "scenario=task_il", "model=cnn"], "model=CNN"),
    (["method=ewc", "method.fisher_form=lowrank", "optimizer=adam"], "lowrank_step=implicit"),
    (["method=packnet", "scenario=task_il", "+regularizers=[lwf]"], "cannot be stacked on method=packnet"),
    (["method._target_=nowhere.Method"], "_target_=nowhere.Method cannot be imported"),
])
def test_a_setting_a_method_cannot_use_is_refused_before_training(tmp_path, overrides, message):
    cfg = make_cfg(*[o for o in FAST if not o.startswith("model.")], *overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg, tmp_path)
    assert not (tmp_path / "R.csv").exists()


def test_clrun_config_path_adds_the_users_config_dirs_after_theirs(tmp_path):
    mine = tmp_path / "conf"
    mine.mkdir()
    assert user_search_path(["method=x"], None) == ["method=x"]
    assert user_search_path(["method=x"], str(mine)) == ["method=x", f"hydra.searchpath=[file://{mine}]"]
    given = user_search_path(["hydra.searchpath=[pkg://a.b]", "lam=1"], str(mine))
    assert given == ["lam=1", f"hydra.searchpath=[pkg://a.b,file://{mine}]"]


@pytest.mark.parametrize("how", ["env", "searchpath"])
def test_the_example_project_runs_its_own_method_stream_and_model_outside_the_tree(tmp_path, how):
    project = tmp_path / "my_project"
    shutil.copytree(REPO / "examples" / "my_project", project)
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # clrun itself, as an installed package would be
    args = ["method=l2_anchor", "benchmark=drifting_blobs", "model=small_net", "lam=1", "plots=false",
            "quiet=true", f"hydra.run.dir={tmp_path / 'out'}"]
    if how == "env":
        env["CLRUN_CONFIG_PATH"] = "conf"
    else:
        args.append("hydra.searchpath=[file://conf]")
    done = subprocess.run(clrun_cmd(*args), cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv").iloc[0]
    assert (metrics["method"], metrics["benchmark"], metrics["lam"]) == ("l2anchor", "drifting_blobs", 1)
    assert metrics["status"] == "completed" and metrics["anchor_bytes"] > 0
    assert not list((REPO / "conf" / "method").glob("l2_anchor*"))  # nothing of it lives in clrun


def test_clrun_refuses_a_config_path_that_is_not_a_directory(tmp_path):
    env = {**os.environ, "CLRUN_CONFIG_PATH": str(tmp_path / "missing")}
    done = subprocess.run(clrun_cmd("quiet=true"), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "CLRUN_CONFIG_PATH" in done.stderr and not list(tmp_path.iterdir())


def test_a_penalty_too_stiff_for_sgd_is_warned_before_the_next_task_and_counted(tmp_path, caplog):
    stiff = run(make_cfg(*FAST, "method=mas", "lam=1000", "benchmark.n_tasks=2", "on_nan=skip"), tmp_path / "a")
    assert "lr x curvature of the penalty exceeds 2" in caplog.text and "mas" in caplog.text
    assert stiff["penalty_unstable_fraction"] > 0
    caplog.clear()
    mild = run(make_cfg(*FAST, "method=mas", "lam=1e-4", "benchmark.n_tasks=2"), tmp_path / "b")
    assert "curvature" not in caplog.text and mild["penalty_unstable_fraction"] == 0


def test_icarl_reads_a_checkpoint_written_before_the_replay_hook():
    icarl = ICaRL(replay="merged")
    state = icarl.state_dict()
    state["replay"] = state.pop("replay_mode")  # how older checkpoints stored the mode
    fresh = ICaRL()
    fresh.load_state_dict(state)
    assert fresh.replay_mode == "merged" and callable(fresh.replay)
