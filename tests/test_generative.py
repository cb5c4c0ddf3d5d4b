"""Deep Generative Replay: the replay loss per scenario as van de Ven & Tolias compute it, that replay of a
generator's samples keeps the old classes in class-IL, and its outputs."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clrun.learner import Learner
from clrun.methods.base import Batch, Step
from clrun.methods.dgr import DGR
from clrun.methods.naive import Naive
from clrun.models import MLP
from clrun.run import run
from clrun.streams import ConfigError, Scenario, split
from tests.conftest import FAST, make_cfg


def _learner(method, scenario="class_il", hidden=(64,), **stream):
    s = split(dataset="synthetic", n_tasks=5, **{"side": 4, "n_train": 10, "n_test": 2, **stream})
    sc = Scenario(scenario, s)
    torch.manual_seed(0)
    return Learner(MLP(s.in_shape, sc.n_outputs, hidden=list(hidden)), s, sc, method, batch_size=8,
                   optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.1), check_step=True)


def _by_hand(scenario, distill, logits_new, logits_cur, y, old_logits, sc, T=2.0):
    """(1/4) CE(current) + (3/4) replay, written out per scenario from the authors' train.py / encoder.py."""
    if scenario == "task_il":
        cur = F.cross_entropy(logits_cur[:, sc.task_units[3]], y - sc.offsets[3])
        heads = [sc.task_units[k] for k in range(3)]
        pairs = [(u, u) for u in heads]
    elif scenario == "domain_il":
        cur = F.cross_entropy(logits_cur, y)
        pairs = [(torch.ones(sc.n_outputs, dtype=torch.bool),) * 2]
    else:
        cur = F.cross_entropy(logits_cur[:, sc.seen_units[3]], y)  # seen units are the first ones: same indices
        pairs = [(sc.seen_units[3], sc.seen_units[2])]
    terms = []
    for new_u, old_u in pairs:
        z_new, z_old = logits_new[:, new_u], old_logits[:, old_u]
        if not distill:
            terms.append(F.cross_entropy(z_new, z_old.argmax(1)))
        else:
            target = torch.zeros_like(z_new)
            target[:, : z_old.shape[1]] = F.softmax(z_old / T, 1)  # the old units come first: zeros appended
            terms.append(T * T * (torch.xlogy(target, target) - target * F.log_softmax(z_new / T, 1)).sum(1).mean())
    return cur / 4 + (3 / 4) * sum(terms) / len(terms)


@pytest.mark.parametrize("scenario", ["task_il", "domain_il", "class_il"])
@pytest.mark.parametrize("distill", [False, True])
def test_data_loss_is_the_authors_mix_of_current_and_replayed_losses(scenario, distill):
    dgr = DGR(distill=distill, hidden=[8], z_dim=4, temperature=2.0)
    L = _learner(dgr, scenario, hidden=(16,))
    for t in range(3):  # three tasks done (the generator untrained: any samples do); now task 4 (1-based)
        dgr.after_task(t)
    with torch.no_grad():  # move the classifier off its snapshot, so the replay loss is not at its minimum
        L.model.head.weight.add_(0.5 * torch.randn_like(L.model.head.weight))
    x, y, ids = L.task_sample(3, 8)
    batch = Batch(x, y, ids, 3)
    replayed = dgr.replay(batch)
    with torch.no_grad():
        logits = L.model(torch.cat([x, replayed.x]))
        loss = dgr.data_loss(Step(batch, replayed, logits))
        expected = _by_hand(scenario, distill, logits[8:], logits[:8], y, replayed.stored_logits, L.scenario)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("distill", [False, True])
def test_per_head_samples_give_each_old_head_its_own_share_of_the_replay(distill):
    """task_il_samples=per_head (the authors' 2018 train.py): each of the 3 old heads is scored on its own
    ceil(8 / 3) = 3 generated inputs, not on all of them, and the replay term averages the heads' own terms."""
    dgr = DGR(distill=distill, hidden=[8], z_dim=4, task_il_samples="per_head")
    L = _learner(dgr, "task_il", hidden=(16,))
    for t in range(3):
        dgr.after_task(t)
    with torch.no_grad():
        L.model.head.weight.add_(0.5 * torch.randn_like(L.model.head.weight))
    x, y, ids = L.task_sample(3, 8)
    batch = Batch(x, y, ids, 3)
    replayed = dgr.replay(batch)
    assert replayed.task_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    sc, T = L.scenario, 2.0
    with torch.no_grad():
        logits = L.model(torch.cat([x, replayed.x]))
        loss = dgr.data_loss(Step(batch, replayed, logits))
        terms = []
        for k in range(3):
            rows, units = replayed.task_ids == k, sc.task_units[k]
            z_new, z_old = logits[8:][rows][:, units], replayed.stored_logits[rows][:, units]
            assert torch.equal(replayed.y[rows], z_old.argmax(1) + sc.offsets[k])  # labelled by its own head
            if distill:
                p_old = F.softmax(z_old / T, 1)
                terms.append(T * T * (torch.xlogy(p_old, p_old) - p_old * F.log_softmax(z_new / T, 1)).sum(1).mean())
            else:
                terms.append(F.cross_entropy(z_new, z_old.argmax(1)))
        cur = F.cross_entropy(logits[:8][:, sc.task_units[3]], y - sc.offsets[3])
    assert float(loss) == pytest.approx(float(cur / 4 + (3 / 4) * sum(terms) / 3), rel=1e-5)


def test_task_il_samples_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"method.task_il_samples='each' is not allowed; use shared"):
        run(make_cfg(*FAST, "method=dgr", "method.task_il_samples=each"), tmp_path)
    assert not any(tmp_path.iterdir())


def _class_il_acc(method, iters=150):
    L = _learner(method, "class_il", n_train=100, n_test=50, side=6)
    for t in range(len(L.stream)):
        L.train_task(t, iters=iters)
    return float(np.mean(L.evaluate_all(len(L.stream) - 1))), L


def test_dgr_keeps_the_old_classes_in_class_il_and_its_samples_are_the_old_tasks():
    naive, _ = _class_il_acc(Naive())
    dgr = DGR(hidden=[64], z_dim=8, lr=0.003)
    acc, L = _class_il_acc(dgr)
    assert acc > naive + 0.4, (acc, naive)  # measured: 0.99 against 0.32

    # the final generator's samples, each given the class of its nearest class mean (the data's own classes)
    s, sc = L.stream, L.scenario
    means = torch.cat([torch.stack([t.train_x[t.train_y == c].mean(0) for c in range(t.n_classes)]) for t in s.tasks])
    with torch.no_grad():
        x = dgr.generator.sample(2000, torch.Generator().manual_seed(1))
        true_unit = torch.cdist(x.flatten(1), means.flatten(1)).argmin(1)
        said_unit = dgr.old_model(x).argmax(1)  # the classifier that labels the next task's replay
    true_task = torch.as_tensor(np.searchsorted(np.array(sc.offsets), true_unit.numpy(), side="right") - 1)
    share = torch.bincount(true_task, minlength=len(s)).float() / len(x)
    assert (share > 0.04).all(), share  # every task is still generated (measured: 0.08-0.31 each)
    agree = float((said_unit == true_unit).float().mean())
    assert agree > 0.5, agree  # and labelled as the class it is nearest to (measured: 0.68; chance: 0.1)


def test_a_dgr_run_writes_its_generated_samples_and_costs(tmp_path):
    row = run(make_cfg(*FAST, "method=dgr", "benchmark.n_tasks=2", "iters=5", "plots=true"), tmp_path)
    assert row["status"] == "completed" and row["buffer_bytes"] == 0
    metrics = pd.read_csv(tmp_path / "metrics.csv").iloc[0]
    assert metrics["generator_parameters"] > 0 and metrics["generator_seconds"] > 0
    with np.load(tmp_path / "replay_samples.npz") as f:
        assert f["samples"].shape == (2, 16, 1, 8, 8) and f["units"].shape == (2, 16)
    assert (tmp_path / "replay_samples.png").stat().st_size > 0


def test_bernoulli_needs_inputs_in_0_1(tmp_path):
    with pytest.raises(ConfigError, match=r"method.likelihood=bernoulli needs inputs in \[0, 1\]"):
        run(make_cfg(*FAST, "method=dgr", "method.likelihood=bernoulli"), tmp_path)
    assert not any(tmp_path.iterdir())
