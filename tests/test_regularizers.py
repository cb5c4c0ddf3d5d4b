import copy

import pytest
import torch
import torch.nn.functional as F

from clrun.importance import add_kronecker, batch_squared_gradient, fisher_diag, kfac_factors, mas_importance
from clrun.learner import Learner
from clrun.methods.base import Batch, Step
from clrun.methods.ewc import EWC
from clrun.methods.lwf import LwF
from clrun.methods.mas import MAS
from clrun.methods.naive import Naive
from clrun.methods.si import SI
from clrun.models import MLP
from clrun.run import run
from clrun.streams import ConfigError, Scenario, split
from tests.conftest import FAST, make_cfg

NO_STEP = Step(None, None, None)  # hooks that do not read the step


def tiny_problem(seed=0, n=12):
    torch.manual_seed(seed)
    model = MLP((1, 2, 3), 5, hidden=[4]).double()
    x = torch.randn(n, 1, 2, 3, dtype=torch.float64)
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[:, 4] = False  # one non-candidate unit, as a scenario would mask it
    mask[: n // 2, 0] = False  # and per-sample masks differ
    y = torch.randint(1, 4, (n,))
    return model, x, y, mask


def brute_force_fisher(model, x, y, mask, kind, generator=None):
    """Per-sample gradients one at a time with autograd: the definition, no vectorisation."""
    params = [p for p in model.parameters()]
    total = [torch.zeros_like(p) for p in params]
    logp = F.log_softmax(model(x).masked_fill(~mask, -1e300), dim=1)
    if kind == "true":
        y = torch.multinomial(logp.exp().detach().cpu(), 1, generator=generator).squeeze(1)
    if kind == "predicted":
        y = logp.argmax(1)
    for i in range(len(x)):
        li = F.log_softmax(model(x[i : i + 1]).masked_fill(~mask[i : i + 1], -1e300), dim=1)[0]
        labels = mask[i].nonzero().squeeze(1).tolist() if kind == "expected" else [int(y[i])]
        for c in labels:
            weight = li[c].exp().item() if kind in ("expected", "weighted_empirical") else 1.0
            grads = torch.autograd.grad(-li[c], params, retain_graph=True)
            for t, g in zip(total, grads):
                t += weight * g.pow(2)
    names = [n for n, _ in model.named_parameters()]
    return {n: t / len(x) for n, t in zip(names, total)}


@pytest.mark.parametrize("kind", ["empirical", "true", "expected", "predicted", "weighted_empirical"])
@pytest.mark.parametrize("chunk", [12, 5])
@pytest.mark.parametrize("backend", ["vmap", "auto"])  # auto: the Linear-layer outer-product path for an MLP
def test_fisher_estimators_match_brute_force(kind, chunk, backend):
    model, x, y, mask = tiny_problem()
    if kind == "true":
        chunk = 12  # one sampling call, so both draw the same labels from the same generator
    fast = fisher_diag(model, x, y, mask, kind, chunk=chunk, generator=torch.Generator().manual_seed(3),
                       backend=backend)
    slow = brute_force_fisher(model, x, y, mask, kind, generator=torch.Generator().manual_seed(3))
    for n in slow:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-5, atol=1e-5 * float(slow[n].abs().max()))


def test_models_with_convolutions_take_the_vmap_path_and_match_brute_force():
    from clrun.importance import linear_layers
    from clrun.models import CNN

    torch.manual_seed(0)
    model = CNN((1, 8, 8), 5, channels=[3], hidden=6).double()
    assert linear_layers(model) is None and linear_layers(MLP((1, 2, 2), 3)) is not None
    x = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    mask = torch.ones(7, 5, dtype=torch.bool)
    fast = fisher_diag(model, x, y, mask, "empirical", chunk=3)
    slow = brute_force_fisher(model, x, y, mask, "empirical")
    for n in slow:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-5, atol=1e-12)


def test_estimators_differ_from_each_other_and_from_the_batch_squared_gradient():
    model, x, y, mask = tiny_problem(n=40)
    emp = fisher_diag(model, x, y, mask, "empirical")
    exp = fisher_diag(model, x, y, mask, "expected")
    sq = batch_squared_gradient(model, x, y, mask)
    flat = {k: torch.cat([t.flatten() for t in d.values()]) for k, d in (("emp", emp), ("exp", exp), ("sq", sq))}
    assert not torch.allclose(flat["emp"], flat["exp"], rtol=1e-2)
    # the square of the mean gradient is far smaller than the mean of the squares (Jensen), not an estimate of F
    assert flat["sq"].sum() < 0.5 * flat["emp"].sum()
    assert (flat["sq"] <= flat["emp"] + 1e-12).all()


def brute_force_mas(model, x, mask):
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        out = model(x[i : i + 1]) * mask[i : i + 1]
        for t, g in zip(total, torch.autograd.grad(0.5 * out.pow(2).sum(), params)):
            t += g.abs()
    return {n: t / len(x) for (n, _), t in zip(model.named_parameters(), total)}


def test_mas_matches_brute_force_and_needs_no_labels():
    model, x, _, mask = tiny_problem()
    slow = brute_force_mas(model, x, mask)
    for backend in ("vmap", "auto"):
        fast = mas_importance(model, x, mask, chunk=5, backend=backend)
        for n in slow:
            torch.testing.assert_close(fast[n], slow[n], rtol=1e-6, atol=1e-9)
    # A-GEM's code: |gradient of a batch's summed norms|, batch by batch, smaller than the per-sample mean of |.|
    batched, params = mas_importance(model, x, mask, abs_batch=4), dict(model.named_parameters())
    for n, b in batched.items():
        by_hand = sum(torch.autograd.grad(0.5 * (model(x[s : s + 4]) * mask[s : s + 4]).pow(2).sum(), params[n])[0]
                      .abs() for s in range(0, len(x), 4)) / len(x)
        torch.testing.assert_close(b, by_hand)
        assert (b <= slow[n] + 1e-12).all()
    assert sum(b.sum() for b in batched.values()) < 0.99 * sum(t.sum() for t in slow.values())
    # through the method: shuffling the task's labels leaves MAS's importance unchanged
    omegas = []
    for shuffle in (False, True):
        s = split(dataset="synthetic", n_tasks=5, side=4, n_train=10, n_test=2)
        if shuffle:
            s.tasks[0].train_y = s.tasks[0].train_y[torch.randperm(len(s.tasks[0].train_y))]
        torch.manual_seed(0)
        mas = MAS(lam=1.0, samples=None)
        Learner(MLP((1, 4, 4), 10, hidden=[8]), s, Scenario("class_il", s), Naive(), [mas])
        mas.after_task(0)
        omegas.append(mas.importance)
    for n in omegas[0]:
        assert torch.equal(omegas[0][n], omegas[1][n])


def _learner_with(method, n_tasks=5):
    s = split(dataset="synthetic", n_tasks=n_tasks, side=4, n_train=10, n_test=2)
    torch.manual_seed(0)
    return Learner(MLP((1, 4, 4), 10, hidden=[8]), s, Scenario("task_il", s), Naive(), [method])


def test_ewc_keeps_one_fisher_per_task_and_online_ewc_keeps_a_discounted_sum():
    offline, online = EWC(lam=1.0, fisher="empirical", online=False), EWC(lam=1.0, fisher="empirical", online=True,
                                                                            gamma=0.5)
    L_off, L_on = _learner_with(offline), _learner_with(online)
    fishers = []
    for t in range(2):
        for L in (L_off, L_on):
            with torch.no_grad():  # move the weights so each task's optimum differs
                for p in L.model.parameters():
                    p.add_(0.1 * torch.randn_like(p))
        offline.after_task(t)
        x, y, ids = L_on.task_sample(t, offline.fisher_samples)
        fishers.append(fisher_diag(L_on.model, x, y, L_on.scenario.candidates(ids, t), "empirical"))
        online.after_task(t)
    name = "features.1.weight"
    assert offline.importance[name].shape[0] == 2 and online.importance[name].shape[0] == 1
    torch.testing.assert_close(online.importance[name][0], 0.5 * fishers[0][name] + fishers[1][name])
    torch.testing.assert_close(online.anchor[name][0], dict(L_on.model.named_parameters())[name].detach())


def test_ewc_penalty_is_half_lam_F_delta_squared():
    ewc = EWC(lam=3.0, fisher="empirical")
    L = _learner_with(ewc)
    ewc.after_task(0)
    F0 = {n: t[0].clone() for n, t in ewc.importance.items()}
    theta0 = {n: p.detach().clone() for n, p in L.model.named_parameters()}
    with torch.no_grad():
        for p in L.model.parameters():
            p.add_(0.05)
    expected = 0.5 * 3.0 * sum((F0[n] * (p - theta0[n]).pow(2)).sum() for n, p in L.model.named_parameters())
    torch.testing.assert_close(ewc.value(), expected.detach())
    # training adds the penalty's gradient after backward: it must equal autograd's gradient of the penalty
    L.model.zero_grad(set_to_none=True)
    ewc.add_penalty_gradient(1.0)
    auto = torch.autograd.grad(expected, list(L.model.parameters()))
    for p, g in zip(L.model.parameters(), auto):
        torch.testing.assert_close(p.grad, g)


def _vec(w):
    return w.T.reshape(-1)  # columns stacked: vec(G X A) = (A (x) G) vec(X) for symmetric A


def test_kfac_penalty_is_the_kronecker_quadratic_form_without_forming_it():
    ewc = EWC(lam=3.0, fisher="empirical", fisher_form="kfac")
    L = _learner_with(ewc)
    ewc.after_task(0)
    anchors = {n: W.clone() for n, (_, _, W) in ewc.kfac[0].items()}
    with torch.no_grad():
        for p in L.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    layers = dict(L.model.named_modules())
    expected = 0
    for name, (A, G, _) in ewc.kfac[0].items():
        m = layers[name]
        d = _vec(torch.cat([m.weight, m.bias[:, None]], 1) - anchors[name])
        expected = expected + 0.5 * 3.0 * d @ torch.kron(A, G) @ d
    torch.testing.assert_close(ewc.penalty_value(), expected)
    # its gradient, added in closed form (lam G dW' A), is autograd's gradient of that value
    params = [p for p in L.model.parameters() if p.requires_grad]
    want = torch.autograd.grad(ewc.penalty_value(), params)
    for p in params:
        p.grad = None
    torch.testing.assert_close(ewc.add_penalty_gradient(1.0), expected.detach())
    for p, g in zip(params, want):
        torch.testing.assert_close(p.grad, g)


def test_kfac_of_one_sample_is_its_exact_fisher_block_and_its_diagonal_the_diagonal_fisher():
    model, x, y, mask = tiny_problem(n=1)
    factors = kfac_factors(model, x, y, mask, "empirical")
    diag = fisher_diag(model, x, y, mask, "empirical", backend="vmap")
    logp = F.log_softmax(model(x).masked_fill(~mask, -1e300), dim=1)[0, y[0]]
    layers = dict(model.named_modules())
    for name, (A, G) in factors.items():
        m = layers[name]
        gw, gb = torch.autograd.grad(-logp, [m.weight, m.bias], retain_graph=True)
        g = _vec(torch.cat([gw, gb[:, None]], 1))
        block = torch.kron(A, G)
        torch.testing.assert_close(block, torch.outer(g, g))  # one sample: A (x) G is the Fisher block itself
        on_diag = torch.diagonal(block)
        torch.testing.assert_close(on_diag[: gw.numel()], _vec(diag[f"{name}.weight"]))
        torch.testing.assert_close(on_diag[gw.numel():], diag[f"{name}.bias"])


def test_add_kronecker_picks_the_scale_that_makes_the_cross_terms_smallest():
    torch.manual_seed(0)
    A1, G1, A2, G2 = (torch.randn(k, k, dtype=torch.float64) for k in (3, 2, 3, 2))
    A1, G1, A2, G2 = (m @ m.T for m in (A1, G1, A2, G2))
    A, G = add_kronecker((A1, G1), (A2, G2))
    best = torch.trace(torch.kron(A, G))
    for pi in (0.5, 0.9, 1.1, 2.0):  # the same sum of factors at other scales: a larger trace
        pi_star = float(torch.trace(A1 - A) / -torch.trace(A2)) ** -1  # A = A1 + A2 / pi*
        p = pi * pi_star
        assert torch.trace(torch.kron(A1 + A2 / p, G1 + p * G2)) > best
    zero = torch.zeros_like(A1), torch.zeros_like(G1)
    assert add_kronecker(zero, (A2, G2))[0] is A2 and add_kronecker((A1, G1), (A2 * 0, G2))[1] is G1


def test_online_kfac_ewc_keeps_one_merged_pair_per_layer_at_the_latest_anchor():
    ewc = EWC(lam=1.0, fisher="empirical", fisher_form="kfac", online=True, gamma=0.5)
    L = _learner_with(ewc)
    ewc.after_task(0)
    first = {n: (A.clone(), G.clone()) for n, (A, G, _) in ewc.kfac[0].items()}
    with torch.no_grad():
        for p in L.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y, ids = L.task_sample(1, ewc.fisher_samples)
    new = kfac_factors(L.model, x, y, L.scenario.train_candidates(ids, 1), "empirical")
    ewc.after_task(1)
    assert len(ewc.kfac) == 1 and ewc.name == "online_ewc_kfac"
    for name, (A, G, W) in ewc.kfac[0].items():
        A_want, G_want = add_kronecker((0.5 * first[name][0], first[name][1]), new[name])
        torch.testing.assert_close(A, A_want)
        torch.testing.assert_close(G, G_want)
        m = dict(L.model.named_modules())[name]
        torch.testing.assert_close(W, torch.cat([m.weight, m.bias[:, None]], 1).detach())


def test_kfac_ewc_steps_with_the_gradient_of_the_loss_it_logs(tmp_path):
    for online in (False, True):  # check_step: the applied gradient is autograd's of the logged loss, penalty in
        row = run(make_cfg(*FAST, "method=ewc", "method.fisher_form=kfac", f"method.online={online}", "iters=3",
                           "lam=1", "benchmark.n_tasks=5", "check_step=true", "checkpoint=false"),
                  tmp_path / str(online))
        assert row["status"] == "completed"


def test_kfac_refuses_what_it_cannot_factor(tmp_path):
    with pytest.raises(ConfigError, match="method.fisher_form=kfac takes one label per sample"):
        EWC(fisher="expected", fisher_form="kfac")
    with pytest.raises(ConfigError, match="method.fisher_form=kfac factors the Fisher of Linear layers"):
        run(make_cfg(*FAST, "method=ewc", "method.fisher_form=kfac", "model=cnn", "model.hidden=16"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_si_importance_is_the_path_integral_on_a_two_step_quadratic():
    # L(theta) = 0.5 * a * theta^2 for one scalar weight, two plain SGD steps of size lr
    si = SI(lam=1.0, xi=0.1)
    L = _learner_with(si)
    model = L.model
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(2.0)
    name, p = "head.bias", dict(model.named_parameters())["head.bias"]
    si.before_task(0)
    a, lr, theta = 3.0, 0.1, 2.0
    path, start = 0.0, theta
    for _ in range(2):
        g = a * theta
        for q in model.parameters():
            q.grad = torch.full_like(q, g)
        si.add_penalty_gradient(1.0)
        si.transform_gradient(NO_STEP)
        with torch.no_grad():
            for q in model.parameters():
                q -= lr * q.grad
        si.after_step(NO_STEP)
        path += -g * (-lr * g)
        theta = theta - lr * g
    si.after_task(0)
    expected = path / ((theta - start) ** 2 + 0.1)
    torch.testing.assert_close(si.importance[name][0], torch.full_like(p, expected))
    torch.testing.assert_close(si.anchor[name][0], torch.full_like(p, theta))


@pytest.mark.parametrize("path_grad", ["task", "total"])
def test_si_path_integral_takes_the_gradient_its_option_names(path_grad):
    si = SI(lam=2.0, xi=0.1, path_grad=path_grad)
    L = _learner_with(si)
    si.before_task(1)
    si.consolidate({n: torch.ones_like(p) for n, p in L.model.named_parameters()})  # Omega = 1 at theta*
    with torch.no_grad():
        for p in L.model.parameters():
            p.add_(0.5)
    for p in L.model.parameters():
        p.grad = torch.ones_like(p)
    si.add_penalty_gradient(1.0)
    si.transform_gradient(NO_STEP)
    penalty_grad = 2 * 2.0 * 1.0 * 0.5  # d/dtheta c Omega (theta - theta*)^2
    recorded = 1.0 + (penalty_grad if path_grad == "total" else 0.0)
    for p, g in zip(L.model.parameters(), si._grad):
        torch.testing.assert_close(g, torch.full_like(p, recorded))
        torch.testing.assert_close(p.grad, torch.full_like(p, 1.0 + penalty_grad))  # the penalty added once


def test_si_clip_value_clamps_the_step_and_the_total_path_gradient():
    si = SI(lam=2.0, xi=0.1, path_grad="total", clip_value=1.0)
    L = _learner_with(si)
    si.before_task(1)
    si.consolidate({n: torch.ones_like(p) for n, p in L.model.named_parameters()})
    with torch.no_grad():
        for p in L.model.parameters():
            p.add_(0.5)
    for p in L.model.parameters():
        p.grad = torch.full_like(p, -0.5)
    si.add_penalty_gradient(1.0)
    si.transform_gradient(NO_STEP)  # -0.5 + penalty 2.0 = 1.5, clamped to 1
    for p, g in zip(L.model.parameters(), si._grad):
        torch.testing.assert_close(p.grad, torch.ones_like(p))
        torch.testing.assert_close(g, torch.ones_like(p))


def test_si_rejects_an_unknown_path_gradient():
    with pytest.raises(ValueError, match="path_grad"):
        SI(path_grad="both")


@pytest.mark.parametrize("scenario", ["task_il", "class_il", "domain_il"])
def test_lwf_loss_is_zero_when_the_model_equals_its_snapshot(scenario):
    lwf = LwF(alpha=1.0, temperature=2.0)
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=10, n_test=2)
    torch.manual_seed(0)
    sc = Scenario(scenario, s)
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, Naive(), [lwf])
    x, y, ids = L.task_sample(1)
    batch = Batch(x, y, ids, 1)
    assert lwf.penalty(batch, L.model(x)) is None  # nothing to distil before the first task ends
    lwf.after_task(0)
    assert lwf.penalty(batch, L.model(x)).item() == pytest.approx(0.0, abs=1e-7)
    moved = copy.deepcopy(L.model)
    with torch.no_grad():
        moved.head.weight.add_(torch.randn_like(moved.head.weight))
    assert lwf.penalty(batch, moved(x)).item() > 1e-3


def test_lwf_seen_units_distils_against_zero_padded_targets_in_class_il():
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=10, n_test=2)
    torch.manual_seed(0)
    sc = Scenario("class_il", s)
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, Naive(), [])
    lwf = LwF(alpha=1.0, temperature=2.0, kd_units="seen")
    lwf.ctx = L.ctx
    lwf.after_task(0)
    x, y, ids = L.task_sample(1, 6)
    logits = L.model(x).detach().requires_grad_(True)
    old, now = sc.seen_units[0], sc.seen_units[1]
    # by hand: sum over old units of p_old (log p_old - log q), q the softmax over all seen units (old and new)
    p_old = (logits[:, old] / 2).softmax(1).detach()
    q = (logits[:, now] / 2).softmax(1)[:, : int(old.sum())]  # the old units come first in the seen block
    expected = (p_old * (p_old.log() - q.log())).sum(1).mean() * 4
    value = lwf.penalty(Batch(x, y, ids, 1), logits)
    torch.testing.assert_close(value, expected)
    assert value.item() > 1e-3  # unlike kd_units=old, an unchanged model still pays for its new-class mass
    value.backward()
    new_units = now & ~old
    assert (logits.grad[:, new_units] > 0).all()  # descent lowers the new classes' logits
    same = {k: LwF(alpha=1.0, temperature=2.0, kd_units=k) for k in ("old", "seen")}
    dsc = Scenario("domain_il", s)
    D = Learner(MLP((1, 4, 4), dsc.n_outputs, hidden=[8]), s, dsc, Naive(), [])
    for m in same.values():
        m.ctx = D.ctx
        m.after_task(0)
    with torch.no_grad():
        moved = D.model(x) + torch.randn(len(x), dsc.n_outputs)
    a, b = (same[k].penalty(Batch(x, y, ids, 1), moved) for k in ("old", "seen"))
    torch.testing.assert_close(a, b)  # domain-IL: every unit is seen from the start, nothing to pad


@pytest.mark.parametrize("scenario", ["task_il", "class_il", "domain_il"])
def test_lwf_kd_mean_units_is_the_2018_codes_mean_over_batch_and_units(scenario):
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=10, n_test=2)
    torch.manual_seed(0)
    sc = Scenario(scenario, s)
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, Naive(), [])
    lwfs = {m: LwF(alpha=1.0, temperature=2.0, kd_units="seen", kd_mean=m) for m in ("batch", "units")}
    for m in lwfs.values():
        m.ctx = L.ctx
        m.after_task(0)
        m.after_task(1)  # two old tasks: two old heads in task-IL
    x, y, ids = L.task_sample(2, 6)
    with torch.no_grad():
        old_logits = L.model(x)
        logits = old_logits + torch.randn_like(old_logits)
    # by hand, as van de Ven & Tolias's 2018 utils.loss_fn_kd: T^2 (-targets * log_softmax).mean() over the batch
    # and the units of the softmax, the old targets padded with zeros up to its width; averaged over old heads
    groups = [sc.task_units[0], sc.task_units[1]] if scenario == "task_il" else [sc.seen_units[1]]
    width = [sc.task_units[k] for k in range(2)] if scenario == "task_il" else [sc.seen_units[2]]
    expected = 0.0
    for units, now in zip(groups, width):
        targets = torch.zeros(len(x), int(now.sum()))
        targets[:, : int(units.sum())] = (old_logits[:, units] / 2).softmax(1)
        ce_to_old = (-targets * (logits[:, now] / 2).log_softmax(1)).mean() * 4
        entropy = (-targets[:, : int(units.sum())] * targets[:, : int(units.sum())].clamp_min(1e-30).log()).sum(1)
        expected = expected + ce_to_old - entropy.mean() * 4 / int(now.sum())  # KL = CE - H(targets)
    batch = Batch(x, y, ids, 2)
    torch.testing.assert_close(lwfs["units"].penalty(batch, logits), expected)
    sizes = [int(now.sum()) for now in width]
    assert len(set(sizes)) == 1  # one softmax width, so units = batch / width
    torch.testing.assert_close(lwfs["units"].penalty(batch, logits), lwfs["batch"].penalty(batch, logits) / sizes[0])
    with pytest.raises(ValueError, match="kd_mean"):
        LwF(kd_mean="classes")


@pytest.mark.parametrize("scenario", ["task_il", "class_il"])
def test_lwf_by_task_weighting_is_one_over_t_ce_plus_the_rest_kd(scenario):
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=10, n_test=2)
    sc = Scenario(scenario, s)
    losses = {}
    for weighting in ("constant", "by_task"):
        torch.manual_seed(0)
        lwf = LwF(alpha=1.0, temperature=2.0, weighting=weighting)
        L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, lwf)
        L.make_optimizer()
        for t in range(3):  # snapshots after tasks 0, 1 and 2: the batch below is task t = 4 of the paper's 1..T
            lwf.after_task(t)
        with torch.no_grad():  # move the model off its snapshot so that KD > 0
            L.model.head.weight.add_(0.5 * torch.randn_like(L.model.head.weight))
        x, y, ids = L.task_sample(3, 8)
        batch = Batch(x, y, ids, 3)
        logits = L.model(x)
        ce = L.ce(logits, y, ids, 3).item()
        losses[weighting] = (L.step(batch)[0].item(), ce)
    const_loss, ce = losses["constant"]
    kd_constant = const_loss - ce  # CE + KD summed over old heads
    n_groups = 3 if scenario == "task_il" else 1
    expected = ce / 4 + (3 / 4) * kd_constant / n_groups
    assert losses["by_task"][0] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        LwF(weighting="sometimes")


def test_lwf_warmup_trains_only_the_new_tasks_head_units_and_fits_them():
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=40, n_test=2)
    sc = Scenario("class_il", s)
    torch.manual_seed(0)
    lwf = LwF(warmup_epochs=3, warmup_lr=0.5)
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, lwf, batch_size=8)
    before = copy.deepcopy(L.model.state_dict())
    task = s.tasks[1]
    new = sc.task_units[1]

    def new_task_ce():
        with torch.no_grad():
            return F.cross_entropy(L.model(task.train_x)[:, new], task.train_y).item()

    ce_before = new_task_ce()
    lwf.before_task(0)  # nothing to warm up before the first task
    assert all(torch.equal(before[k], v) for k, v in L.model.state_dict().items())
    lwf.before_task(1)
    after = L.model.state_dict()
    for k in before:
        if k.startswith("features"):
            assert torch.equal(before[k], after[k]), k  # the trunk is frozen
    rows_moved = (after["head.weight"] != before["head.weight"]).any(1)
    assert torch.equal(rows_moved, new)  # only the new task's units learn
    assert torch.equal(after["head.bias"] != before["head.bias"], new)
    assert new_task_ce() < 0.8 * ce_before
    assert L.model.training


def test_lwf_train_units_overrides_the_scenarios_for_its_cross_entropy():
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=10, n_test=2)
    sc = Scenario("class_il", s, train_units="all")
    torch.manual_seed(0)
    L = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, LwF(train_units="seen"))
    x, y, ids = L.task_sample(1, 6)
    logits = L.model(x)
    seen = sc.seen_units[1]
    torch.testing.assert_close(L.ce(logits, y, ids, 1), F.cross_entropy(logits[:, seen], y))
    whole = Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, LwF())
    torch.testing.assert_close(whole.ce(logits, y, ids, 1), F.cross_entropy(logits, y))  # the scenario's: all


def test_lwf_rejects_bad_warmup_and_train_units():
    s = split(dataset="synthetic", n_tasks=2, side=4, n_train=10, n_test=2)
    with pytest.raises(ValueError, match="warmup_epochs"):
        LwF(warmup_epochs=-1)
    with pytest.raises(ValueError, match="warmup_lr"):
        LwF(warmup_lr=0)
    with pytest.raises(ValueError, match="train_units"):
        LwF(train_units="old")
    sc = Scenario("task_il", s)
    with pytest.raises(ValueError, match="train_units=all is for class_il"):
        Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, LwF(train_units="all"))
    with pytest.raises(ValueError, match="primary method"):
        Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[8]), s, sc, Naive(), [LwF(train_units="seen")])


def test_si_and_lwf_and_ewc_work_through_the_learner_loop(tmp_path):
    row = run(make_cfg(*FAST, "method=naive",
                       "+regularizers=[ewc,si,lwf]", "lam=1", "benchmark.n_tasks=2"), tmp_path)
    assert row["regularizers"] == "ewc+si+lwf" and row["status"] == "completed"


# generated clusters under 4 pixel permutations: each task is learnt well, and naive forgets ~10 points
PERMUTED_SYN = ["benchmark=permuted_mnist", "benchmark.dataset=synthetic", "+benchmark.side=8",
                "+benchmark.n_train=200", "+benchmark.n_test=50", "+benchmark.noise=1.0", "benchmark.n_tasks=4",
                "quiet=true", "device=cpu", "lr=0.1", "epochs=3", "model.hidden=[100]"]


@pytest.fixture(scope="module")
def naive_permuted(tmp_path_factory):
    return run(make_cfg(*PERMUTED_SYN), tmp_path_factory.mktemp("naive"))


@pytest.mark.parametrize("method,lam", [("ewc", 10), ("online_ewc", 10), ("si", 10), ("mas", 0.1), ("lwf", 1)])
def test_regulariser_reduces_forgetting_on_a_synthetic_permuted_stream(tmp_path, naive_permuted, method, lam):
    row = run(make_cfg(*PERMUTED_SYN, f"method={method}", f"lam={lam}"), tmp_path)
    assert naive_permuted["forgetting"] > 0.05
    assert row["forgetting"] < 0.85 * naive_permuted["forgetting"]
    assert row["ACC"] > naive_permuted["ACC"]


def test_kfac_ewc_reduces_forgetting_on_a_synthetic_permuted_stream(tmp_path, naive_permuted):
    row = run(make_cfg(*PERMUTED_SYN, "method=ewc", "method.fisher_form=kfac", "lam=3"), tmp_path)
    assert row["method"] == "ewc_kfac"
    assert row["forgetting"] < 0.85 * naive_permuted["forgetting"]
    assert row["ACC"] > naive_permuted["ACC"]
