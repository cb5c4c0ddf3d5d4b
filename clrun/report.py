"""Summaries of runs and sweeps, built from the CSVs alone: ``summary.csv`` (one row per job),
``summary_by_config.csv`` (seeds aggregated: mean, std, 95% CI, n) and lam selection under a forgetting
tolerance. Console scripts ``clrun-report`` and ``clrun-select``; a Hydra callback writes the summaries
(and plots) when a multirun ends."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from clrun import io, papers
from clrun.metrics import LOWER_IS_BETTER

SUMMARY_FILE, BY_CONFIG_FILE, SELECTION_FILE = "summary.csv", "summary_by_config.csv", "selection.csv"
COMPARE_FILE = "compare_paper.csv"
METRICS = ["ACC", "forgetting", "BWT", "FWT", "learning_accuracy", "wall_seconds", "train_seconds", "peak_rss_mb",
           "parameters", "buffer_bytes"]
# what identifies a configuration when seeds are pooled
CONFIG_KEYS = ["benchmark", "measure", "scenario", "method", "regularizers", "lam", "buffer", "n_tasks", "data_source",
               "overrides_no_seed"]
# overrides that change no result: not a column of the configuration
NOT_SETTINGS = ("quiet", "plots", "resume", "log_every", "logger")
OVERRIDE_PREFIX = "ov:"  # summary columns holding each override's value, e.g. ov:method.fisher
# by-configuration run counts, each over the statuses it names
STATUS_COUNTS = {"n_completed": ("completed",), "n_failed": ("failed", "refused"), "n_diverged": ("diverged",),
                 "n_interrupted": ("interrupted", "incomplete", "missing")}


def _job_dirs(root: Path) -> list[Path]:
    """Every run directory below ``root``: one with metrics.csv, or a Hydra job that never wrote one."""
    found = {p.parent for p in root.rglob(io.METRICS_FILE)} | {p.parent for p in root.rglob(".hydra")}
    return sorted(found, key=lambda p: (len(p.parts), str(p)))


def _overrides(job: Path) -> list[str]:
    f = job / ".hydra" / "overrides.yaml"
    if not f.exists():
        return []
    return [str(o) for o in (yaml.safe_load(f.read_text()) or [])]


def _override_values(overrides: list[str]) -> dict[str, str]:
    """``{"lr": "0.1", "method.fisher": "true"}`` from a job's overrides (seeds left out: they are pooled)."""
    out = {}
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key and not key.endswith("seed") and not key.startswith("hydra") and key not in NOT_SETTINGS:
            out[key] = value
    return out


def collect(*roots: str | Path) -> pd.DataFrame:
    """One row per job found below ``roots``: its overrides, status and every metric."""
    rows: list[dict[str, Any]] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a run or sweep directory")
        for job in _job_dirs(root):
            ov = _overrides(job)
            base = {"job_dir": str(job), "overrides": " ".join(ov),
                    "overrides_no_seed": " ".join(o for o in ov if not o.split("=")[0].lstrip("+~").endswith("seed")),
                    **{OVERRIDE_PREFIX + k: v for k, v in _override_values(ov).items()}}
            metrics = job / io.METRICS_FILE
            if metrics.exists():
                m = pd.read_csv(metrics).iloc[0].to_dict()
                if m.get("status") == "running":  # written after a task, then the job stopped
                    m["status"] = "incomplete"
                rows.append({**base, **m})
            else:
                rows.append({**base, "status": "missing"})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["job_dir", "overrides"] + io.METRICS_COLUMNS)
    first = ["job_dir", "overrides", "status"]
    return frame[first + [c for c in frame.columns if c not in first]]


def ci95(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); NaN for fewer than 2 values."""
    # imported here: every run instantiates the sweep callback; stdtrit is stats.t.ppf without scipy.stats' ~1 s
    from scipy.special import stdtrit

    v = values.dropna()
    n = len(v)
    if n < 2:
        return math.nan
    return float(stdtrit(n - 1, 0.975) * v.std(ddof=1) / math.sqrt(n))


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that identify a configuration: the stream, scenario and method columns of metrics.csv, the
    data source, and every override (``ov:<key>``), seeds excepted."""
    ovs = sorted(c for c in frame.columns if c.startswith(OVERRIDE_PREFIX))
    return [k for k in CONFIG_KEYS if k in frame.columns] + ovs


def varying(frame: pd.DataFrame) -> list[str]:
    """The configuration columns whose values differ among ``frame``'s rows: what a sweep varied. An override
    that repeats a metrics column (``scenario=class_il`` and the scenario column) is shown once."""
    text = frame.apply(lambda col: col.map(lambda v: "" if pd.isna(v) else str(v)))
    keys = [k for k in config_columns(frame) if k != "overrides_no_seed" and text[k].nunique() > 1]

    def same(given: str, value: str) -> bool:
        try:
            return float(given) == float(value)
        except ValueError:
            return given == value

    def repeats(k: str) -> bool:  # ov:lam says nothing the lam column does not (unless a method ignored lam)
        plain = k.removeprefix(OVERRIDE_PREFIX)
        return k != plain and plain in keys and all(g == "" or same(g, v) for g, v in zip(text[k], text[plain]))

    return [k for k in keys if not repeats(k)]


def by_config(summary: pd.DataFrame) -> pd.DataFrame:
    """Jobs grouped by configuration (seeds pooled): how many completed, failed, diverged or were interrupted,
    and the mean, std, ci95 of each metric over the completed ones (n). A configuration none of whose runs
    completed keeps its row, its metrics empty."""
    keys = config_columns(summary)
    if summary.empty:
        return pd.DataFrame(columns=keys + ["n", *STATUS_COUNTS])
    frame = summary.copy()
    for k in keys:
        frame[k] = frame[k].astype(object).where(frame[k].notna(), "")  # NaN keys would drop out of groupby
    metrics = [m for m in METRICS if m in frame.columns]
    out = []
    for key, grp in frame.groupby(keys, sort=True):
        row = dict(zip(keys, key))
        done = grp[grp.status == "completed"]
        row["n"] = len(done)
        for column, statuses in STATUS_COUNTS.items():
            row[column] = int(grp.status.isin(statuses).sum())
        for m in metrics:
            values = pd.to_numeric(done[m], errors="coerce")
            row[f"{m}_mean"] = values.mean() if len(done) else math.nan
            row[f"{m}_std"] = values.std(ddof=1) if len(done) > 1 else math.nan
            row[f"{m}_ci95"] = ci95(values)
        out.append(row)
    return pd.DataFrame(out)


def table(by_cfg: pd.DataFrame, keys: list[str] | None = None) -> str:
    """The by-configuration table as the console shows it: the settings that vary (or ``keys``), the run
    counts, the means."""
    if by_cfg.empty:
        return "(no runs)"
    shown = keys or varying(by_cfg) or ["method"]
    counts = ["n"] + [c for c in STATUS_COUNTS if c != "n_completed" and by_cfg[c].sum() > 0]
    values = [c for c in _SHOW if c in by_cfg.columns]
    frame = by_cfg[shown + counts + values].copy()
    for k in shown:  # settings as written (200, not 200.0000); none as blank
        frame[k] = frame[k].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                else f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))
    sources = sorted({str(v) for v in by_cfg.get("data_source", []) if str(v) not in ("", "nan")})
    note = f"\n(data: {', '.join(sources)})" if "embedded-5k" in sources and "data_source" not in shown else ""
    frame = frame.rename(columns=lambda c: c if not c.startswith(OVERRIDE_PREFIX) else
                         f"{c.removeprefix(OVERRIDE_PREFIX)} (given)" if c.removeprefix(OVERRIDE_PREFIX) in shown
                         else c.removeprefix(OVERRIDE_PREFIX))
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-") + note


def goodness(frame: pd.DataFrame, column: str = "ACC_mean") -> pd.Series:
    """``column`` (an ACC) signed so that larger is better: negated where the run's measure is an error (MSE)."""
    if "measure" not in frame.columns:
        return frame[column]
    return frame[column].where(~frame["measure"].isin(LOWER_IS_BETTER), -frame[column])


def select(by_cfg: pd.DataFrame, max_forgetting: float) -> pd.DataFrame:
    """Per method, the configuration with the best mean ACC (the lowest, for an error measure such as a
    regression stream's MSE) whose mean forgetting is within the tolerance (the reference text's FAQ rule for
    choosing lam)."""
    ok = by_cfg[by_cfg["forgetting_mean"] <= max_forgetting]
    if ok.empty:
        return ok
    ok = ok.assign(_goodness=goodness(ok))
    # one choice per method and per anything else the sweep varied (scenario, benchmark, ...), never per lam
    per = [k for k in varying(by_cfg) if k not in ("lam", OVERRIDE_PREFIX + "lam", OVERRIDE_PREFIX + "method.lam")]
    best = ok.loc[ok.groupby(per or ["method"])["_goodness"].idxmax()]
    return best.sort_values("_goodness", ascending=False).drop(columns="_goodness").reset_index(drop=True)


OPTUNA_FILE = "optimization_results.yaml"


def pareto_front(*roots: str | Path) -> pd.DataFrame:
    """The Pareto front an Optuna sweep (two objectives: ACC up, forgetting down) wrote into its directory:
    one row per solution, its parameters and its (ACC, forgetting)."""
    rows = []
    for root in map(Path, roots):
        f = root / OPTUNA_FILE
        if not f.exists():
            continue
        results = yaml.safe_load(f.read_text()) or {}
        for sol in results.get("solutions") or []:
            values = list(sol.get("values") or [])
            if len(values) == 2:
                rows.append({"sweep": str(root), **sol.get("params", {}), "ACC": values[0], "forgetting": values[1]})
    return pd.DataFrame(rows)


def write_summaries(*roots: str | Path, out: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write summary.csv and summary_by_config.csv into ``out`` (default: the single root)."""
    summary = collect(*roots)
    out = Path(out or roots[0])
    out.mkdir(parents=True, exist_ok=True)
    grouped = by_config(summary)
    io.atomic_write_csv(out / SUMMARY_FILE, summary)
    io.atomic_write_csv(out / BY_CONFIG_FILE, grouped)
    return summary, grouped


def _protocol(job_dir: str) -> dict:
    """The paper preset a run followed (``paper``; ``protocol`` in run directories from before conf/paper/)."""
    f = Path(job_dir) / "config.yaml"
    cfg = (yaml.safe_load(f.read_text()) if f.exists() else {}) or {}
    if cfg.get("paper"):
        return cfg["paper"]
    old = dict(cfg.get("protocol") or {})  # compared under the preset's present name
    if old.get("name") in papers.PROTOCOL_ALIASES:
        old["name"] = papers.PROTOCOL_ALIASES[old["name"]]
    return old


def compare_paper(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per published cell that has completed runs: the paper's ACC (%) and spread next to clrun's mean
    and std over seeds, the difference, and whether it lies within the paper's standard deviation (a published
    SEM is turned into a std with the paper's number of runs). "Within" is the presets' yardstick, but it
    ignores how many runs either side has, so each cell also gets Welch's t-test of the two means (the paper's
    standard error from its spread and ``runs``, clrun's from its seeds) and the p-value Holm-adjusted over the
    table's cells: a cell can be outside the paper's std yet indistinguishable from its mean, or the reverse. Cells
    that publish forgetting (a fraction, as in A-GEM's F_T) also get the paper's and clrun's forgetting; the
    others NaN."""
    done = summary[summary.status == "completed"]
    protocols = {row.job_dir: _protocol(row.job_dir) for row in done.itertuples()}
    rows = []
    seen: set[tuple] = set()
    for proto in protocols.values():
        name = proto.get("name", "none")
        if name in seen or not proto.get("results"):
            continue
        seen.add(name)
        jobs = done[[protocols[j].get("name") == name for j in done.job_dir]]
        for cell in proto["results"]:
            sel = jobs[(jobs.method == cell["method"]) & (jobs.scenario == cell["scenario"])
                       & (jobs.benchmark == proto.get("benchmark", jobs.benchmark))]
            if "buffer" in cell:
                sel = sel[pd.to_numeric(sel.buffer, errors="coerce") == cell["buffer"]]
            if sel.empty:
                continue
            acc = 100 * sel.ACC
            kind = proto.get("spread", "std")
            spread = cell.get("spread")  # None: the paper prints the mean alone
            runs = proto.get("runs")  # the paper's runs: turn a SEM into a std
            paper_std = standard_deviation(spread, kind, runs)
            diff = acc.mean() - cell["ACC"]
            clrun_std = acc.std(ddof=1) if len(acc) > 1 else math.nan
            t, df, p = welch_against_paper(diff, spread, kind, runs, clrun_std, len(acc))
            fgt = sel.forgetting if "forgetting" in cell else pd.Series(dtype=float)  # only where published
            rows.append({"protocol": name, "method": cell["method"], "scenario": cell["scenario"],
                         "buffer": cell.get("buffer", ""), "paper_ACC": cell["ACC"],
                         "paper_spread": "" if spread is None else f"{spread} ({kind})", "paper_std": paper_std,
                         "clrun_ACC": acc.mean(), "clrun_std": clrun_std, "n": len(acc), "diff": diff,
                         "within_paper_std": None if spread is None else bool(abs(diff) <= paper_std),
                         "paper_runs": runs or math.nan, "t": t, "welch_df": df, "p_value": p,
                         "paper_forgetting": cell.get("forgetting", math.nan),
                         "paper_forgetting_spread": cell.get("forgetting_spread", math.nan),
                         "clrun_forgetting": fgt.mean(), "clrun_forgetting_std": fgt.std(ddof=1),
                         "minutes_per_run": sel.wall_seconds.mean() / 60, "device": _devices(sel),
                         "minutes_by_device": _minutes_by_device(sel), "seeds": seed_ranges(sel.get("seed")),
                         "clrun_version": _versions(sel)})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["p_holm"] = holm(frame.p_value)
    return frame


def seed_ranges(seeds: pd.Series | None) -> str:
    """A cell's seeds as the shortest text that names them: ``0-2``, ``1-20``, ``0-2,5``."""
    values = sorted({int(s) for s in pd.to_numeric(seeds, errors="coerce").dropna()}) if seeds is not None else []
    parts, start = [], None
    for i, s in enumerate(values):
        start = s if start is None else start
        if i + 1 == len(values) or values[i + 1] != s + 1:
            parts.append(str(s) if s == start else f"{start}-{s}")
            start = None
    return ",".join(parts)


def _versions(runs: pd.DataFrame) -> str:
    """The clrun versions a cell's runs ran with ("" for runs that predate the column)."""
    if "clrun_version" not in runs:
        return ""
    return "; ".join(sorted(runs.clrun_version.dropna().astype(str).unique()))


def standard_deviation(spread: float | None, kind: str, runs: int | None) -> float:
    """A published spread as a standard deviation: a SEM times the root of the paper's runs (NaN: none printed)."""
    if spread is None or (isinstance(spread, float) and math.isnan(spread)):
        return math.nan
    return spread * math.sqrt(runs or 1) if kind == "sem" else spread


def welch_against_paper(diff: float, spread: float | None, kind: str, runs: int | None, clrun_std: float,
                       n: int) -> tuple[float, float, float]:
    """Welch's test of clrun's mean (std over n seeds) against a published mean whose spread is a ``kind``
    ("std" or "sem") over ``runs`` runs: a SEM is the standard error itself, a std needs the run count."""
    if spread is None or not runs:
        return math.nan, math.nan, math.nan
    paper_se = spread if kind == "sem" else spread / math.sqrt(runs)
    return welch_test(diff, paper_se, runs - 1, clrun_std / math.sqrt(n), n - 1)


def welch_test(diff: float, se_a: float, df_a: float, se_b: float, df_b: float) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test from summary statistics: a difference of two means, each side's standard
    error and degrees of freedom (runs - 1). Returns (t, Welch-Satterthwaite df, two-sided p); all NaN where a
    side has no spread or fewer than two runs, since then the noise in the difference is unknown."""
    if not (df_a >= 1 and df_b >= 1 and math.isfinite(se_a) and math.isfinite(se_b)) or se_a + se_b == 0:
        return math.nan, math.nan, math.nan
    from scipy import stats  # imported here: scipy.stats costs every clrun command ~1 s of start-up

    var = se_a**2 + se_b**2
    df = var**2 / (se_a**4 / df_a + se_b**4 / df_b)
    t = diff / math.sqrt(var)
    return t, df, float(2 * stats.t.sf(abs(t), df))


def holm(p_values: pd.Series) -> pd.Series:
    """Holm's step-down adjustment: p-values that can be compared with alpha across the whole family of tests
    (a table of 100 cells has about 5 below 0.05 by chance alone). NaN stays NaN and is not counted."""
    p = p_values.dropna().sort_values()
    m = len(p)
    adjusted = (p * (m - pd.Series(range(m), index=p.index))).clip(upper=1.0).cummax()
    return adjusted.reindex(p_values.index)


def _on_gpu(devices: str) -> str:
    """Minutes on a GPU are not CPU minutes: name the GPU next to them."""
    names = [d.split(" (", 1)[-1].rstrip(")") for d in str(devices or "").split("; ") if d.startswith("cuda")]
    return f" ({', '.join(names)})" if names else ""


def _devices(runs: pd.DataFrame) -> str:
    """The devices a cell's runs ran on ("" for runs older than metrics.csv's device column)."""
    if "device" not in runs:
        return ""
    return "; ".join(sorted(runs.device.dropna().astype(str).unique()))


def _minutes_by_device(runs: pd.DataFrame) -> str:
    """Mean wall minutes a run on each device ("cpu: 31.0; cuda:0 (NVIDIA H200): 5.7"; runs that predate the
    device column count as "unknown"): a cell whose seeds ran on a CPU and a GPU has no meaningful overall mean."""
    if "device" not in runs or runs.device.isna().all():
        return ""
    minutes = runs.groupby(runs.device.fillna("unknown").astype(str)).wall_seconds.mean() / 60
    return "; ".join(f"{device}: {m:.1f}" for device, m in minutes.items())


def _minutes_cell(r) -> str:
    """min/run for the markdown: one number (the GPU named), or one per device where the seeds ran on several."""
    parts = [part.rsplit(": ", 1) for part in str(getattr(r, "minutes_by_device", "") or "").split("; ") if part]
    if len(parts) < 2:
        return f"{r.minutes_per_run:.1f}{_on_gpu(r.device)}"
    labels = {"cpu": " (CPU)", "unknown": " (device unknown)"}
    return " / ".join(f"{m}{_on_gpu(device) or labels.get(device, f' ({device})')}" for device, m in parts)


def format_p(p: float) -> str:
    """A p-value for the markdown: three decimals, "<0.001" below that, "–" where there is no test."""
    return "–" if pd.isna(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def format_mean_std(mean: float, std: float, n: int) -> str:
    """clrun's side of a comparison cell: mean ± std over n seeds; one seed has no std to show."""
    return f"{mean:.2f} ({n})" if pd.isna(std) else f"{mean:.2f} ± {std:.2f} ({n})"


def format_differs(p_holm: float, alpha: float = 0.05) -> str:
    """Whether a cell's mean differs from the paper's at level alpha after the Holm adjustment."""
    return "–" if pd.isna(p_holm) else "**yes**" if p_holm < alpha else "no"


def markdown_table(frame: pd.DataFrame) -> str:
    """The comparison as a README-ready table."""
    lines = ["| protocol | method | scenario | buffer | paper | clrun (mean ± std, n) | diff | within "
             "| p (Welch) | differs (Holm 5%) | forgetting: paper / clrun | min/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        fgt = "–"
        if pd.notna(r.paper_forgetting):
            fgt = (f"{r.paper_forgetting:.2f} ± {r.paper_forgetting_spread:.3f} / "
                   f"{r.clrun_forgetting:.3f} ± {r.clrun_forgetting_std:.3f}")
        paper = f"{r.paper_ACC:.2f} ± {r.paper_spread}" if r.paper_spread else f"{r.paper_ACC:.2f} (no spread)"
        within = "–" if pd.isna(r.within_paper_std) else "yes" if r.within_paper_std else "**no**"
        lines.append(f"| {r.protocol} | {r.method} | {r.scenario} | {r.buffer} | {paper} "
                     f"| {format_mean_std(r.clrun_ACC, r.clrun_std, r.n)} | {r.diff:+.2f} | "
                     f"{within} | {format_p(r.p_value)} | {format_differs(r.p_holm)} | {fgt} | {_minutes_cell(r)} |")
    return "\n".join(lines)


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, summarise (and plot) its sweep directory."""

    outcome: dict[str, int] | None = None  # the last sweep's job statuses, for the exit code of ``clrun -m``

    def __init__(self, plots: bool = True):
        self.plots = plots

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        summary, _ = write_summaries(sweep_dir)
        counts = summary.status.value_counts().to_dict()
        SweepSummary.outcome = {str(k): int(v) for k, v in counts.items()}
        print(table(by_config(summary)))
        print(f"clrun: {len(summary)} jobs ({', '.join(f'{v} {k}' for k, v in counts.items())}); summaries in "
              f"{sweep_dir}")
        if self.plots and bool(config.get("plots", True)):
            from clrun import plots

            plots.plot_dir(sweep_dir)


_SHOW = ["ACC_mean", "ACC_ci95", "forgetting_mean", "BWT_mean", "train_seconds_mean"]


def report_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clrun-report", description="Summarise run/sweep directories from their CSVs.")
    p.add_argument("dirs", nargs="+", help="run or sweep directories (several are put side by side)")
    p.add_argument("-o", "--out", help="where to write summary.csv and summary_by_config.csv "
                   "(default: the directory, when there is one)")
    p.add_argument("--compare-paper", action="store_true",
                   help="runs of published presets (paper=...): the paper's number next to clrun's, per cell "
                        "(compare_paper.csv and a markdown table)")
    a = p.parse_args(argv)
    if len(a.dirs) > 1 and not a.out:
        p.error("with several directories, say where the combined summary goes: -o DIR")
    try:
        summary, grouped = write_summaries(*a.dirs, out=a.out)
    except FileNotFoundError as err:
        print(f"clrun-report: error: {err}", file=sys.stderr)
        return 2
    counts = summary.status.value_counts().to_dict()
    print(f"{len(summary)} jobs ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    if a.compare_paper:
        paper = compare_paper(summary)
        io.atomic_write_csv(Path(a.out or a.dirs[0]) / COMPARE_FILE, paper)
        if paper.empty:
            print("no completed run of a preset with published results (clrun -m paper=PAPER/PRESET)")
            return 1
        print(markdown_table(paper))
    elif not grouped.empty:
        print(table(grouped))
    return 0


def select_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clrun-select",
                                description="Per method, the best-ACC setting with forgetting under a tolerance.")
    p.add_argument("dirs", nargs="+", help="sweep or run directories (their runs are pooled)")
    p.add_argument("--max-forgetting", type=float, required=True,
                   help="the tolerance: only configurations whose mean forgetting is at most this are chosen from")
    p.add_argument("-o", "--out", help="where selection.csv goes (default: the first directory)")
    a = p.parse_args(argv)
    try:
        _, grouped = write_summaries(*a.dirs, out=a.out)
    except FileNotFoundError as err:
        print(f"clrun-select: error: {err}", file=sys.stderr)
        return 2
    front = pareto_front(*a.dirs)
    if not front.empty:
        print(f"Pareto front of the Optuna study ({len(front)} solutions, ACC up, forgetting down):")
        print(front.sort_values("forgetting").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    best = select(grouped, a.max_forgetting)
    io.atomic_write_csv(Path(a.out or a.dirs[0]) / SELECTION_FILE, best)
    if best.empty:
        print(f"no setting has mean forgetting <= {a.max_forgetting}")
        return 1
    print(table(best, varying(grouped) or ["method"]))
    return 0
