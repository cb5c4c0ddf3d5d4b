import numpy as np
import pytest
import torch

from clrun import streams
from clrun.streams import ConfigError, Scenario

SYN = dict(dataset="synthetic", n_classes=10, side=4, n_train=20, n_test=10)


def test_split_tasks_have_disjoint_classes_covering_the_dataset():
    s = streams.split(n_tasks=5, stream_seed=3, **SYN)
    classes = [c for t in s.tasks for c in t.classes]
    assert sorted(classes) == list(range(10))
    for t in s.tasks:
        assert t.train_y.unique().tolist() == [0, 1]  # local labels
        assert len(t.train_y) == 2 * 20 and len(t.eval_y) == 2 * 10


def test_split_class_order_fixed_by_seed_and_optionally_fixed():
    a = streams.split(n_tasks=5, stream_seed=1, **SYN).meta["class_order"]
    b = streams.split(n_tasks=5, stream_seed=1, **SYN).meta["class_order"]
    c = streams.split(n_tasks=5, stream_seed=2, **SYN).meta["class_order"]
    assert a == b and a != c
    fixed = streams.split(n_tasks=5, stream_seed=2, fixed_class_order=True, **SYN)
    assert [t.classes for t in fixed.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_split_local_labels_follow_the_class_order():
    s = streams.split(n_tasks=5, stream_seed=7, **SYN)
    base = streams._load("synthetic", None, True, 7, {k: v for k, v in SYN.items() if k != "dataset"})
    for t in s.tasks:
        for local, cls in enumerate(t.classes):
            rows = t.train_x[t.train_y == local]
            ref = base.train_x[base.train_y == cls]
            assert torch.equal(rows, ref)


def test_permutations_fixed_by_seed_first_is_identity():
    s1 = streams.permuted(n_tasks=4, stream_seed=5, **SYN)
    s2 = streams.permuted(n_tasks=4, stream_seed=5, **SYN)
    s3 = streams.permuted(n_tasks=4, stream_seed=6, **SYN)
    assert s1.tasks[0].perm is None
    for a, b, c in zip(s1.tasks[1:], s2.tasks[1:], s3.tasks[1:]):
        assert torch.equal(a.perm, b.perm) and not torch.equal(a.perm, c.perm)
        assert sorted(a.perm.tolist()) == list(range(16))
    # the permutation is applied per batch; the underlying tensors are shared, not copied
    assert s1.tasks[1].train_x is s1.tasks[0].train_x
    x = s1.tasks[0].train_x[:3]
    assert torch.equal(s1.tasks[2].inputs(x).flatten(1), x.flatten(1)[:, s1.tasks[2].perm])


def test_rotated_tasks_rotate_and_keep_labels():
    s = streams.rotated(n_tasks=3, angles=[0, 90, 180], **SYN)
    assert torch.equal(s.tasks[0].train_x, streams.permuted(n_tasks=1, **SYN).tasks[0].train_x)
    # 180 degrees twice is the identity on a square image (up to interpolation at the border)
    back = streams._rotate(s.tasks[2].train_x, 180)
    assert torch.allclose(back, s.tasks[0].train_x, atol=1e-4)
    assert all(torch.equal(t.train_y, s.tasks[0].train_y) for t in s.tasks)
    with pytest.raises(ConfigError, match="angles"):
        streams.rotated(n_tasks=2, angles=[0, 10, 20], **SYN)


def test_nearest_rotation_moves_pixels_and_bilinear_blends_them():
    s = streams.rotated(n_tasks=2, angles=[0, 90], interpolation="nearest", **SYN)
    x, r90 = s.tasks[0].train_x, s.tasks[1].train_x
    # a quarter turn maps pixel centres onto pixel centres: nearest is exactly rot90 (one of its two senses)
    assert any(torch.allclose(r90, torch.rot90(x, k, (2, 3)), atol=1e-5) for k in (1, -1))
    # at 30 degrees nearest only copies input intensities (or the background); bilinear makes new ones
    known = torch.cat([x[:1].flatten(), x.amin().reshape(1)])

    def copied(img):  # each output value is (up to float rounding) one of the known ones
        return (img.flatten()[:, None] - known[None]).abs().amin(1) < 1e-5

    assert copied(streams._rotate(x[:1], 30, interpolation="nearest")).all()
    assert not copied(streams._rotate(x[:1], 30, interpolation="bilinear")).all()
    with pytest.raises(ConfigError, match="interpolation"):
        streams.rotated(n_tasks=2, interpolation="bicubic", **SYN)


def test_permuted_pad_grows_the_image_and_the_permutation_covers_it():
    s = streams.permuted(n_tasks=2, pad=2, **SYN)
    assert s.in_shape == (1, 8, 8) and s.tasks[0].train_x.shape[1:] == (1, 8, 8)
    x = s.tasks[0].train_x
    assert torch.equal(x[:, :, 2:6, 2:6], streams.permuted(n_tasks=1, **SYN).tasks[0].train_x)
    assert (x[:, :, :2] == x.amin()).all() and (x[:, :, :, -2:] == x.amin()).all()  # background border
    assert sorted(s.tasks[1].perm.tolist()) == list(range(64))
    with pytest.raises(ConfigError, match="pad"):
        streams.permuted(n_tasks=2, pad=-1, **SYN)


def test_random_angles_are_drawn_per_stream_seed_within_range():
    def angles(seed: int) -> list[float]:
        return streams.rotated(n_tasks=6, random_angles=True, max_angle=180, stream_seed=seed, **SYN).meta["angles"]

    a = angles(0)
    assert len(a) == 6 and all(0 <= x < 180 for x in a) and len(set(a)) == 6
    assert a == angles(0) and a != angles(1)  # a seed reproduces its stream, another seed draws anew
    with pytest.raises(ConfigError, match="random_angles"):
        streams.rotated(n_tasks=2, angles=[0, 10], random_angles=True, **SYN)


def test_domains_is_clean_rotated_noisy():
    s = streams.domains(**SYN)
    assert [t.name.split("rot")[0] or "rot" for t in s.tasks] == ["clean", "rot", "noisy"]
    assert not torch.equal(s.tasks[2].train_x, s.tasks[0].train_x)


@pytest.mark.parametrize("scenario,n_out", [("task_il", 10), ("class_il", 10), ("domain_il", 2)])
def test_label_mapping_per_scenario_split(scenario, n_out):
    s = streams.split(n_tasks=5, **SYN)
    sc = Scenario(scenario, s)
    assert sc.n_outputs == n_out
    y = torch.tensor([0, 1])
    for t in range(5):
        units = sc.targets(y, t).tolist()
        assert units == ([0, 1] if scenario == "domain_il" else [2 * t, 2 * t + 1])


def test_masks_per_scenario():
    s = streams.permuted(n_tasks=3, **SYN)
    ti, ci, di = (Scenario(n, s) for n in ("task_il", "class_il", "domain_il"))
    assert ti.n_outputs == ci.n_outputs == 30 and di.n_outputs == 10
    ids = torch.tensor([0, 2])
    m = ti.mask(ids, upto=2)
    assert m[0].nonzero().squeeze().tolist() == list(range(10))
    assert m[1].nonzero().squeeze().tolist() == list(range(20, 30))
    assert ci.mask(ids, upto=1).sum(1).tolist() == [20, 20]  # classes of tasks 0..1, whatever the sample
    assert di.mask(ids, upto=0) is None
    logits = torch.zeros(2, 30)
    masked = ti.masked(logits, ids, 2)
    assert torch.isfinite(masked).all() and (masked.argmax(1) == torch.tensor([0, 20])).all()


def test_validation_split_is_stratified_and_disjoint_from_train():
    s = streams.split(n_tasks=5, val_fraction=0.2, **SYN)
    assert s.eval_split == "val"
    t = s.tasks[0]
    assert len(t.eval_y) == 2 * 4 and len(t.train_y) == 2 * 16
    # validation rows come out of the training set, not the test set
    train_rows = {tuple(r.tolist()) for r in t.train_x.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in t.eval_x.flatten(1))


@pytest.mark.parametrize("n_tasks", [0, 3, 11, 2.5])
def test_bad_n_tasks_for_split(n_tasks):
    with pytest.raises(ConfigError, match="n_tasks"):
        streams.split(n_tasks=n_tasks, **SYN)


def test_unknown_scenario():
    with pytest.raises(ConfigError, match="scenario='online'"):
        Scenario("online", streams.split(n_tasks=5, **SYN))


@pytest.mark.parametrize("make", [streams.permuted, streams.rotated])
def test_train_per_task_draws_a_seeded_subset_per_task(make):
    full = make(n_tasks=3, stream_seed=1, **SYN)
    sub = make(n_tasks=3, stream_seed=1, train_per_task=50, **SYN)
    again = make(n_tasks=3, stream_seed=1, train_per_task=50, **SYN)
    n_all = len(full.tasks[0].train_y)
    for t, u, v in zip(full.tasks, sub.tasks, again.tasks):
        assert len(u.train_y) == 50 and torch.equal(u.train_y, v.train_y)  # the same draw for the same seed
        assert torch.equal(u.eval_y, t.eval_y)  # evaluation is untouched
    # each task draws its own samples
    assert not torch.equal(sub.tasks[0].train_y, sub.tasks[1].train_y)
    with pytest.raises(ConfigError, match="train_per_task"):
        make(n_tasks=2, train_per_task=n_all + 1, **SYN)


def test_numpy_shuffle_pairs_the_digits_as_van_de_ven_and_tolias_code_does_for_the_seed():
    # their data.py: np.random.seed(s); p = np.random.permutation(10); digit d becomes label p[d], and task k
    # holds labels 2k, 2k+1 (local 0 and 1 in domain-IL)
    for seed in (1, 7, 20):
        p = np.random.RandomState(seed).permutation(10)
        stream = streams.split(n_tasks=5, stream_seed=seed, shuffle_rng="numpy", **SYN)
        for k, task in enumerate(stream.tasks):
            assert [int(p[d]) for d in task.classes] == [2 * k, 2 * k + 1]
    with pytest.raises(ConfigError, match="benchmark.shuffle_rng='jax' is not one of torch, numpy"):
        streams.split(n_tasks=5, stream_seed=0, shuffle_rng="jax", **SYN)


def test_seeds_splitting_the_same_data_the_same_way_share_its_tensors():
    """A sweep's seeds built in one process (a stacked model's) with a fixed class order reuse the first seed's
    task tensors instead of copying the dataset once a seed; another order or other data gets its own."""
    base = streams._load("synthetic", None, True, 0, {k: v for k, v in SYN.items() if k != "dataset"})
    data = (base.train_x, base.train_y, base.test_x, base.test_y)
    first = streams._class_split("s", *data, list(range(10)), 5)
    again = streams._class_split("s", *data, list(range(10)), 5)
    assert all(a.train_x.data_ptr() == b.train_x.data_ptr() and a.eval_y.data_ptr() == b.eval_y.data_ptr()
               for a, b in zip(first, again))
    assert [t.classes for t in again] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]] and again[0] is not first[0]
    other = streams._class_split("s", *data, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], 5)
    assert other[0].classes == [9, 8] and other[0].train_x.data_ptr() != first[0].train_x.data_ptr()
    assert torch.equal(other[0].train_x, base.train_x[(base.train_y == 9) | (base.train_y == 8)])
    copy = tuple(t.clone() for t in data)  # equal values, other tensors: split anew
    assert streams._class_split("s", *copy, list(range(10)), 5)[0].train_x.data_ptr() != first[0].train_x.data_ptr()
