"""Seeds trained as one stacked model (clrun.vectorized, hydra/launcher=stacked): each seed's run directory holds
what the seed run alone writes."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from clrun.checkpoint import model_state
from clrun.learner import Learner
from clrun.methods.base import Method
from clrun.methods.er import ER
from clrun.run import run
from clrun.vectorized import run_seeds
from tests.conftest import FAST, clrun_cmd, make_cfg

SMALL = [*FAST, "benchmark.n_train=40", "batch_size=10", "buffer=30", "threads=1", "log_every=3"]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # threads=1 in the configs sets the process's


@pytest.mark.parametrize("overrides", [
    ["method=er"],  # replay (its first step replays nothing: naive's path)
    ["method=er", "scenario=task_il"],  # each row's own head: the seeds' accuracies counted in one reduction
    # A-GEM's projection on a reference gradient of the seed's own model, EWC's closed-form gradient added to
    # the seed's gradient, LwF's distillation penalty through the stacked logits
    ["method=agem", "+regularizers=[ewc,lwf]"],
    # DER++'s second forward through the seed's own model, SI's path integral over the seed's gradients
    ["method=derpp", "+regularizers=[si]", "lam=1"],
])
def test_stacked_seeds_write_what_each_seed_writes_alone(tmp_path, one_thread, overrides):
    """On CPU with one thread the stacked step gives each seed its own numbers exactly: R.csv byte for byte and
    the final weights bit for bit, whatever hooks its methods use."""
    seeds = [0, 1, 2]
    for s in seeds:
        run(make_cfg(*SMALL, *overrides, f"seed={s}"), tmp_path / f"alone{s}")
    rows, reason = run_seeds([make_cfg(*SMALL, *overrides, f"seed={s}") for s in seeds],
                             [tmp_path / f"stacked{s}" for s in seeds], [None] * 3)
    assert reason is None
    assert [r["status"] for r in rows] == ["completed"] * 3 and [r["stacked_seeds"] for r in rows] == [3] * 3
    for s in seeds:
        assert (tmp_path / f"stacked{s}" / "R.csv").read_text() == (tmp_path / f"alone{s}" / "R.csv").read_text()
        alone, stacked = model_state(tmp_path / f"alone{s}"), model_state(tmp_path / f"stacked{s}")
        assert all(torch.equal(alone[k], stacked[k]) for k in alone)
        alone = pd.read_csv(tmp_path / f"alone{s}" / "log.csv")
        stacked = pd.read_csv(tmp_path / f"stacked{s}" / "log.csv")
        assert stacked[["task", "kind", "step"]].equals(alone[["task", "kind", "step"]])  # epoch and curve rows
        pd.testing.assert_series_equal(stacked["loss"], alone["loss"], rtol=1e-5)  # its own loss, to float rounding
        assert stacked["train_acc"].equals(alone["train_acc"])  # its own correct predictions, exactly


def test_seeds_that_share_a_split_gather_their_batches_at_once_and_still_train_as_alone(tmp_path, one_thread,
                                                                                       monkeypatch):
    """Seeds that split the same data the same way (a fixed class order) share the task tensors: the stack gathers
    all seeds' batches in one indexing, not one Learner.batch_of each, and every seed still gets its own rows."""
    monkeypatch.delenv("CLRUN_DATA", raising=False)  # the embedded MNIST sample, one split for every seed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shared = ["benchmark=split_mnist", "benchmark.fixed_class_order=true", "benchmark.stream_seed=0",
              "data.download=false", "quiet=true", "plots=false", "model.hidden=[32]", "batch_size=10",
              "method=er", "buffer=30", "threads=1", "lr=0.1"]
    seeds = [0, 1]
    for s in seeds:
        run(make_cfg(*shared, f"seed={s}"), tmp_path / f"alone{s}")
    calls = []
    batch_of = Learner.batch_of
    monkeypatch.setattr(Learner, "batch_of", lambda self, *a: calls.append(1) or batch_of(self, *a))
    rows, reason = run_seeds([make_cfg(*shared, f"seed={s}") for s in seeds],
                             [tmp_path / f"stacked{s}" for s in seeds], [None] * 2)
    assert reason is None and not calls
    for s in seeds:
        assert (tmp_path / f"stacked{s}" / "R.csv").read_text() == (tmp_path / f"alone{s}" / "R.csv").read_text()
        alone, stacked = model_state(tmp_path / f"alone{s}"), model_state(tmp_path / f"stacked{s}")
        assert all(torch.equal(alone[k], stacked[k]) for k in alone)


@pytest.mark.parametrize(("overrides", "reason"), [
    (["method=mer", "iters=2"], "method mer routes the forward itself (inner_batches)"),
    (["method=er", "model=cnn", "model.hidden=16"], "model CNN is not made of Linear layers"),
    (["method=er", "check_step=true"], "on_nan=skip and check_step=true are per run"),
])
def test_what_cannot_be_stacked_runs_seed_after_seed_and_says_why(tmp_path, one_thread, overrides, reason):
    cfgs = [make_cfg(*SMALL, "benchmark.n_tasks=2", *overrides, f"seed={s}") for s in (0, 1)]
    rows, why = run_seeds(cfgs, [tmp_path / "a", tmp_path / "b"], [None] * 2)
    assert why is not None and why.startswith(reason)
    assert [r["status"] for r in rows] == ["completed"] * 2 and [r["stacked_seeds"] for r in rows] == [1, 1]


def test_stacked_launcher_groups_a_sweeps_seeds(tmp_path):
    """hydra/launcher=stacked with n_jobs=2: the seeds of each configuration train as two stacks in two worker
    processes with cores / 2 threads each, each job in its own directory with Hydra's files; a group that cannot
    stack (on_nan=skip) runs seed after seed with a note; the summary is the sweep's."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(clrun_cmd("-m", "hydra/launcher=stacked", "hydra.launcher.n_jobs=2",
                                    *[a for a in SMALL if not a.startswith("threads=")], "benchmark.n_tasks=2",
                                    "on_nan=stop,skip", "seed=0,1,2,3", f"hydra.sweep.dir={sweep}"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "not stacked: on_nan=skip and check_step=true are per run" in proc.stderr
    stacked = {d.name: int(pd.read_csv(d / "metrics.csv").stacked_seeds[0]) for d in sweep.glob("on_nan=*")}
    assert stacked == {**{f"on_nan=skip,seed={s}": 1 for s in range(4)},
                       **{f"on_nan=stop,seed={s}": 2 for s in range(4)}}
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert all(f"threads: {threads}" in (d / "config.yaml").read_text() for d in sweep.glob("on_nan=*"))
    assert all((d / ".hydra" / "overrides.yaml").exists() for d in sweep.glob("on_nan=*"))
    summary = pd.read_csv(sweep / "summary_by_config.csv")
    assert len(summary) == 2 and (summary.n == 4).all()


class ReplacesGradients(Method):
    """Harmless alone (a copy of each gradient in place of it), but it unlinks a stacked seed's gradients."""

    def transform_gradient(self, step) -> None:
        for p in self.ctx.trainable_parameters():
            p.grad = p.grad.clone()


def test_a_method_that_replaces_gradient_tensors_is_stopped_not_trained_wrongly(tmp_path, one_thread):
    cfgs = [make_cfg(*SMALL, "benchmark.n_tasks=2", f"method._target_={__name__}.ReplacesGradients", f"seed={s}")
            for s in (0, 1)]
    with pytest.raises(RuntimeError, match="replaced a model's parameters or gradient tensors"):
        run_seeds(cfgs, [tmp_path / "a", tmp_path / "b"], [None] * 2)
    assert pd.read_csv(tmp_path / "a" / "R.csv").iloc[1:, 1:].isna().all().all()  # no trained task evaluated


class WeightedNewRows(ER):
    """ER with its new rows' loss doubled: a subclass that changes ``data_loss`` and not ``stacked_data_loss``."""

    def data_loss(self, step) -> torch.Tensor:
        b = step.batch
        return super().data_loss(step) + self.ctx.ce(step.new_logits, b.y, b.task_ids, b.task)


@pytest.mark.parametrize("target", ["clrun.methods.er.ER", f"{__name__}.WeightedNewRows"])
def test_seeds_data_losses_computed_at_once_are_each_seeds_own(tmp_path, one_thread, monkeypatch, target):
    """A stacked step takes the seeds' data losses from one computation where the primary offers it
    (Method.stacked_data_loss: ER's new and replayed rows), and from each seed's own data_loss when a subclass
    changed that loss without offering its own: either way each seed trains exactly as alone."""
    overrides = [*SMALL, "benchmark.n_tasks=2", "method=er", f"method._target_={target}"]
    for s in (0, 1):
        run(make_cfg(*overrides, f"seed={s}"), tmp_path / f"alone{s}")
    at_once = []  # per stacked step: were the data losses computed at once?
    stacked_data_loss = ER.stacked_data_loss

    def recorded(self, *args):
        out = stacked_data_loss(self, *args)
        at_once.append(out is not None)
        return out

    monkeypatch.setattr(ER, "stacked_data_loss", recorded)
    rows, reason = run_seeds([make_cfg(*overrides, f"seed={s}") for s in (0, 1)],
                             [tmp_path / f"stacked{s}" for s in (0, 1)], [None] * 2)
    assert reason is None and at_once and all(at_once) == (target == "clrun.methods.er.ER")
    for s in (0, 1):
        assert (tmp_path / f"stacked{s}" / "R.csv").read_text() == (tmp_path / f"alone{s}" / "R.csv").read_text()
        alone, stacked = model_state(tmp_path / f"alone{s}"), model_state(tmp_path / f"stacked{s}")
        assert all(torch.equal(alone[k], stacked[k]) for k in alone)


def test_the_stacked_launcher_composes_a_seed_group_as_hydra_does():
    """A seed group's first job is composed by Hydra, the others derived from it: every job's config equals the
    one Hydra composes for its overrides (its seed, task overrides and override dirname included)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from clrun.app import CONF_DIR
    from hydra_plugins.clrun_launchers.stacked_launcher import SeedGroupConfigLoader

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        hydra_loader = GlobalHydra.instance().config_loader()
        master = hydra_loader.load_configuration("config", ["hydra/launcher=stacked", "hydra.sweep.dir=sw"],
                                                 RunMode.MULTIRUN)
        ours = SeedGroupConfigLoader(hydra_loader)
        for job in (["paper=der2020/seq_mnist_buffer", "method=er", "buffer=200", "seed=SEED"],
                    ["method=ewc", "lam=10", "seed=SEED", "scenario=class_il"]):
            for seed in (0, 3, 12):
                overrides = [o.replace("SEED", str(seed)) for o in job]
                hydra_cfg = OmegaConf.to_container(hydra_loader.load_sweep_config(master, overrides))
                derived = ours.load_sweep_config(master, overrides)
                assert derived.seed == seed and OmegaConf.to_container(derived) == hydra_cfg
        assert len(ours._composed) == 2  # one composition per group


def test_the_launching_process_does_not_import_torch():
    """clrun's command line is checked, and a stacked sweep's jobs prepared, before torch is imported: the
    stacked launcher's workers start that much sooner, and a refused command answers at once."""
    code = "import sys, clrun.app; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
