import pytest
import torch

from clrun.learner import Learner
from clrun.methods.adapters import Adapters
from clrun.methods.packnet import PackNet
from clrun.methods.pnn import PNN
from clrun.methods.supsup import SupSup
from clrun.models import CNN, MLP, Backbone
from clrun.run import run
from clrun.streams import ConfigError, Scenario, split
from tests.conftest import FAST, make_cfg


def _learner(method, n_tasks=5, seed=0):
    s = split(dataset="synthetic", n_tasks=n_tasks, side=4, n_train=30, n_test=10)
    torch.manual_seed(seed)
    sc = Scenario("task_il", s)
    return Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[32, 32]), s, sc, method, batch_size=16,
                   optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))


def _outputs(L, task_id):
    x = L.stream.tasks[task_id].inputs(L.stream.tasks[task_id].eval_x)
    with torch.inference_mode():
        return L.method.predict(x, task_id, task_id).clone()


@pytest.mark.parametrize("make", [lambda: PNN(hidden=[16, 16]), lambda: PNN(hidden=[16, 16], laterals="per_column"),
                                  lambda: PackNet(prune=0.5, post_prune_epochs=1), lambda: SupSup(sparsity=0.5),
                                  lambda: Adapters(kind="bottleneck", rank=4), lambda: Adapters(kind="lora", rank=4)],
                         ids=["pnn", "pnn_per_column", "packnet", "supsup", "adapters_bottleneck", "adapters_lora"])
def test_old_task_outputs_are_bit_identical_after_later_tasks(make):
    # momentum 0.9 on purpose: frozen weights must not drift through the optimiser's state either
    L = _learner(make())
    L.train_task(0, epochs=2)
    after_0 = _outputs(L, 0)
    for t in (1, 2):
        L.train_task(t, epochs=2)
        assert torch.equal(_outputs(L, 0), after_0)
    after_1 = _outputs(L, 1)
    L.train_task(3, epochs=2)
    assert torch.equal(_outputs(L, 1), after_1)


def test_packnet_masks_are_disjoint_and_free_capacity_halves_each_task():
    pk = PackNet(prune=0.5, post_prune_epochs=0)
    L = _learner(pk)
    for t in range(3):
        L.train_task(t)
        assert pk.free_fraction() == pytest.approx(0.5 ** (t + 1), abs=0.01)
        for own in pk.owner.values():
            counts = [(own == k).sum().item() for k in range(t + 1)]
            # disjoint by construction (one owner per weight); each task kept half of what was free
            total = own.numel()
            for k, c in enumerate(counts):
                assert c == pytest.approx(total * 0.5 ** (k + 1), abs=2)
    # a later task's weights are invisible to an earlier task
    masks0, masks2 = pk.usable(0), pk.usable(2)
    for n in masks0:
        assert (masks0[n] <= masks2[n]).all() and masks0[n].sum() < masks2[n].sum()


def _pnn_growth(pnn: PNN, n_tasks: int = 5):
    """The learner, the parameter count after each new column, and the trainable count at the last one."""
    L = _learner(pnn, n_tasks=n_tasks)
    counts = []
    for t in range(n_tasks):
        pnn.before_task(t)
        counts.append(L.n_parameters())
    return L, counts, sum(p.numel() for p in L.model.parameters() if p.requires_grad)


def test_pnn_parameter_count_grows_linearly_with_tasks():
    _, counts, trainable = _pnn_growth(PNN(hidden=[16, 16]))
    steps = [b - a for a, b in zip(counts, counts[1:])]
    # every new column adds the same count (itself and its adapters): linear in T; the first has no adapters
    assert len(set(steps)) == 1 and counts[0] < steps[0]
    assert trainable == steps[-1]  # only the newest column and its adapters train


def test_pnn_per_column_laterals_grow_quadratically_and_feed_every_layer():
    # A-GEM's PROG-NN: column k has, per earlier column, a Linear with bias into each layer (the first one included)
    L, counts, trainable = _pnn_growth(PNN(hidden=[16, 16], laterals="per_column"))
    steps = [b - a for a, b in zip(counts, counts[1:])]
    assert steps == [(k + 1) * counts[0] for k in range(1, 5)]  # each lateral set has a column's shapes
    assert trainable == steps[-1]
    # columns 1 and 2 by hand: every layer adds each earlier column's input to that layer through its own Linear
    net, x = L.model, torch.randn(3, 1, 4, 4)
    c0, c1, c2 = net.columns[:3]
    def lat(k, layer, j, h):  # column k's Linear from column j into layer: its block of the bank
        bank = net.laterals[k][layer]
        n_in = h.shape[1]
        return h @ bank.weight[:, j * n_in:(j + 1) * n_in].T + bank.bias[j]
    h0 = x.flatten(1)
    a1 = torch.relu(c0[0](h0))
    a2 = torch.relu(c0[1](a1))
    b1 = torch.relu(c1[0](h0) + lat(1, 0, 0, h0))
    b2 = torch.relu(c1[1](b1) + lat(1, 1, 0, a1))
    assert torch.allclose(net(x, 1), c1[2](b2) + lat(1, 2, 0, a2), atol=1e-5)
    d1 = torch.relu(c2[0](h0) + lat(2, 0, 0, h0) + lat(2, 0, 1, h0))
    d2 = torch.relu(c2[1](d1) + lat(2, 1, 0, a1) + lat(2, 1, 1, b1))
    assert torch.allclose(net(x, 2), c2[2](d2) + lat(2, 2, 0, a2) + lat(2, 2, 1, b2), atol=1e-5)
    with pytest.raises(ConfigError, match="method.laterals"):
        PNN(laterals="sum")


def test_pnn_columns_and_adapters_take_the_configured_init():
    # A-GEM's PROG-NN columns are built by the same TF initialisers as its MLP (model.init=trunc_normal)
    pnn = PNN(hidden=[16, 16], init="trunc_normal")
    L = _learner(pnn, n_tasks=5)
    pnn.before_task(2)  # three columns
    linears = [m for m in L.model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 * 3 + 2 * 2  # three columns of three layers; columns 2-3 adapt into layer 2 and head
    for m in linears:
        assert m.weight.abs().max() <= 0.2 and 0.07 < m.weight.std() < 0.11  # N(0, 0.1) cut at 2 std (std 0.088)
        assert m.bias is None or torch.all(m.bias == 0.1)
    with pytest.raises(ConfigError, match="method.init"):
        PNN(init="orthogonal")


def test_supsup_stores_one_bit_per_weight_per_task():
    ss = SupSup(sparsity=0.5)
    L = _learner(ss)
    n_weights = sum(p.numel() for p in L.model.parameters() if p.dim() > 1 and p.requires_grad is False
                    and not any(p is s for s in L.model.supermask_scores.parameters()))
    for t in range(2):
        L.train_task(t)
    assert set(ss.masks) == {0, 1}
    for masks in ss.masks.values():
        assert all(m.dtype == torch.bool for m in masks.values())
        assert sum(m.numel() for m in masks.values()) == n_weights
        assert all(m.float().mean().item() == pytest.approx(0.5, abs=0.01) for m in masks.values())
    assert ss.extra_metrics()["mask_bits_per_task"] == n_weights
    # finished tasks keep only their bits: the float scores are gone
    assert all(p.numel() == 0 for p in L.model.supermask_scores[0].parameters())


@pytest.mark.parametrize("method", ["pnn", "packnet", "supsup", "adapters"])
def test_dynamic_methods_refuse_scenarios_without_task_ids(tmp_path, method):
    with pytest.raises(ConfigError, match="supports: task_il"):
        run(make_cfg(*FAST, f"method={method}", "scenario=class_il"), tmp_path)


@pytest.mark.parametrize("method", ["pnn", "packnet", "supsup"])  # adapters: the trunk test below
def test_dynamic_methods_run_end_to_end_with_zero_forgetting(tmp_path, method):
    row = run(make_cfg(*FAST, f"method={method}", "scenario=task_il", "epochs=3"), tmp_path)
    assert row["status"] == "completed" and row["forgetting"] == pytest.approx(0.0, abs=1e-9)
    assert row["ACC"] > 0.8


PERMUTED_SYNTHETIC = [*FAST, "benchmark._target_=clrun.streams.permuted", "~benchmark.fixed_class_order",
                      "benchmark.n_tasks=4", "scenario=domain_il", "model.hidden=[128]", "epochs=3"]


@pytest.mark.parametrize("mode", ["oneshot", "binary"])
def test_supsup_infers_the_task_without_task_ids(tmp_path, mode):
    # domain-IL permuted stream, no task id at test time: chance is 1/4 for the task and ~0.1 for the label
    row = run(make_cfg(*PERMUTED_SYNTHETIC, "method=supsup", f"method.task_inference={mode}"), tmp_path / mode)
    assert row["task_inference_acc"] >= 0.7
    assert row["ACC"] >= 0.6  # a wrongly inferred mask answers at about chance


def test_supsup_superposition_with_one_hot_alpha_is_that_tasks_network():
    ss = SupSup(sparsity=0.5, task_inference="oneshot")
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=30, n_test=10)
    sc = Scenario("class_il", s)
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[32]), s, sc, ss, batch_size=16,
                optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.1))
    for t in range(3):
        L.train_task(t)
    stacked = ss.stacked_masks([0, 1, 2])
    x = s.tasks[1].eval_x
    one_hot = torch.tensor([0.0, 1.0, 0.0])
    assert torch.allclose(ss.superposed_logits(x, one_hot, stacked), ss.forward(x, 1), atol=1e-6)
    # one inference per batch (20 samples < inference_batch): every prediction lies in the classes of one
    # learnt task
    task_of_unit = sc.task_units.float().argmax(0)
    predicted_tasks = task_of_unit[ss.predict(x, 1, 2).argmax(1)].unique()
    assert len(predicted_tasks) == 1 and int(predicted_tasks) in (0, 1, 2)


def test_supsup_task_inference_modes_pick_their_scenarios(tmp_path):
    with pytest.raises(ConfigError, match="supports: domain_il, class_il"):
        run(make_cfg(*FAST, "method=supsup", "method.task_inference=oneshot", "scenario=task_il"), tmp_path)
    with pytest.raises(ConfigError, match="task_inference='guess'"):
        run(make_cfg(*FAST, "method=supsup", "method.task_inference=guess"), tmp_path)


def test_top_mask_keeps_exactly_the_largest_fraction_even_with_ties():
    from clrun.methods.supsup import top_mask

    torch.manual_seed(0)
    scores = torch.randn(40, 25)
    mask = top_mask(scores, 0.3)
    assert int(mask.sum()) == 300 and mask.shape == scores.shape
    assert scores[mask].min() > scores[~mask].max()  # the kept ones are the largest
    tied = torch.zeros(10, 10)
    tied[0, :5] = 1.0  # 5 ones, 95 zeros: the 20 kept must be the 5 ones and 15 of the tied zeros
    mask = top_mask(tied, 0.2)
    assert int(mask.sum()) == 20 and bool(mask[0, :5].all())


# ---- adapters on a frozen trunk
@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_a_new_adapter_starts_as_the_trunk_and_adds_the_stated_parameters(kind, model):
    s = split(dataset="synthetic", n_tasks=5, side=8, n_train=20, n_test=10)
    sc = Scenario("task_il", s)
    torch.manual_seed(0)
    net = (MLP((1, 8, 8), sc.n_outputs, hidden=[12, 10]) if model == "mlp"
           else CNN((1, 8, 8), sc.n_outputs, channels=[3, 5], hidden=7))
    ad = Adapters(kind=kind, rank=2)
    L = Learner(net, s, sc, ad, batch_size=8, optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.1))
    L.train_task(0)
    x = s.tasks[0].eval_x
    with torch.no_grad():
        L.model.head.active = 1
        bare = L.model.head(L.model.features(x))  # the trunk and task 1's head, no adapter
        assert torch.allclose(ad.forward(x, 1), bare, atol=1e-6)  # task 1's untrained adapters: the identity
        for p in L.model.task_adapters[1].parameters():
            p.add_(0.1)
        assert not torch.allclose(ad.forward(x, 1), bare, atol=1e-3)  # and they act on every adapted layer
    layers = [m for m in L.model.features.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    if kind == "bottleneck":  # down C->r and up r->C, both with biases
        outs = [m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels for m in layers]
        expected = sum(2 * c * 2 + 2 + c for c in outs)
    else:  # A: r x (fan-in), B: out x r
        expected = sum(2 * (m.weight[0].numel() + m.weight.shape[0]) for m in layers)
    row = ad.extra_metrics()
    head = (L.model.features(x).shape[1] + 1) * 2  # the last task's own two units
    assert len(L.model.head.heads) == 5 and L.model.head.heads[4].out_features == 2
    assert row["adapter_parameters_per_task"] == expected and row["head_parameters_per_task"] == head
    assert row["added_bytes_per_task"] == 4 * (expected + head)
    assert len(L.model.task_adapters[0]) == 0  # task 0 is the trunk itself


class _NormNet(Backbone):
    def __init__(self, in_shape, n_outputs):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.BatchNorm1d(12),
                                            torch.nn.ReLU())
        self.head = torch.nn.Linear(12, n_outputs)


def test_the_frozen_trunk_keeps_its_weights_and_batch_norm_statistics():
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=30, n_test=10)
    sc = Scenario("task_il", s)
    torch.manual_seed(0)
    L = Learner(_NormNet((1, 4, 4), sc.n_outputs), s, sc, Adapters(rank=3), batch_size=8,
                optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3))
    L.train_task(0)
    trunk = {k: v.clone() for k, v in L.model.features.state_dict().items()}
    heads = L.model.head.heads
    head0, head1 = heads[0].weight.clone(), heads[1].weight.clone()
    L.train_task(1, epochs=2)
    after = L.model.features.state_dict()
    assert all(torch.equal(trunk[k], after[k]) for k in trunk)  # running mean and var included
    assert torch.equal(heads[0].weight, head0)
    assert not torch.equal(heads[1].weight, head1)  # task 1 learnt its own head


def test_a_trunk_from_an_earlier_run_is_loaded_frozen_and_every_task_gets_adapters(tmp_path):
    run(make_cfg(*FAST, "method=naive", "scenario=task_il", "benchmark.n_tasks=2"), tmp_path / "pre")
    from clrun import checkpoint as ckpt

    pre = ckpt.model_state(tmp_path / "pre")
    row = run(make_cfg(*FAST, "method=adapters", "scenario=task_il", f"method.trunk={tmp_path / 'pre'}"),
              tmp_path / "ad")
    assert row["status"] == "completed" and row["forgetting"] == pytest.approx(0.0, abs=1e-9)
    after = ckpt.model_state(tmp_path / "ad")
    assert all(torch.equal(after[k], v) for k, v in pre.items() if k.startswith("features."))
    assert any(k.startswith("task_adapters.0.") for k in after)  # task 0 is adapted too
    torch.save({k: v for k, v in pre.items()}, tmp_path / "trunk.pt")  # a plain state_dict file works the same
    assert run(make_cfg(*FAST, "method=adapters", "scenario=task_il", "benchmark.n_tasks=2",
                        f"method.trunk={tmp_path / 'trunk.pt'}"), tmp_path / "file")["status"] == "completed"
    with pytest.raises(ConfigError, match="method.trunk=.*no such file"):
        run(make_cfg(*FAST, "method=adapters", "scenario=task_il", f"method.trunk={tmp_path / 'nothing'}"),
            tmp_path / "bad")
    with pytest.raises(ConfigError, match="does not fit model=MLP"):
        run(make_cfg(*FAST, "method=adapters", "scenario=task_il", "model.hidden=[32]",
                     f"method.trunk={tmp_path / 'pre'}"), tmp_path / "wide")
    for refused in ("bad", "wide"):  # refused before any file of the run was written
        assert not (tmp_path / refused).exists() or not any((tmp_path / refused).iterdir())


def test_adapters_infer_the_task_by_entropy_without_task_ids(tmp_path):
    # domain-IL permuted stream: the task is the permutation, which the labels do not tell; chance is 1/4
    row = run(make_cfg(*PERMUTED_SYNTHETIC, "method=adapters", "method.kind=lora", "method.task_inference=entropy"),
              tmp_path)
    assert row["task_inference_acc"] >= 0.9 and row["ACC"] >= 0.9


def test_adapters_entropy_inference_answers_within_one_tasks_classes_in_class_il():
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=30, n_test=10)
    sc = Scenario("class_il", s)
    torch.manual_seed(0)
    ad = Adapters(rank=4, task_inference="entropy", inference_batch=5)
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[32]), s, sc, ad, batch_size=16,
                optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.1))
    for t in range(3):
        L.train_task(t, epochs=3)
    x = torch.cat([s.tasks[1].eval_x, s.tasks[2].eval_x])  # 20 + 20: four groups of 5 per task
    with torch.inference_mode():
        pred = ad.predict(x, 1, 2).argmax(1)
    task_of_unit = sc.task_units.float().argmax(0)[pred]
    for g in range(8):  # each group of 5 answers among one learnt task's classes
        assert len(task_of_unit[5 * g: 5 * g + 5].unique()) == 1
    assert int(task_of_unit.max()) <= 2
