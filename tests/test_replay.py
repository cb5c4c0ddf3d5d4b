
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clrun.buffer import ReplayBuffer, balanced_quotas, per_class_first
from clrun.learner import Learner
from clrun.methods.agem import AGEM, agem_project
from clrun.methods.base import Batch
from clrun.methods.der import DER
from clrun.methods.gem import GEM, gem_project
from clrun.methods.icarl import ICaRL, herding
from clrun.models import MLP
from clrun.run import run
from clrun.streams import ConfigError, Scenario, permuted, split
from tests.conftest import FAST, make_cfg


def _stream_into(buf, n, batch, labels=None):
    for s in range(0, n, batch):
        ids = torch.arange(s, min(n, s + batch))
        y = labels[ids] if labels is not None else torch.zeros_like(ids)
        buf.add(ids.float().unsqueeze(1), y, torch.zeros_like(ids))
        assert len(buf) <= buf.capacity


def test_reservoir_keeps_a_uniform_sample_of_the_whole_stream():
    n, capacity, runs, buckets = 5000, 50, 150, 10
    counts = np.zeros(buckets)
    for seed in range(runs):
        buf = ReplayBuffer(capacity, "reservoir", seed=seed)
        _stream_into(buf, n, batch=37)
        assert len(buf) == capacity and buf.n_seen == n
        kept = buf.x[:, 0].long()
        assert len(kept.unique()) == capacity  # no sample stored twice
        counts += np.bincount((kept // (n // buckets)).numpy(), minlength=buckets)
    expected = runs * capacity / buckets
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 27.88  # chi-square, 9 degrees of freedom, p = 0.001


def test_reservoir_is_not_biased_towards_early_or_late_items():
    # a deliberately broken variant (keep the last `capacity` items) fails the same statistic
    kept = torch.arange(5000 - 50, 5000)
    counts = np.bincount((kept // 500).numpy(), minlength=10) * 150
    assert (((counts - 750.0) ** 2) / 750.0).sum() > 27.88


def test_class_balanced_keeps_equal_counts_per_seen_class():
    g = torch.Generator().manual_seed(0)
    # heavily imbalanced stream: class 0 is 10x as frequent, classes arrive over time
    labels = torch.cat([torch.zeros(3000, dtype=torch.long), torch.randint(0, 4, (1200,), generator=g),
                        torch.randint(4, 6, (600,), generator=g)])
    buf = ReplayBuffer(60, "class_balanced", seed=1)
    _stream_into(buf, len(labels), batch=50, labels=labels)
    counts = torch.bincount(buf.y[: len(buf)], minlength=6)
    assert len(buf) == 60 and counts.tolist() == [10] * 6
    # stored inputs are the samples of the class they claim
    assert torch.equal(labels[buf.x[: len(buf), 0].long()], buf.y[: len(buf)])


def test_balanced_quotas_give_spare_slots_to_other_classes():
    assert balanced_quotas(torch.tensor([100, 2, 100]), 30).tolist() == [14, 2, 14]
    assert balanced_quotas(torch.tensor([5, 5, 5]), 7).tolist() == [3, 2, 2]
    assert balanced_quotas(torch.tensor([1, 1]), 10).tolist() == [1, 1]


def test_buffer_rejects_bad_settings():
    with pytest.raises(ValueError, match="buffer_policy='fifo'"):
        ReplayBuffer(10, "fifo")
    with pytest.raises(ValueError, match="buffer=0"):
        ReplayBuffer(0)


def test_agem_projection():
    g_ref = torch.tensor([1.0, 0.0, 1.0])
    g = torch.tensor([-2.0, 1.0, 0.5])
    projected = agem_project(g, g_ref)
    assert torch.dot(projected, g_ref) >= -1e-6
    torch.testing.assert_close(projected, g - (torch.dot(g, g_ref) / 2.0) * g_ref)
    agreeing = torch.tensor([2.0, -1.0, 0.5])
    assert torch.equal(agem_project(agreeing, g_ref), agreeing)


def test_gem_projection_satisfies_every_constraint():
    torch.manual_seed(0)
    G = torch.randn(4, 50)
    g = -G.sum(0) + 0.1 * torch.randn(50)  # conflicts with every memory
    assert (G @ g < 0).all()
    projected = gem_project(g, G, margin=0.0)
    assert (G @ projected >= -1e-5 * g.norm() * G.norm(dim=1)).all()
    # and it stays close to g: closer than the trivial feasible point 0 is to g, at least
    assert (projected - g).norm() < g.norm()


def test_gem_absolute_ridge_holds_the_dual_at_its_bound_on_small_gradients():
    # memory gradients of norm ~0.01: GEM's code's ridge (1e-3) outweighs their Gram matrix (~1e-4)
    torch.manual_seed(0)
    G = 1e-3 * torch.randn(3, 100)
    g = -5 * G.sum(0)
    exact = gem_project(g, G, margin=0.5)
    assert (G @ exact >= -1e-9).all()
    ridged = gem_project(g, G, margin=0.5, ridge=1e-3)
    assert (G @ ridged < 0).any()  # the constraints are not met
    v = torch.linalg.lstsq(G.T.double(), (ridged - g).double().unsqueeze(1)).solution.squeeze(1)
    assert v.min() >= 0.5 - 1e-6 and v.max() < 0.7  # near the margin, the dual's lower bound
    with pytest.raises(ConfigError, match="method.ridge"):
        GEM(ridge=0.0)


def _learner(method, scenario="class_il"):
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=20, n_test=5)
    torch.manual_seed(0)
    sc = Scenario(scenario, s)
    return Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[16]), s, sc, method, batch_size=8)


def test_der_stores_the_logits_seen_at_insertion():
    der = DER(buffer_size=50, alpha=0.3)
    L = _learner(der)
    L.make_optimizer()
    x, y, ids = L.task_sample(0, 8)
    before = L.model(x).detach()
    L.step(Batch(x, y, ids, 0))
    after = L.model(x).detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(der.buffer.logits[:8], before)


def test_herding_picks_the_sample_nearest_the_mean_first():
    torch.manual_seed(0)
    feats = torch.randn(30, 5)
    order = herding(feats, 6)
    assert int(order[0]) == int((feats - feats.mean(0)).norm(dim=1).argmin())
    assert len(order.unique()) == 6
    # the greedy mean of the first k tracks the true mean better than a random k-subset, on average
    err = (feats[order].mean(0) - feats.mean(0)).norm()
    rand = np.mean([(feats[torch.randperm(30)[:6]].mean(0) - feats.mean(0)).norm() for _ in range(50)])
    assert err < rand


def test_icarl_merged_replay_puts_each_exemplar_in_the_task_training_set_once():
    # mammoth's icarl_replay: the exemplars join the next task's data, each in its own task's view (permutation)
    s = permuted(dataset="synthetic", n_tasks=3, side=4, n_train=40, n_test=10)
    torch.manual_seed(0)
    icarl = ICaRL(buffer_size=20, replay="merged")
    L = Learner(MLP((1, 4, 4), 30, hidden=[16]), s, Scenario("class_il", s), icarl, batch_size=8)
    L.train_task(0)
    L.train_task(1)
    x, y, ids = icarl.training_set(2)
    n_new = len(s.tasks[2].train_y)
    assert len(y) == n_new + 20 and (ids[:n_new] == 2).all() and set(ids[n_new:].tolist()) == {0, 1}
    assert set(y[n_new:].tolist()) == set(icarl.exemplars) and set(y[:n_new].tolist()).isdisjoint(icarl.exemplars)
    # stored before the view: rows of the training data, which L.view permutes as their own task does
    ex, ex_ids = x[n_new:], ids[n_new:]
    assert all(bool((s.tasks[1].train_x.flatten(1) == row).all(1).any()) for row in ex.flatten(1))
    from_1 = ex_ids == 1
    torch.testing.assert_close(L.ctx.view(ex, ex_ids)[from_1], s.tasks[1].inputs(ex[from_1]))
    assert not torch.equal(L.ctx.view(ex, ex_ids)[from_1], ex[from_1])  # task 2's permutation is not the identity
    with pytest.raises(ConfigError, match="method.replay"):
        ICaRL(replay="stream")


def test_icarl_loss_units_mean_divides_the_summed_bce_by_the_candidate_units():
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=40, n_test=10)
    losses = {}
    for units in ("sum", "mean"):
        torch.manual_seed(0)
        icarl = ICaRL(buffer_size=40, loss_units=units)
        L = Learner(MLP((1, 4, 4), 10, hidden=[16]), s, Scenario("class_il", s), icarl, batch_size=8,
                    optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.0))
        icarl.before_task(0)
        L.make_optimizer()
        t = s.tasks[0]
        losses[units] = L.step(Batch(t.train_x[:8], t.train_y[:8], torch.zeros(8, dtype=torch.long), 0))[0]
    torch.testing.assert_close(losses["mean"], losses["sum"] / 2)  # task 1 of class-IL: 2 candidate units


def test_icarl_temperature_softens_the_old_models_sigmoid_targets():
    # van de Ven's code: the old units learn sigmoid(z_old / T), T = 2; the new units their one-hot labels
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=40, n_test=10)
    losses = {}
    for T in (1.0, 2.0):
        torch.manual_seed(0)
        icarl = ICaRL(buffer_size=40, replay="merged", temperature=T)
        L = Learner(MLP((1, 4, 4), 10, hidden=[16]), s, Scenario("class_il", s), icarl, batch_size=8,
                    optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.0))  # lr 0: old model == model
        L.train_task(0)
        icarl.before_task(1)
        t = s.tasks[1]
        x, y = t.train_x[:8], t.train_y[:8]
        losses[T] = L.step(Batch(x, y, torch.ones(8, dtype=torch.long), 1))[0]
        with torch.no_grad():
            z = L.model(x)
        target = F.one_hot(y, 10).float()
        old, seen = L.scenario.seen_units[0], L.scenario.seen_units[1]
        target[:, old] = torch.sigmoid(z[:, old] / T)
        by_hand = F.binary_cross_entropy_with_logits(z[:, seen], target[:, seen], reduction="sum") / len(y)
        torch.testing.assert_close(losses[T], by_hand)
    assert not torch.isclose(losses[1.0], losses[2.0])
    with pytest.raises(ConfigError, match="method.temperature"):
        ICaRL(temperature=0)


def icarl_after_one_task(class_means: str) -> tuple[ICaRL, Learner]:
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=40, n_test=10)
    torch.manual_seed(0)
    icarl = ICaRL(buffer_size=40, class_means=class_means)  # 20 exemplars a class
    L = Learner(MLP((1, 4, 4), 10, hidden=[16]), s, Scenario("class_il", s), icarl, batch_size=8)
    L.train_task(0)
    return icarl, L


def test_icarl_mammoth_class_means_average_batch_means_pairwise_on_raw_features():
    icarl, L = icarl_after_one_task("mammoth")  # batch means of 8, 8, 4
    for u, (ex, _) in icarl.exemplars.items():
        with torch.no_grad():
            f = L.model.features(ex)  # raw features, not L2-normalised
        b1, b2, b3 = f[:8].mean(0), f[8:16].mean(0), f[16:].mean(0)
        torch.testing.assert_close(icarl.class_means[u], ((b1 + b2) / 2 + b3) / 2)
        assert not torch.allclose(icarl.class_means[u], f.mean(0))  # not the exemplars' mean
    with pytest.raises(ConfigError, match="method.class_means"):
        ICaRL(class_means="median")


def test_icarl_raw_class_means_are_one_mean_of_raw_features():
    icarl, L = icarl_after_one_task("raw")
    for u, (ex, _) in icarl.exemplars.items():
        with torch.no_grad():
            torch.testing.assert_close(icarl.class_means[u], L.model.features(ex).mean(0))


def test_icarl_uint8_truncated_merges_near_black_exemplars_but_keeps_true_class_means():
    # mammoth 2020's bug, reproduced on purpose: [0, 1] pixels cast to uint8 unscaled, read back as x / 255
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=40, n_test=10)
    for t in s.tasks:  # [0, 1] pixels, as MNIST's raw ones (data.normalize=false)
        t.train_x = t.train_x.clamp(0, 1)
    runs = {}
    for kind in ("stored", "uint8_truncated"):
        torch.manual_seed(0)
        icarl = ICaRL(buffer_size=20, replay="merged", class_means="raw", merged_inputs=kind)
        L = Learner(MLP((1, 4, 4), 10, hidden=[16]), s, Scenario("class_il", s), icarl, batch_size=8)
        L.train_task(0)
        runs[kind] = (icarl, icarl.training_set(1))
    (icarl, (x, y, _)), (bugged, (xb, yb, _)) = runs["stored"], runs["uint8_truncated"]
    n_new = len(s.tasks[1].train_y)
    ex = x[n_new:]
    assert ((ex > 0) & (ex < 1)).any()  # the synthetic pixels are fractions, as MNIST's are
    torch.testing.assert_close(xb[:n_new], x[:n_new])  # the task's own data untouched
    torch.testing.assert_close(xb[n_new:], (ex == 1).to(ex.dtype) / 255)  # below 1 -> 0; exactly 1 -> 1/255
    assert torch.equal(yb, y)
    torch.testing.assert_close(bugged.class_means, icarl.class_means, equal_nan=True)  # from the true exemplars
    with pytest.raises(ConfigError, match="method.merged_inputs"):
        ICaRL(replay="merged", merged_inputs="black")
    with pytest.raises(ConfigError, match="replay=merged"):
        ICaRL(replay="batch", merged_inputs="uint8_truncated")
    standardised = split(dataset="synthetic", n_tasks=5, side=4, n_train=40, n_test=10)
    icarl = ICaRL(buffer_size=20, replay="merged", merged_inputs="uint8_truncated")
    L = Learner(MLP((1, 4, 4), 10, hidden=[16]), standardised, Scenario("class_il", standardised), icarl)
    L.train_task(0)
    with pytest.raises(ConfigError, match="data.normalize=false"):
        icarl.training_set(1)


def test_class_balanced_buffer_smaller_than_classes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="smaller than the 10 classes"):
        run(make_cfg(*FAST, "method=er", "buffer=5", "method.buffer_policy=class_balanced"), tmp_path)


def test_per_class_first_keeps_the_first_of_each_class_in_equal_numbers():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 0, 1, 2, 2, 2, 2])
    assert per_class_first(labels, 6).tolist() == [1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    # 7 slots over 3 classes: 3 + 2 + 2; class 1 has only 3 samples, so of 11 slots classes 0 and 2 take the
    # two it cannot
    assert torch.bincount(labels[per_class_first(labels, 7)]).tolist() == [3, 2, 2]
    assert torch.bincount(labels[per_class_first(labels, 11)]).tolist() == [4, 3, 4]


@pytest.mark.parametrize("method_cls", [GEM, AGEM])
def test_per_class_task_memory_holds_equal_counts_of_each_class(method_cls):
    s = permuted(dataset="synthetic", n_tasks=3, side=4, n_train=200, n_test=20)
    sc = Scenario("domain_il", s)
    counts = {}
    for memory in ("per_class", "random"):
        method = method_cls(buffer_size=90, memory=memory)  # 30 a task: 3 of each of the 10 classes
        L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, method, batch_size=16)
        for t in range(2):
            L.train_task(t)
        ys = torch.cat([m[1] for m in method.memories]) if method_cls is GEM else method.buffer.y[: len(method.buffer)]
        counts[memory] = torch.bincount(ys, minlength=10)
    assert counts["per_class"].tolist() == [6] * 10  # two tasks, 3 per class each
    assert counts["random"].sum() == 60 and counts["random"].tolist() != [6] * 10
    with pytest.raises(ConfigError, match="method.memory"):
        method_cls(memory="herding")


@pytest.fixture(scope="module")
def naive_class_il(tmp_path_factory):
    return run(make_cfg(*FAST, "epochs=3"), tmp_path_factory.mktemp("naive"))


@pytest.mark.parametrize("method", ["er", "derpp", "agem", "gem", "icarl", "icarl_merged", "der"])
def test_replay_reduces_forgetting_on_synthetic_class_il(tmp_path, naive_class_il, method):
    naive = naive_class_il
    extra = ["method.replay=merged"] if method == "icarl_merged" else []
    name = method.removesuffix("_merged")
    row = run(make_cfg(*FAST, "epochs=3", f"method={name}", "buffer=100", *extra), tmp_path / method)
    assert row["buffer_bytes"] > 0
    assert row["forgetting"] < naive["forgetting"] - 0.1
    # A-GEM only stops interference and plain DER has no label loss: in class-IL both lift ACC least
    assert row["ACC"] > naive["ACC"] + (0.05 if method in ("agem", "der") else 0.15)


def test_er_combines_with_regularisers(tmp_path):
    row = run(make_cfg(*FAST, "method=er", "+regularizers=[lwf,ewc]", "lam=1"), tmp_path)
    assert row["method"] == "er" and row["regularizers"] == "lwf+ewc" and row["status"] == "completed"


@pytest.mark.parametrize("variant", ["riemer", "mammoth"])
def test_mer_update_is_the_hand_computed_reptile_step(variant):
    """One incoming example, one stored sample, two inner batches: the weights MER leaves are those of SGD steps
    wrapped in Reptile's within-batch (beta) and across-batch (gamma) interpolations, computed here by hand."""
    from torch.func import functional_call

    from clrun.methods.mer import MER

    s = split(dataset="synthetic", n_tasks=2, side=2, n_train=10, n_test=2)
    sc = Scenario("domain_il", s)
    torch.manual_seed(0)
    lr, beta, gamma = 0.1, 0.5, 0.3
    mer = MER(buffer_size=5, replay_batch_size=1, beta=beta, gamma=gamma, batches_per_example=2, variant=variant)
    L = Learner(MLP((1, 2, 2), sc.n_outputs, hidden=[3]), s, sc, mer, check_step=True,
                optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=lr))
    L.make_optimizer()
    x_mem, y_mem, x_new, y_new = torch.randn(1, 1, 2, 2), torch.tensor([1]), torch.randn(1, 1, 2, 2), torch.tensor([0])
    zero = torch.zeros(1, dtype=torch.long)
    mer.buffer.add(x_mem, y_mem, zero)
    names = [n for n, _ in L.model.named_parameters()]
    theta0 = [p.detach().clone() for p in L.model.parameters()]

    def sgd(theta, x, y):
        logits = functional_call(L.model, dict(zip(names, theta)), (x,))
        grads = torch.autograd.grad(L.ce(logits, y, torch.zeros_like(y), 0), theta)
        return [(t - lr * g).detach().requires_grad_() for t, g in zip(theta, grads)]

    theta = [t.clone().requires_grad_() for t in theta0]
    for _ in range(2):
        start = [t.detach() for t in theta]
        if variant == "riemer":  # the example, then the memory sample, one step each
            theta = sgd(sgd(theta, x_new, y_new), x_mem, y_mem)
        else:  # one step on memory + example
            theta = sgd(theta, torch.cat([x_mem, x_new]), torch.cat([y_mem, y_new]))
        theta = [(w + beta * (t.detach() - w)).requires_grad_() for w, t in zip(start, theta)]
    expected = [a + gamma * (t.detach() - a) for a, t in zip(theta0, theta)]

    _, _, rows = L._train_on(Batch(x_new, y_new, zero, 0), "train")
    assert rows == 4  # 2 inner batches of the example and the memory sample
    for p, want in zip(L.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)
    assert len(mer.buffer) == 2 and torch.equal(mer.buffer.x[1], x_new[0])  # offered to the memory afterwards


def test_mer_reduces_forgetting_on_synthetic_class_il(tmp_path):
    small = [*FAST, "benchmark.n_train=40", "buffer=50"]
    naive = run(make_cfg(*small), tmp_path / "naive")
    mer = run(make_cfg(*small, "method=mer", "method.replay_batch_size=5"), tmp_path / "mer")
    assert mer["method"] == "mer" and mer["steps_per_example"] == 6 and mer["buffer_bytes"] > 0
    assert mer["forgetting"] < naive["forgetting"] - 0.2 and mer["ACC"] > naive["ACC"] + 0.2
