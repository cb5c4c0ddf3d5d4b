import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from clrun import plots, report
from clrun.run import run
from tests.conftest import FAST, clrun_cmd, make_cfg


def _sweep(tmp_path, *args, name="sweep"):
    sweep = tmp_path / name
    proc = subprocess.run(clrun_cmd("-m", *FAST, *args, f"hydra.sweep.dir={sweep}"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    return proc, sweep


def test_multirun_writes_per_job_csvs_and_one_summary(tmp_path):
    proc, sweep = _sweep(tmp_path, "method=naive,ewc", "seed=0,1", "benchmark.n_tasks=2")
    assert proc.returncode == 0, proc.stderr
    assert (sweep / "multirun.yaml").exists()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["method=ewc,seed=0", "method=ewc,seed=1", "method=naive,seed=0", "method=naive,seed=1"]
    for job in jobs:
        for f in ("R.csv", "metrics.csv", "log.csv", ".hydra/overrides.yaml"):
            assert (sweep / job / f).exists()
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 4 and (summary.status == "completed").all()
    assert {"overrides", "ACC", "forgetting", "BWT", "FWT", "wall_seconds"} <= set(summary.columns)
    assert summary.overrides.str.contains("method=ewc").sum() == 2
    by_cfg = pd.read_csv(sweep / "summary_by_config.csv")
    assert sorted(by_cfg.method) == ["ewc", "naive"] and (by_cfg.n == 2).all()
    assert {"ACC_mean", "ACC_std", "ACC_ci95"} <= set(by_cfg.columns)


def test_a_failing_job_is_recorded_and_the_others_still_run(tmp_path):
    # n_tasks=3 cannot split 10 classes: that one job fails, the sweep goes on
    proc, sweep = _sweep(tmp_path, "benchmark.n_tasks=1,2,5,3")
    assert proc.returncode == 3, proc.stderr  # the sweep says that not every job completed
    assert "not every job completed: {'refused': 1}" in proc.stderr
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 4
    assert (summary.status == "completed").sum() == 3
    failed = summary[summary.status == "failed"]
    assert len(failed) == 1 and "n_tasks=3" in failed.error.iloc[0]


def test_ci_aggregation_matches_a_hand_computation():
    summary = pd.DataFrame({
        "status": ["completed"] * 4 + ["failed"], "benchmark": "b", "scenario": "s", "method": "ewc",
        "regularizers": "", "lam": [10, 10, 10, 100, 10], "buffer": np.nan, "n_tasks": 5,
        "overrides_no_seed": ["lam=10"] * 3 + ["lam=100", "lam=10"], "ACC": [0.5, 0.6, 0.7, 0.9, 0.0],
        "forgetting": [0.1, 0.2, 0.3, 0.0, 0.0]})
    g = report.by_config(summary).set_index("lam")
    assert g.loc[10, "n"] == 3 and g.loc[100, "n"] == 1
    assert g.loc[10, "ACC_mean"] == pytest.approx(0.6)
    assert g.loc[10, "ACC_std"] == pytest.approx(0.1)
    assert g.loc[10, "ACC_ci95"] == pytest.approx(4.302652729911275 * 0.1 / np.sqrt(3))
    assert np.isnan(g.loc[100, "ACC_ci95"])


def test_select_maximises_acc_under_the_forgetting_tolerance(tmp_path):
    by_cfg = pd.DataFrame({"method": ["ewc", "ewc", "ewc", "si", "si"], "lam": [1, 10, 100, 1, 10],
                           "ACC_mean": [0.9, 0.85, 0.7, 0.8, 0.82], "forgetting_mean": [0.2, 0.04, 0.01, 0.03, 0.06]})
    best = report.select(by_cfg, 0.05)
    assert list(zip(best.method, best.lam)) == [("ewc", 10), ("si", 1)]
    assert report.select(by_cfg, 0.001).empty


def test_clrun_select_and_report_on_real_runs(tmp_path):
    for lam in (1, 10):
        run(make_cfg(*FAST, "method=ewc", f"lam={lam}", "benchmark.n_tasks=2"), tmp_path / "a" / f"lam{lam}")
    run(make_cfg(*FAST, "benchmark.n_tasks=2"), tmp_path / "b" / "naive")
    out = subprocess.run([sys.executable, "-c", "import sys; from clrun.report import report_main; "
                          "sys.exit(report_main(sys.argv[1:]))", str(tmp_path / "a"), str(tmp_path / "b"),
                          "-o", str(tmp_path / "both")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(pd.read_csv(tmp_path / "both" / "summary.csv")) == 3
    assert report.select_main([str(tmp_path / "a"), "--max-forgetting", "1.0"]) == 0
    sel = pd.read_csv(tmp_path / "a" / "selection.csv")
    assert len(sel) == 1 and sel.method[0] == "ewc"
    assert report.report_main([str(tmp_path / "nope")]) == 2


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_run_a_two_job_sweep(tmp_path, launcher):
    proc, sweep = _sweep(tmp_path, f"hydra/launcher={launcher}", "seed=0,1", "benchmark.n_tasks=2")
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 2 and (summary.status == "completed").all()


def test_slurm_launcher_config_composes(tmp_path):
    proc = subprocess.run(clrun_cmd("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout


def test_every_plot_writes_a_non_empty_png(tmp_path):
    for lam, buf, seed in [(1, 20, 0), (10, 20, 1), (1, 50, 0), (10, 50, 1)]:
        run(make_cfg(*FAST, "method=er", "+regularizers=[ewc]", f"lam={lam}", f"buffer={buf}", f"seed={seed}",
                     "benchmark.n_tasks=2"), tmp_path / f"{lam}-{buf}-{seed}")
    made = plots.plot_dir(tmp_path)
    made += plots.plot_dir(tmp_path / "1-20-0")
    names = {p.name for p in made}
    assert names == {"methods.png", "lam.png", "buffer.png", "R.png", "task_accuracy.png"}
    for p in made:
        assert p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG"


def test_plots_are_written_at_the_end_of_a_run_unless_disabled(tmp_path):
    run(make_cfg(*FAST, "plots=true", "benchmark.n_tasks=2"), tmp_path / "on")
    run(make_cfg(*FAST, "benchmark.n_tasks=2"), tmp_path / "off")
    assert (tmp_path / "on" / "R.png").exists() and (tmp_path / "on" / "task_accuracy.png").exists()
    assert not (tmp_path / "off" / "R.png").exists()
