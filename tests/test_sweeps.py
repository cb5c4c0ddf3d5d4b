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
    assert names == {"methods.png", "lam.png", "buffer.png", "R.png", "task_accuracy.png", "loss.png"}
    for p in made:
        assert p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG"


def test_plots_are_written_at_the_end_of_a_run_unless_disabled(tmp_path):
    run(make_cfg(*FAST, "plots=true", "benchmark.n_tasks=2"), tmp_path / "on")
    run(make_cfg(*FAST, "benchmark.n_tasks=2"), tmp_path / "off")
    assert (tmp_path / "on" / "R.png").exists() and (tmp_path / "on" / "task_accuracy.png").exists()
    assert not (tmp_path / "off" / "R.png").exists()


def _job(root, name, overrides, status="completed", **metrics):
    """A job directory as a sweep leaves it: its overrides and its metrics row."""
    from clrun import io

    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    row = {"benchmark": "split_mnist", "method": "naive", "n_tasks": 5, "data_source": "torchvision",
           "status": status, "ACC": 0.5, "forgetting": 0.2, **metrics}
    io.write_metrics(job, row)


def _scenario_sweep(root):
    for scenario, acc in (("task_il", 0.95), ("domain_il", 0.7), ("class_il", 0.2)):
        for method in ("naive", "er"):
            for seed in (0, 1):
                status = "diverged" if (scenario, method, seed) == ("class_il", "naive", 1) else "completed"
                _job(root, f"{method}-{scenario}-{seed}", [f"scenario={scenario}", f"method={method}", f"seed={seed}"],
                     status=status, scenario=scenario, method=method, seed=seed, ACC=acc + 0.01 * seed,
                     buffer=200 if method == "er" else None)
    _job(root, "er-bad", ["scenario=class_il", "method=er", "lr=10"], status="failed", scenario="class_il",
         method="er", ACC=float("nan"))


def test_report_table_and_plot_name_every_varied_setting_and_keep_failed_configurations(tmp_path):
    from clrun import plots, report

    _scenario_sweep(tmp_path)
    by_cfg = report.by_config(report.collect(tmp_path))
    assert len(by_cfg) == 7  # 3 scenarios x 2 methods, and the configuration whose only run failed
    assert {"scenario", "method", "ov:lr"} <= set(report.varying(by_cfg))
    naive_cil = by_cfg[(by_cfg.method == "naive") & (by_cfg.scenario == "class_il")].iloc[0]
    assert (naive_cil.n, naive_cil.n_completed, naive_cil.n_diverged) == (1, 1, 1)
    failed = by_cfg[by_cfg["ov:lr"].astype(str) == "10"].iloc[0]
    assert failed.n == 0 and failed.n_failed == 1 and pd.isna(failed.ACC_mean)
    text = report.table(by_cfg)
    header = text.splitlines()[0].split()
    assert {"scenario", "method", "lr", "n", "n_failed", "n_diverged"} <= set(header)
    assert text.count("class_il") == 3

    fig = plots.figure_methods(by_cfg)
    acc_ax, fgt_ax = fig.axes
    labels = [t.get_text() for t in acc_ax.get_yticklabels()]
    assert "scenario=class_il method=naive (n=1; 1 diverged)" in labels
    assert any(lbl.startswith("scenario=class_il method=er lr=10 (n=0; 1 failed)") for lbl in labels)
    assert all("scenario=" in lbl for lbl in labels) and len(set(labels)) == 7
    assert acc_ax.get_xlabel() == "ACC (mean over seeds; 95% CI where n >= 2)"
    assert fgt_ax.get_xlabel().startswith("forgetting")
    assert fig._suptitle.get_text() == "Method comparison (data: torchvision)"
    assert "no completed run" in [t.get_text() for t in acc_ax.texts]
    red = [t.get_text() for t in acc_ax.get_yticklabels() if t.get_color() == "tab:red"]
    assert len(red) == 2
    # error bars only where a mean pools two or more seeds
    (errorbars,) = [c for c in acc_ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(errorbars.lines[2][0].get_segments()) == sum(by_cfg.n >= 2) == 5


def test_combined_reports_name_the_benchmark_and_selection_is_per_scenario(tmp_path):
    from clrun import plots, report

    for bench in ("split_mnist", "permuted_mnist"):
        for lam, acc, fgt in ((1, 0.6, 0.3), (100, 0.55, 0.05)):
            _job(tmp_path / bench, f"lam={lam}", [f"benchmark={bench}", f"lam={lam}"], benchmark=bench,
                 method="ewc", lam=lam, ACC=acc, forgetting=fgt)
    _job(tmp_path / "split_mnist", "lam=10000", ["benchmark=split_mnist", "lam=10000"], status="diverged",
         benchmark="split_mnist", method="ewc", lam=10000, ACC=float("nan"), forgetting=float("nan"))
    by_cfg = report.by_config(report.collect(tmp_path / "split_mnist", tmp_path / "permuted_mnist"))
    assert "benchmark" in report.varying(by_cfg) and "benchmark" in report.table(by_cfg).splitlines()[0]
    labels = [t.get_text() for t in plots.figure_methods(by_cfg).axes[0].get_yticklabels()]
    assert {lbl.split()[0] for lbl in labels} == {"benchmark=split_mnist", "benchmark=permuted_mnist"}
    best = report.select(by_cfg, max_forgetting=0.1)
    assert sorted(best.benchmark) == ["permuted_mnist", "split_mnist"] and (best.lam == 100).all()
    fig = plots.figure_vs(by_cfg, "lam", ("ACC", "forgetting"), log_x=True)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sorted(legend) == ["benchmark=permuted_mnist (n=1)", "benchmark=split_mnist (n=1)",
                              "lam with no completed run (1)"]  # the diverged lam is marked, not dropped
    assert fig.axes[0].get_xlabel() == "lam (log scale)"
    assert fig.axes[1].get_title() == "forgetting vs lam (95% CI where n >= 2)"
    assert fig.axes[0].get_ylabel() == "ACC (mean over seeds)"


def test_a_sweep_warns_once_about_a_setting_the_method_ignores_and_ends_with_its_table(tmp_path):
    proc, sweep = _sweep(tmp_path, "method=naive", "lam=10,1000", "scenario=task_il,class_il",
                         "benchmark.n_tasks=2", "plots=true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("clrun: warning: lam has no effect on method=naive") == 1
    finals = sorted(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("ACC="))
    assert finals == [str(sweep / f"lam={lam},scenario={s}") for lam in (10, 1000) for s in ("class_il", "task_il")]
    lines = proc.stdout.splitlines()
    table = lines[[i for i, line in enumerate(lines) if line.split()[:1] == ["scenario"]][0]:]
    assert table[0].split()[:4] == ["scenario", "lam", "n", "ACC_mean"]  # what the sweep varied
    assert sorted(tuple(row.split()[:2]) for row in table[1:5]) == [
        ("class_il", "10"), ("class_il", "1000"), ("task_il", "10"), ("task_il", "1000")]
    assert "clrun: 4 jobs (4 completed); summaries in" in proc.stdout
    labels = [t.get_text() for t in plots.figure_methods(pd.read_csv(sweep / "summary_by_config.csv")).axes[0]
              .get_yticklabels()]
    assert sorted(labels) == ["scenario=class_il lam=10 (n=1)", "scenario=class_il lam=1000 (n=1)",
                              "scenario=task_il lam=10 (n=1)", "scenario=task_il lam=1000 (n=1)"]
    assert (sweep / "methods.png").exists()


def test_quiet_prints_one_line_and_a_run_names_its_directory(tmp_path):
    quiet = subprocess.run(clrun_cmd(*FAST, "benchmark.n_tasks=2", f"hydra.run.dir={tmp_path / 'q'}"),
                           capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stdout.splitlines() == [quiet.stdout.strip()]
    assert quiet.stdout.startswith("ACC=") and quiet.stdout.strip().endswith(str(tmp_path / "q"))
    loud = subprocess.run(clrun_cmd(*[o for o in FAST if o != "quiet=true"], "benchmark.n_tasks=2",
                                    f"hydra.run.dir={tmp_path / 'l'}"), capture_output=True, text=True, timeout=300)
    assert f"clrun: run directory {tmp_path / 'l'}" in loud.stderr
    assert loud.stdout.strip().splitlines()[-1].endswith(str(tmp_path / "l"))
    assert "after_task_2" in loud.stdout  # the R table


def test_objective_gives_optuna_acc_or_acc_and_forgetting():
    from clrun.app import objective

    row = {"status": "completed", "ACC": 0.8, "forgetting": 0.1}
    assert objective(row, None) == 0.8 and objective(row, "maximize") == 0.8
    assert objective(row, ["maximize", "minimize"]) == (0.8, 0.1)
    # a run that diverged is the worst point, never a good one (and no NaN, on which the sweeper stops)
    assert objective({"status": "diverged", "ACC": 0.1, "forgetting": 0.0}, ["maximize", "minimize"]) == (0.0, 1.0)
    assert objective(None, "maximize") == 0.0
    # a one-objective study: the sweeper's config holds its Direction enum, not a string
    from hydra_plugins.hydra_optuna_sweeper.config import Direction

    assert objective(row, Direction.maximize) == 0.8


def test_an_optuna_study_searches_lam_and_clrun_select_reads_its_pareto_front(tmp_path, capsys):
    proc, sweep = _sweep(tmp_path, "method=ewc", "benchmark.n_tasks=2", "hydra/sweeper=optuna",
                         "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=3",
                         "hydra.sweeper.direction=[maximize,minimize]", "lam=tag(log,interval(0.1,100))")
    assert proc.returncode == 0, proc.stderr[-1500:]
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 3 and summary.lam.nunique() == 3 and (summary.status == "completed").all()
    front = report.pareto_front(sweep)
    assert 1 <= len(front) <= 3 and {"lam", "ACC", "forgetting"} <= set(front.columns)
    best = summary.loc[summary.ACC.idxmax()]
    assert best.ACC == pytest.approx(front.ACC.max(), abs=1e-4)  # the best-ACC trial is on the front
    assert report.select_main([str(sweep), "--max-forgetting", "1"]) == 0
    assert "Pareto front of the Optuna study" in capsys.readouterr().out
