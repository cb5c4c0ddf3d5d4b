"""Published-protocol presets (conf/paper/<paper>/<preset>.yaml): each composes with its settings intact, every
cell of its sweep runs a tiny step on the synthetic stream, a method the paper did not tune is refused, and
clrun-report --compare-paper lines runs up with the paper."""

import itertools
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats

from clrun.app import CONF_DIR
from clrun.checks import build
from clrun.errors import ConfigError
from clrun.methods.base import Method
from clrun.papers import EXPERIMENT_ALIASES
from clrun.report import collect, compare_paper, holm, markdown_table, report_main, welch_test
from clrun.run import run
from tests.conftest import clrun_cmd, make_cfg

PAPERS = Path(CONF_DIR) / "paper"
PRESETS = sorted(f"{p.parent.name}/{p.stem}" for p in PAPERS.glob("*/*.yaml") if p.stem != "common")
# the preset's own stream type on generated data, 2 tasks, 1 step each
TINY = ["benchmark.dataset=synthetic", "benchmark.name=tiny", "benchmark.n_tasks=2", "iters=1", "quiet=true",
        "plots=false", "device=cpu", "checkpoint=false"]
# what TINY replaces; every other setting must stay as the preset says
REPLACED = {"benchmark", "iters", "quiet", "plots", "device", "checkpoint"}
# a generated regression stream stays itself, smaller; OML meta-trains for one step
TINY_SINE = ["benchmark.train_per_task=32", "benchmark.eval_per_task=32", *TINY[3:]]


def _tiny(full) -> list[str]:
    """TINY for the preset's stream: the synthetic classes, or its own sine functions, fewer samples."""
    if full.benchmark._target_ != "clrun.streams.sine":
        return TINY
    return [*TINY_SINE, *(["method.meta_steps=1"] if "meta_steps" in full.method else [])]


def _sweep_params(preset: str) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        with_hydra = compose(config_name="config", overrides=[f"paper={preset}"], return_hydra_config=True)
    return dict(with_hydra.hydra.sweeper.params or {})


def _sweep_cells(preset: str) -> list[list[str]]:
    params = _sweep_params(preset)
    params.pop("seed", None)
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]


def test_there_are_presets_and_every_old_name_maps_to_one():
    assert set(EXPERIMENT_ALIASES.values()) <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_cells_compose_intact_and_run_a_tiny_step(tmp_path, preset):
    cells = _sweep_cells(preset)
    assert cells, f"{preset} has no sweep"
    methods_run: set[str] = set()
    for i, cell in enumerate(cells):
        full = make_cfg(f"paper={preset}", *cell)
        tiny = make_cfg(f"paper={preset}", *cell, *_tiny(full))
        assert full.paper.name.split("/")[0] == preset.split("/")[0]
        full_c, tiny_c = (OmegaConf.to_container(c, resolve=True) for c in (full, tiny))
        for c in (full_c, tiny_c):  # the one method setting TINY may change
            c["method"].pop("meta_steps", None)
        for key in set(full_c) - REPLACED:
            assert tiny_c[key] == full_c[key], f"{preset} {cell}: {key} changed by the tiny overrides"
        assert isinstance(build(tiny.method), Method)  # every cell's method settings are valid...
        if tiny.method._target_ not in methods_run:  # ...and each method of the preset trains a step
            methods_run.add(tiny.method._target_)
            row = run(tiny, tmp_path / str(i))
            assert row["status"] == "completed", (preset, cell)


def test_protocol_specific_settings_reach_the_method():
    der = make_cfg("paper=der2020/seq_mnist_buffer", "method=derpp", "buffer=500")
    assert (der.lr, der.method.alpha, der.method.beta, der.method.replay_batch_size) == (0.03, 1.0, 0.5, 10)
    assert der.batch_size == 10 and list(der.model.hidden) == [100, 100] and der.benchmark.fixed_class_order
    ewc = make_cfg("paper=vandeven2019/split_mnist", "method=ewc", "scenario=class_il")
    assert ewc.method.lam == 1e8 and ewc.optimizer._target_ == "torch.optim.Adam" and ewc.iters == 2000
    assert ewc.method.fisher == "predicted" and ewc.method.fisher_samples is None
    # the 2019 code's online EWC multiplies its running Fisher by gamma once more: lam = o_lambda * gamma
    oewc = make_cfg("paper=vandeven2019/split_mnist", "method=online_ewc", "scenario=domain_il")
    assert (oewc.method.lam, oewc.method.gamma, oewc.method.online) == (7e7, 0.7, True)
    # the published input (raw pixels) and, for mammoth's class-IL, the whole head in the loss
    assert not der.data.normalize and der.scenario.train_units == "all" and ewc.scenario.train_units == "seen"
    perm = make_cfg("paper=der2020/perm_mnist_buffer", "method=derpp", "buffer=5120")
    assert (perm.lr, perm.method.alpha, perm.method.beta, perm.benchmark.n_tasks) == (0.2, 0.5, 1.0, 20)
    # mammoth's SI (clipped gradients of the total loss) and ewc_on (p(y|x)-weighted Fisher)
    si = make_cfg("paper=der2020/rot_mnist", "method=si").method
    assert (si.path_grad, si.clip_value, make_cfg("paper=der2020/perm_mnist", "method=online_ewc").method.fisher
            ) == ("total", 1.0, "weighted_empirical")
    rot = make_cfg("paper=der2020/rot_mnist_buffer", "method=agem", "buffer=500")
    assert rot.lr == 0.3 and rot.benchmark.random_angles and rot.scenario.name == "domain_il"
    vdv = make_cfg("paper=vandeven2019/perm_mnist", "method=si", "scenario=class_il")
    assert (vdv.benchmark.pad, vdv.benchmark.n_tasks, vdv.iters, vdv.lr, vdv.method.lam) == (2, 10, 5000, 1e-4, 0.1)
    assert vdv.method.path_grad == "total"
    assert list(vdv.model.hidden) == [1000, 1000] and not vdv.reset_optimizer and not vdv.data.normalize
    # their 2018 train.py, behind the permuted table: each old head replays its own share of the samples
    assert {make_cfg("paper=vandeven2019/perm_mnist", f"method={m}").method.task_il_samples
            for m in ("dgr", "dgr_distill")} == {"per_head"}
    assert make_cfg("paper=vandeven2019/split_mnist", "method=dgr").method.task_il_samples == "shared"
    agem = make_cfg("paper=agem2019/perm_mnist", "method=agem")
    assert (agem.benchmark.n_tasks, agem.batch_size, agem.buffer, agem.method.replay_batch_size) == (17, 10, 4250, 256)
    assert agem.benchmark.train_per_task is None and not agem.data.normalize and agem.lr == 0.1
    # van de Ven's code pairs the digits at random per seed; mammoth's 2020 LwF and iCaRL as the DER paper ran them
    assert not ewc.benchmark.fixed_class_order and ewc.benchmark.shuffle_rng == "numpy"  # their seed's pairs
    lwf = make_cfg("paper=der2020/seq_mnist", "method=lwf")
    assert (lwf.method.warmup_epochs, lwf.method.train_units, lwf.method.alpha, lwf.optimizer.weight_decay,
            lwf.method.warmup_lr) == (1, "seen", 0.25, 0.001, 0.03)
    icarl = make_cfg("paper=der2020/seq_mnist_buffer", "method=icarl", "buffer=500").method
    assert (icarl.replay, icarl.loss_units, icarl.class_means, icarl.merged_inputs) == (
        "merged", "mean", "raw", "stored")
    # the command line still wins over a preset
    assert make_cfg("paper=der2020/seq_mnist_buffer", "method=er", "buffer=200", "lr=0.5").lr == 0.5
    # no preset: no paper, and clrun's own defaults
    assert make_cfg("method=er").paper is None and make_cfg("method=er").lr == 0.01


def test_multirun_of_a_preset_and_compare_paper(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    subprocess.run(clrun_cmd("-m", "paper=der2020/seq_mnist", "method=naive,joint", "seed=0,1", *TINY,
                             f"hydra.sweep.dir={sweep}"), check=True, capture_output=True)
    summary = collect(sweep)
    assert len(summary) == 4 and (summary.status == "completed").all()
    # runs on another stream are not the paper's: nothing to compare
    assert compare_paper(summary).empty
    # the same runs, relabelled as split_mnist, line up with the paper's cells
    for job in summary.job_dir:
        m = pd.read_csv(Path(job) / "metrics.csv")
        m["benchmark"] = "split_mnist"
        m.to_csv(Path(job) / "metrics.csv", index=False)
    table = compare_paper(collect(sweep))
    assert sorted(table.method) == ["joint", "naive"] and (table.n == 2).all()
    naive = table.set_index("method").loc["naive"]
    assert naive.paper_ACC == 19.60 and naive["diff"] == pytest.approx(naive.clrun_ACC - 19.60)
    assert report_main([str(sweep), "--compare-paper"]) == 0
    assert "| der2020/seq_mnist | naive | class_il |" in capsys.readouterr().out
    assert (sweep / "compare_paper.csv").exists()


def test_compare_paper_puts_published_forgetting_next_to_clruns(tmp_path):
    proto = {"name": "p", "benchmark": "permuted_mnist", "spread": "std",
             "results": [{"method": "agem", "scenario": "domain_il", "ACC": 89.1, "spread": 0.14,
                          "forgetting": 0.06, "forgetting_spread": 0.001},
                         {"method": "naive", "scenario": "domain_il", "ACC": 47.55, "spread": 2.37},
                         {"method": "joint", "scenario": "domain_il", "ACC": 95.3, "spread": None}]}
    rows = []
    for i, (method, acc, fgt) in enumerate([("agem", 0.90, 0.05), ("agem", 0.92, 0.07), ("naive", 0.5, 0.4),
                                            ("joint", 0.96, 0.0)]):
        job = tmp_path / str(i)
        job.mkdir()
        (job / "config.yaml").write_text(OmegaConf.to_yaml({"paper": proto}))
        rows.append({"job_dir": str(job), "status": "completed", "method": method, "scenario": "domain_il",
                     "benchmark": "permuted_mnist", "buffer": 4250, "ACC": acc, "forgetting": fgt,
                     "wall_seconds": 60.0,
                     "device": "cuda:0 (NVIDIA H100 80GB HBM3)" if method == "joint" else "cpu"})
    table = compare_paper(pd.DataFrame(rows)).set_index("method")
    assert table.loc["agem", "clrun_ACC"] == pytest.approx(91.0) and table.loc["agem", "n"] == 2
    assert table.loc["agem", "paper_forgetting"] == 0.06
    assert table.loc["agem", "clrun_forgetting"] == pytest.approx(0.06)
    assert table.loc["agem", "clrun_forgetting_std"] == pytest.approx(0.0141421, rel=1e-4)
    # a cell that publishes no forgetting gets none, and the markdown says so
    assert pd.isna(table.loc["naive", "paper_forgetting"]) and pd.isna(table.loc["naive", "clrun_forgetting"])
    md = markdown_table(table.reset_index())
    assert "| 0.06 ± 0.001 / 0.060 ± 0.014 |" in md and "| – |" in md
    # a mean published without a spread is compared, but cannot be "within" anything
    assert table.loc["joint", "within_paper_std"] is None and table.loc["agem", "within_paper_std"] == False  # noqa: E712
    assert "| 95.30 (no spread) | 96.00 (1) | +0.70 | – |" in md
    # GPU minutes are labelled with the GPU; CPU minutes stay bare
    assert table.loc["joint", "device"] == "cuda:0 (NVIDIA H100 80GB HBM3)" and table.loc["agem", "device"] == "cpu"
    assert "| 1.0 (NVIDIA H100 80GB HBM3) |" in md and md.count("(NVIDIA H100") == 1


def test_compare_paper_gives_minutes_per_device_when_a_cells_seeds_ran_on_cpu_and_gpu(tmp_path):
    proto = {"name": "p", "benchmark": "permuted_mnist", "spread": "std",
             "results": [{"method": "lwf", "scenario": "task_il", "ACC": 70.0, "spread": 1.0}]}
    rows = []
    for i, (seconds, device) in enumerate([(1800.0, "cpu"), (1920.0, "cpu"), (300.0, "cuda:0 (NVIDIA H200)"),
                                           (360.0, "cuda:0 (NVIDIA H200)")]):
        job = tmp_path / str(i)
        job.mkdir()
        (job / "config.yaml").write_text(OmegaConf.to_yaml({"protocol": proto}))
        rows.append({"job_dir": str(job), "status": "completed", "method": "lwf", "scenario": "task_il",
                     "benchmark": "permuted_mnist", "ACC": 0.7, "forgetting": 0.1, "wall_seconds": seconds,
                     "device": device})
    table = compare_paper(pd.DataFrame(rows))
    # the overall mean (18.25 minutes) describes neither machine: the markdown gives each device's own
    assert table.loc[0, "minutes_per_run"] == pytest.approx(18.25)
    assert table.loc[0, "minutes_by_device"] == "cpu: 31.0; cuda:0 (NVIDIA H200): 5.5"
    assert markdown_table(table).endswith("| 31.0 (CPU) / 5.5 (NVIDIA H200) |")
    # a run from before metrics.csv had a device column is counted, not dropped or called a CPU's
    rows[1]["device"] = None
    table = compare_paper(pd.DataFrame(rows))
    assert table.loc[0, "minutes_by_device"] == "cpu: 30.0; cuda:0 (NVIDIA H200): 5.5; unknown: 32.0"
    assert markdown_table(table).endswith("| 30.0 (CPU) / 5.5 (NVIDIA H200) / 32.0 (device unknown) |")


def test_welch_test_from_summary_statistics_equals_the_test_on_the_runs_themselves():
    rng = np.random.default_rng(0)
    paper_runs, clrun_runs = rng.normal(70.0, 2.0, 10), rng.normal(72.0, 0.5, 3)
    diff = clrun_runs.mean() - paper_runs.mean()
    se = [a.std(ddof=1) / np.sqrt(len(a)) for a in (paper_runs, clrun_runs)]
    t, df, p = welch_test(diff, se[0], len(paper_runs) - 1, se[1], len(clrun_runs) - 1)
    raw = stats.ttest_ind(clrun_runs, paper_runs, equal_var=False)
    assert (t, p) == pytest.approx((raw.statistic, raw.pvalue), rel=1e-9)
    # equal standard errors and runs: the Welch df is the pooled test's 2 (n - 1)
    assert welch_test(1.0, 1.0, 4, 1.0, 4)[1] == pytest.approx(8.0)
    # a published SEM is the standard error whatever the run count: only df moves (van de Ven: 5 or 20 runs?)
    t5, df5, p5 = welch_test(-1.03, 0.46, 4, 1.48 / np.sqrt(5), 4)
    t20, df20, p20 = welch_test(-1.03, 0.46, 19, 1.48 / np.sqrt(5), 4)
    assert t5 == t20 and df5 < df20 and p5 > p20
    # one run, or no spread: the noise is unknown, so no p-value rather than a made-up one
    assert all(np.isnan(welch_test(1.0, 0.5, 9, np.nan, 0)))
    assert all(np.isnan(welch_test(1.0, 0.0, 9, 0.0, 2)))


def test_holm_adjusts_over_the_whole_family_and_leaves_missing_p_values_out():
    p = pd.Series([0.01, 0.04, np.nan, 0.03, 0.005], index=list("abcde"))
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, then the running maximum
    assert holm(p).to_dict() == pytest.approx({"a": 0.03, "b": 0.06, "c": np.nan, "d": 0.06, "e": 0.02},
                                              nan_ok=True)
    assert holm(pd.Series([0.5, 0.9])).tolist() == [1.0, 1.0]


def test_compare_paper_tells_out_of_the_papers_spread_from_a_different_mean(tmp_path):
    proto = {"name": "p", "benchmark": "split_mnist", "spread": "std", "runs": 10,
             "results": [{"method": "naive", "scenario": "class_il", "ACC": 19.60, "spread": 0.04},
                         {"method": "er", "scenario": "class_il", "ACC": 50.0, "spread": 1.5}]}
    accs = {"naive": [19.2, 19.9, 19.5], "er": [51.3, 51.4, 51.5, 51.35, 51.45, 51.4, 51.4, 51.3, 51.5, 51.4]}
    rows = []
    for method, values in accs.items():
        for i, acc in enumerate(values):
            job = tmp_path / f"{method}{i}"
            job.mkdir()
            (job / "config.yaml").write_text(OmegaConf.to_yaml({"protocol": proto}))
            rows.append({"job_dir": str(job), "status": "completed", "method": method, "scenario": "class_il",
                         "benchmark": "split_mnist", "ACC": acc / 100, "wall_seconds": 6.0, "device": "cpu"})
    table = compare_paper(pd.DataFrame(rows)).set_index("method")
    for method, cell in zip(accs, proto["results"]):
        expect = stats.ttest_ind_from_stats(np.mean(accs[method]), np.std(accs[method], ddof=1), len(accs[method]),
                                            cell["ACC"], cell["spread"], 10, equal_var=False)
        assert table.loc[method, "p_value"] == pytest.approx(expect.pvalue, rel=1e-6)
    # naive: 0.07 below, outside a 0.04 std, but three runs spread over 0.7 points cannot tell the means apart
    assert table.loc["naive", "within_paper_std"] == False and table.loc["naive", "p_value"] > 0.3  # noqa: E712
    # er: 1.4 above, inside a 1.5 std, yet ten tight runs against ten runs' standard error of 0.47 can
    assert table.loc["er", "within_paper_std"] == True and table.loc["er", "p_holm"] < 0.05  # noqa: E712
    assert table.loc["er", "p_holm"] == pytest.approx(2 * table.loc["er", "p_value"])
    md = markdown_table(table.reset_index())
    lines = {line.split(" | ")[1]: line for line in md.splitlines()[2:]}
    assert f"| -0.07 | **no** | {table.loc['naive', 'p_value']:.3f} | no |" in lines["naive"]
    assert f"| +1.40 | yes | {table.loc['er', 'p_value']:.3f} | **yes** |" in lines["er"]


def test_a_method_the_paper_did_not_tune_is_refused_naming_the_ones_it_did(tmp_path):
    with pytest.raises(ConfigError, match=r"method=lwf has no settings in paper=der2020/perm_mnist_buffer .*"
                       r"covers agem, der, derpp, er, gem, joint, naive, online_ewc, si\..*paper\.untuned=defaults"):
        make_cfg("paper=der2020/perm_mnist_buffer", "method=lwf")
    # the old name, on the command line: one line, exit 2, nothing written
    out = tmp_path / "run"
    proc = subprocess.run(clrun_cmd("+experiment=der_perm_mnist", "method=lwf", f"hydra.run.dir={out}"),
                          capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2 and len(errors) == 1 and not (out.exists() and any(out.iterdir()))
    assert "its tuning covers agem, der, derpp, er, gem, joint, naive, online_ewc, si" in errors[0]
    assert "+experiment=der_perm_mnist is deprecated and goes in clrun 0.3: use paper=der2020/perm_mnist_buffer" in (
        proc.stderr)
    # the explicit opt-in runs the method as clrun's defaults have it, on the paper's protocol
    lwf = make_cfg("paper=der2020/perm_mnist_buffer", "method=lwf", "paper.untuned=defaults")
    assert lwf.lr == 0.01 and lwf.paper.applied == {} and lwf.benchmark.n_tasks == 20
    with pytest.raises(ConfigError, match="paper.untuned='maybe' is not one of error, defaults"):
        make_cfg("paper=der2020/perm_mnist_buffer", "method=lwf", "paper.untuned=maybe")
    with pytest.raises(ConfigError, match="der_perm is not a preset: the old preset names are"):
        make_cfg("+experiment=der_perm")


def test_paper_settings_are_yaml_tables_the_command_line_overrides_and_config_yaml_records():
    der = make_cfg("paper=der2020/seq_mnist_buffer", "method=der", "buffer=500")
    assert der.paper.applied == {"lr": 0.03, "method.alpha": 1.0, "method.replay_batch_size": 128}
    assert "methods" not in der.paper  # config.yaml says what ran, not every method's table
    # a setting the command gives wins, and so does a top-level number the method's setting follows
    mine = make_cfg("paper=der2020/seq_mnist_buffer", "method=der", "buffer=500", "lr=0.5", "method.alpha=0.1")
    assert (mine.lr, mine.method.alpha, mine.paper.applied) == (0.5, 0.1, {"method.replay_batch_size": 128})
    assert make_cfg("paper=vandeven2019/split_mnist", "method=si", "scenario=domain_il", "lam=3").method.lam == 3
    assert make_cfg("paper=vandeven2019/split_mnist", "method=si", "scenario=domain_il").method.lam == 500
    # a buffer the paper did not tune is refused with the buffers it did
    with pytest.raises(ConfigError, match="buffer=300 has no settings for method=der in paper=der2020/seq_mnist_"
                                          "buffer: its by_buffer table lists 200, 500, 5120"):
        make_cfg("paper=der2020/seq_mnist_buffer", "method=der", "buffer=300")
    # no interpolation string hides a lookup table: every table is YAML
    for f in PAPERS.glob("*/*.yaml"):
        assert "${by:" not in f.read_text(), f


def test_a_preset_composed_by_hydra_alone_is_refused_before_it_runs_without_its_settings(tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        bare = compose(config_name="config", overrides=["paper=der2020/seq_mnist", "method=naive", *TINY])
    with pytest.raises(ConfigError, match="composed without its per-method settings: build the config with "
                                          r"clrun.app.compose"):
        run(bare, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_preset_without_multirun_runs_its_first_cell_and_says_so(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(clrun_cmd("paper=der2020/seq_mnist_buffer", *TINY, f"hydra.run.dir={out}"),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert ("paper=der2020/seq_mnist_buffer without -m runs its first cell: method=er seed=0 buffer=200 "
            "(clrun -m paper=der2020/seq_mnist_buffer runs the whole sweep)") in proc.stderr
    overrides = OmegaConf.load(out / ".hydra" / "overrides.yaml")
    assert {"method=er", "seed=0", "buffer=200"} <= set(overrides)
    assert pd.read_csv(out / "metrics.csv").loc[0, "method"] == "er"


def test_the_shared_part_of_a_papers_presets_is_not_a_preset():
    with pytest.raises(ConfigError, match="paper=der2020/common is the part a paper's presets share, not a preset"):
        make_cfg("paper=der2020/common")


def test_runs_recorded_under_an_old_protocol_name_compare_under_the_presets_name(tmp_path):
    rows = []
    for i, (key, name) in enumerate([("protocol", "der_seq_mnist"), ("paper", "der2020/seq_mnist")]):
        job = tmp_path / str(i)
        job.mkdir()
        proto = {"name": name, "benchmark": "split_mnist", "spread": "std", "runs": 10,
                 "results": [{"method": "naive", "scenario": "class_il", "ACC": 19.60, "spread": 0.04}]}
        (job / "config.yaml").write_text(OmegaConf.to_yaml({key: proto}))
        rows.append({"job_dir": str(job), "status": "completed", "method": "naive", "scenario": "class_il",
                     "benchmark": "split_mnist", "seed": i, "ACC": 0.195 + i / 1000, "wall_seconds": 6.0})
    table = compare_paper(pd.DataFrame(rows))
    assert len(table) == 1 and table.loc[0, "protocol"] == "der2020/seq_mnist" and table.loc[0, "n"] == 2
    assert table.loc[0, "seeds"] == "0-1"


def test_a_run_started_before_conf_paper_resumes_its_settings_are_what_identity_compares():
    from clrun.checkpoint import identity
    new = make_cfg("paper=der2020/seq_mnist_buffer", "method=der", "buffer=500")
    old = OmegaConf.to_container(new, resolve=True)
    old["protocol"] = {"name": "der_seq_mnist", "results": old.pop("paper")["results"]}
    assert identity(old) == identity(new)
    old["lr"] = 0.5  # what the preset set is still compared where it landed
    assert identity(old) != identity(new)
