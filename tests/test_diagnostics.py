"""Interference and Fisher-spectrum diagnostics, and low-rank EWC, against explicit small-model quantities."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clrun import io
from clrun.diagnostics import Diagnostics, fisher_spectrum
from clrun.importance import SampleGradients, fisher_diag, lanczos_top
from clrun.learner import Learner
from clrun.methods.base import Step
from clrun.methods.ewc import EWC
from clrun.methods.naive import Naive
from clrun.models import CNN, MLP
from clrun.run import run
from clrun.streams import ConfigError, Scenario, split
from tests.conftest import FAST, make_cfg


def _data(n=60, n_out=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = torch.randint(0, n_out, (n,), generator=g)
    return x, y, torch.ones(n, n_out, dtype=torch.bool)


def _explicit_fisher(model, x, y, mask):
    """F = (1/N) sum_n g_n g_n^T from one autograd call per sample: the brute-force reference."""
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        logits = model(x[i : i + 1]).masked_fill(~mask[i : i + 1], -1e9)
        F.cross_entropy(logits, y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    G = torch.stack(rows).double()
    return G.T @ G / len(x)


MODELS = {"mlp": lambda: MLP((1, 6, 6), 5, hidden=[7]), "cnn": lambda: CNN((1, 6, 6), 5, channels=[2], hidden=8)}


@pytest.mark.parametrize("backend", ["auto", "vmap"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_lanczos_top_k_matches_eigvalsh_of_the_explicit_fisher(arch, backend):
    torch.manual_seed(0)
    model = MODELS[arch]()
    x, y, mask = _data()
    Fx = _explicit_fisher(model, x, y, mask)
    exact_vals, exact_vecs = torch.linalg.eigh(Fx)
    exact_vals, exact_vecs = exact_vals.flip(0)[:8], exact_vecs.flip(1)[:, :8]
    grads = SampleGradients(model, x, y, mask, backend)
    assert (grads.factors is not None) == (arch == "mlp" and backend == "auto")
    vals, vecs = lanczos_top(grads.fisher_matmul, grads.dim, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(vals.double(), exact_vals, rtol=1e-4, atol=1e-7)
    # the same subspace: equal projectors
    P_lanczos, P_exact = vecs.double() @ vecs.double().T, exact_vecs @ exact_vecs.T
    assert (P_lanczos - P_exact).norm() < 1e-3
    # trace = sum of the diagonal, also against the diagonal-Fisher code path
    assert grads.fisher_trace() == pytest.approx(float(Fx.trace()), rel=1e-5)
    diag = fisher_diag(model, x, y, mask, kind="empirical", backend=backend)
    assert grads.fisher_trace() == pytest.approx(sum(float(d.sum()) for d in diag.values()), rel=1e-5)


def test_spectrum_summary_and_layer_masses():
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 5, hidden=[7, 6])
    x, y, mask = _data()
    grads = SampleGradients(model, x, y, mask)
    summary, layers, vals, vecs = fisher_spectrum(grads, k=6, generator=torch.Generator().manual_seed(0))
    assert sum(r["mass"] for r in layers) == pytest.approx(6, abs=1e-4)  # unit eigenvectors: masses sum to k
    assert sum(r["params"] for r in layers) == grads.dim
    assert {r["layer"] for r in layers} == {"features.1", "features.3", "head"}
    all_vals = torch.linalg.eigvalsh(_explicit_fisher(model, x, y, mask)).flip(0)
    assert summary["topk_share"] == pytest.approx(float(all_vals[:6].sum() / all_vals.sum()), rel=1e-4)
    n_top = summary["top5pct_directions"]
    assert n_top == 3  # 5% of min(P, N) = 5% of 60
    assert summary["top5pct_share"] == pytest.approx(float(all_vals[:n_top].sum() / all_vals.sum()), rel=1e-4)


def test_first_order_prediction_matches_observed_loss_change_for_a_tiny_step():
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 5, hidden=[16])
    x, y, mask = _data(n=40)
    x2, y2, _ = _data(n=40, seed=1)
    old = SampleGradients(model, x, y, mask)
    new = SampleGradients(model, x2, y2, mask)
    g_old, g_new = old.mean(), new.mean()
    # the per-sample pair statistic is the sign of the per-sample dot products
    dense = SampleGradients(model, x, y, mask, "vmap").dense @ SampleGradients(model, x2, y2, mask, "vmap").dense.T
    assert torch.allclose(old.gram(new), dense, atol=1e-5)
    eta = 1e-3
    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    before = loss()
    with torch.no_grad():
        for p, step in zip(model.parameters(), new.split(g_new).values()):
            p -= eta * step
    observed = loss() - before
    assert -eta * float(g_old @ g_new) == pytest.approx(observed, rel=1e-2)


def _learner(lr, seed=0, method=None, hidden=32):
    s = split(dataset="synthetic", n_tasks=5, side=4, n_train=40, n_test=20)
    torch.manual_seed(seed)
    sc = Scenario("class_il", s)
    return Learner(MLP((1, 4, 4), sc.n_outputs, hidden=[hidden]), s, sc, method or Naive(), batch_size=16,
                   optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=lr))


def test_interference_rows_track_the_observed_loss_change(tmp_path):
    L = _learner(lr=1e-3)
    diag = Diagnostics(tmp_path, interference=True, every=1, batch=32)
    diag.bind(L)
    L.observers.append(diag)
    L.train_task(0, epochs=1)
    L.train_task(1, iters=3)
    rows = pd.read_csv(tmp_path / io.INTERFERENCE_FILE)
    assert list(rows.columns) == io.INTERFERENCE_COLUMNS
    assert rows["step"].tolist() == [0, 1, 2, 3] and (rows["old_task"] == 1).all()
    assert rows.loc[0, ["predicted_dloss", "linearised_dloss", "observed_dloss"]].abs().max() == 0
    later = rows.iloc[1:]
    # first order in the actual update: tight for tiny steps
    gap = (later["linearised_dloss"] - later["observed_dloss"]).abs().max()
    assert gap < 1e-2 * later["observed_dloss"].abs().max() + 1e-7
    assert ((later["cosine"] >= -1) & (later["cosine"] <= 1)).all()
    assert ((later["neg_pair_fraction"] >= 0) & (later["neg_pair_fraction"] <= 1)).all()


def _tiny_ewc(form, rank=4, lam=3.0, step="explicit"):
    ewc = EWC(lam=lam, fisher="empirical", fisher_samples=None, fisher_form=form, rank=rank, lowrank_step=step)
    L = _learner(lr=0.05, method=ewc, hidden=6)
    L.train_task(0, epochs=2)
    return ewc, L


@pytest.mark.parametrize("rank", [3, 10_000])
def test_lowrank_penalty_equals_the_explicit_quadratic_form(rank):
    ewc, L = _tiny_ewc("lowrank", rank=rank)
    params = list(L.model.parameters())
    anchor = torch.cat([p.detach().flatten() for p in params]).double()
    x, y, ids = L.task_sample(0)
    Fx = _explicit_fisher(L.model, x, y, L.scenario.candidates(ids, 0))
    vals, vecs = torch.linalg.eigh(Fx)
    k = min(rank, len(vals))
    V, lam_k = vecs[:, -k:], vals[-k:]
    residual = (Fx.diag() - (V.pow(2) @ lam_k)).clamp_min(0)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.1)
    d = torch.cat([p.detach().flatten() for p in params]).double() - anchor
    explicit = 0.5 * ewc.lam * (lam_k * (V.T @ d).pow(2)).sum() + 0.5 * ewc.lam * (residual * d.pow(2)).sum()
    assert float(ewc.value().detach()) == pytest.approx(float(explicit), rel=1e-3)
    if k == len(vals):  # full rank: exactly (lam/2) d^T F d
        assert float(ewc.value().detach()) == pytest.approx(float(0.5 * ewc.lam * d @ Fx @ d), rel=1e-3)
    # the gradient added after backward is the gradient of that penalty
    for p in params:
        p.grad = None
    ewc.add_penalty_gradient(1.0)
    added = torch.cat([p.grad.flatten() for p in params]).double()
    explicit_grad = ewc.lam * (V @ (lam_k * (V.T @ d)) + residual * d)
    assert torch.allclose(added, explicit_grad, rtol=1e-3, atol=1e-6)


def test_run_writes_diagnostics_tables_and_plots(tmp_path):
    row = run(make_cfg(*FAST, "plots=true", "benchmark.n_tasks=2", "diagnostics.interference=true",
                       "diagnostics.spectrum=true", "diagnostics.every=3", "diagnostics.k=5"), tmp_path)
    assert row["status"] == "completed"
    inter = pd.read_csv(tmp_path / io.INTERFERENCE_FILE)
    spec = pd.read_csv(tmp_path / io.SPECTRUM_FILE)
    layers = pd.read_csv(tmp_path / io.SPECTRUM_LAYERS_FILE)
    assert list(inter.columns) == io.INTERFERENCE_COLUMNS and (inter["task"] == 2).all()
    assert list(spec.columns) == io.SPECTRUM_COLUMNS and sorted(spec["after_task"].unique()) == [1, 2]
    assert (spec.groupby("after_task")["eigenvalue"].apply(lambda e: e.is_monotonic_decreasing)).all()
    assert list(layers.columns) == io.SPECTRUM_LAYER_COLUMNS
    assert layers.groupby("after_task")["mass"].sum().round(3).tolist() == [5.0, 5.0]
    assert (tmp_path / "interference.png").exists() and (tmp_path / "spectrum.png").exists()
    from clrun import plots

    cos_ax, pred_ax = plots.figure_interference(tmp_path).axes
    assert cos_ax.get_title() == "Gradient interference with each old task"
    assert cos_ax.get_ylabel() == "cos(g_old, g_new)"
    assert [t.get_text() for t in cos_ax.get_legend().get_texts()] == ["old task 1"]
    assert pred_ax.get_xlabel() == "observed old-task loss change since the task began"
    assert [t.get_text() for t in pred_ax.get_legend().get_texts()] == ["y = x", "-lr sum g_old . g_new",
                                                                        "g_old . (actual update)"]
    eig_ax, mass_ax = plots.figure_spectrum(tmp_path).axes
    assert eig_ax.get_title() == "Top-k Fisher spectrum of each task" and eig_ax.get_yscale() == "log"
    assert [t.get_text().split(" (")[0] for t in eig_ax.get_legend().get_texts()] == ["after task 1", "after task 2"]
    assert mass_ax.get_title() == "Where the sharp directions live"
    assert len(mass_ax.get_legend().get_texts()) == len(layers.layer.unique())


@pytest.mark.parametrize("override, message", [
    ("diagnostics.every=0", "diagnostics.every=0"),
    ("diagnostics.fisher=expected", "diagnostics.fisher='expected'"),
    ("method.fisher_form=full", "fisher_form='full'"),
])
def test_bad_diagnostics_settings_are_refused(tmp_path, override, message):
    extra = ["method=ewc"] if override.startswith("method.") else ["diagnostics.spectrum=true"]
    with pytest.raises(ConfigError, match=message):
        run(make_cfg(*FAST, *extra, override), tmp_path)


def test_diagnostics_refuse_methods_with_their_own_architecture(tmp_path):
    with pytest.raises(ConfigError, match="routes inputs"):
        run(make_cfg(*FAST, "method=pnn", "scenario=task_il", "diagnostics.spectrum=true"), tmp_path)


def test_lowrank_refuses_online_and_expected(tmp_path):
    with pytest.raises(ConfigError, match="online=true is not supported"):
        run(make_cfg(*FAST, "method=ewc", "method.fisher_form=lowrank", "method.online=true"), tmp_path)
    for weighted in ("expected", "weighted_empirical"):  # weighted per-sample labels have no single gradient
        with pytest.raises(ConfigError, match="use fisher=true, empirical or predicted"):
            run(make_cfg(*FAST, "method=ewc", "method.fisher_form=lowrank", f"method.fisher={weighted}"), tmp_path)


def test_lowrank_implicit_step_shrinks_each_eigen_component_exactly():
    ewc, L = _tiny_ewc("lowrank", rank=3, lam=50.0, step="implicit")
    params = list(L.model.parameters())
    evals, vecs, anchor = ewc.eigen[0]
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.1)
    before = vecs.T @ (ewc._theta() - anchor)
    ewc.after_step(Step(None, None, None))  # what follows each optimiser step
    after = vecs.T @ (ewc._theta() - anchor)
    lr = L.optimizer.param_groups[0]["lr"]
    assert torch.allclose(after, before / (1 + lr * ewc.lam * evals), rtol=1e-4, atol=1e-6)
    assert (lr * ewc.lam * evals[0]) > 2  # a stiffness at which the explicit gradient step would overshoot


def test_lowrank_implicit_steps_of_many_tasks_sharing_a_direction_never_overshoot_the_anchor():
    # ten tasks whose bases share one stiff direction (as permuted tasks share the output layer's): the steps are
    # taken one task after the other, so the component shrinks by 1 / (1 + c l) ten times; summed from the same
    # point it would move by 10 x c l / (1 + c l), about 10 times its size, past the anchor, and grow every step
    ewc, L = _tiny_ewc("lowrank", rank=3, lam=50.0, step="implicit")
    evals, vecs, anchor = ewc.eigen[0]
    ewc.eigen = [(evals, vecs, anchor)] * 10
    with torch.no_grad():
        for p in L.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = vecs.T @ (ewc._theta() - anchor)
    ewc.after_step(Step(None, None, None))
    after = vecs.T @ (ewc._theta() - anchor)
    c = L.optimizer.param_groups[0]["lr"] * ewc.lam
    torch.testing.assert_close(after, before / (1 + c * evals) ** 10, rtol=1e-3, atol=1e-6)
