"""Plots made from the CSVs only (R.csv for a run; summary_by_config.csv for a sweep). ``clrun-plot DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clrun import io  # noqa: E402
from clrun.metrics import LOWER_IS_BETTER  # noqa: E402
from clrun.report import BY_CONFIG_FILE, OVERRIDE_PREFIX, STATUS_COUNTS, varying, write_summaries  # noqa: E402


def _run_title(run_dir: Path) -> str:
    """'method on benchmark (scenario)' from metrics.csv, else the directory's name."""
    f = run_dir / io.METRICS_FILE
    if f.exists():
        m = pd.read_csv(f).iloc[0]
        reg = f"+{m['regularizers']}" if isinstance(m.get("regularizers"), str) and m["regularizers"] else ""
        data = f", data: {m['data_source']}" if str(m.get("data_source")) == "embedded-5k" else ""
        return f"{m['method']}{reg} on {m['benchmark']} ({m['scenario']}), seed {m['seed']}{data}"
    return run_dir.name


def _measure(run_dir: Path) -> str:
    """What the run's R holds (metrics.csv's measure): accuracy, or mse for a regression stream."""
    f = run_dir / io.METRICS_FILE
    measure = pd.read_csv(f).iloc[0].get("measure") if f.exists() else None
    return measure if isinstance(measure, str) else "accuracy"


MEASURE_LABELS = {"accuracy": "accuracy", "mse": "mean squared error"}


def _lower(by_cfg: pd.DataFrame) -> bool:
    """Whether a sweep's ACC is an error (every run on a regression stream): its axes are then not [0, 1]."""
    return "measure" in by_cfg and by_cfg["measure"].isin(LOWER_IS_BETTER).all() and len(by_cfg) > 0


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    io.atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=120, format="png"))  # a kill mid-write leaves no half PNG
    plt.close(fig)
    return path


def plot_R(run_dir: str | Path) -> Path:
    return _save(figure_R(run_dir), Path(run_dir) / "R.png")


def figure_R(run_dir: str | Path):
    """R as an annotated heatmap; outlined: just learned (diagonal), read by FWT (the task before it is
    trained, against row init) and by BWT (the last row)."""
    run_dir = Path(run_dir)
    R = pd.read_csv(run_dir / io.R_FILE, index_col=0)
    M = R.to_numpy(dtype=float)
    T = M.shape[1]
    measure = _measure(run_dir)
    lower = measure in LOWER_IS_BETTER  # an error: dark is high, the scale is the run's own
    top = float(np.nanmax(M)) if lower and np.isfinite(M).any() else 1.0
    fig, ax = plt.subplots(figsize=(1.1 * T + 3.2, 0.8 * (T + 1) + 1.6))
    im = ax.imshow(M, cmap="viridis_r" if lower else "viridis", vmin=0, vmax=top, aspect="auto")
    for i in range(T + 1):
        for j in range(T):
            if not np.isnan(M[i, j]):
                dark = M[i, j] > 0.4 * top if lower else M[i, j] < 0.6
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")

    def box(i, j, color, style):
        ax.add_patch(mpatches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=color, lw=2.2, ls=style))

    for j in range(T):
        box(j + 1, j, "white", "-")  # R_{j,j}: accuracy right after learning task j
    for j in range(1, T):
        box(j, j, "tab:orange", "--")  # R_{j-1,j}: FWT, against b_j in row init
        box(0, j, "tab:orange", ":")
    for j in range(T - 1):
        box(T, j, "tab:red", "--")  # R_{T,j}: BWT
    ax.set_xticks(range(T), R.columns, rotation=30 if T > 6 else 0)
    ax.set_yticks(range(T + 1), R.index)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("model after")
    ax.set_title(f"{'Error' if lower else 'Accuracy'} matrix R: {_run_title(run_dir)}", fontsize=10)
    handles = [mpatches.Patch(fill=False, edgecolor=c, ls=s, lw=2, label=lbl) for c, s, lbl in
               [("gray", "-", "just learned (R_jj)"), ("tab:orange", "--", "FWT: before training (vs init)"),
                ("tab:red", "--", "BWT: after the last task")]]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    fig.colorbar(im, ax=ax, label=MEASURE_LABELS.get(measure, measure))
    return fig


def plot_task_curves(run_dir: str | Path) -> Path:
    return _save(figure_task_curves(run_dir), Path(run_dir) / "task_accuracy.png")


def figure_task_curves(run_dir: str | Path):
    """Accuracy of each task as the stream goes on: the walk out of each task's basin."""
    run_dir = Path(run_dir)
    R = pd.read_csv(run_dir / io.R_FILE, index_col=0)
    T = R.shape[1]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.arange(T + 1)
    for j, col in enumerate(R.columns):
        ax.plot(x, R[col].to_numpy(), marker="o", ms=3, label=col.replace("_", " "))
        ax.axvline(j + 1, color="gray", lw=0.4, alpha=0.4)
    ax.set_xticks(x, ["init"] + [str(i) for i in range(1, T + 1)])
    ax.set_xlabel("tasks trained")
    measure = _measure(run_dir)
    label = MEASURE_LABELS.get(measure, measure)
    ax.set_ylabel(label)
    if measure not in LOWER_IS_BETTER:
        ax.set_ylim(0, 1.02)
    ax.set_title(f"{label.capitalize()} of each task over the stream\n{_run_title(run_dir)}", fontsize=10)
    ax.legend(fontsize=8, ncol=2 if T > 6 else 1, loc="upper left" if measure in LOWER_IS_BETTER else "lower left")
    return fig


def plot_loss(run_dir: str | Path) -> Path:
    return _save(figure_loss(run_dir), Path(run_dir) / "loss.png")


def figure_loss(run_dir: str | Path):
    """The training loss across the stream, from log.csv: its every-log_every-steps rows (the epoch rows when a
    run logged none), tasks side by side; the running training accuracy beside it."""
    run_dir = Path(run_dir)
    log = pd.read_csv(run_dir / io.LOG_FILE)
    if "kind" in log and (log["kind"] == "interval").any():
        log = log[log["kind"] == "interval"]
    elif "kind" in log:
        log = log[log["kind"] == "epoch"]
    if "step" not in log or log["step"].isna().all():  # a log from before the step column: epochs in order
        log = log.assign(step=log.groupby("task")["steps"].cumsum())
    offsets = log.groupby("task")["step"].max().cumsum().shift(fill_value=0)
    x = log["step"] + log["task"].map(offsets)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    running = f"running training {MEASURE_LABELS.get(_measure(run_dir), 'accuracy')}"
    for ax, column, label in ((ax1, "loss", "training loss"), (ax2, "train_acc", running)):
        for t, rows in log.groupby("task"):
            ax.plot(x[rows.index], rows[column], lw=1.2, marker="." if len(rows) < 30 else None, label=f"task {t}")
        for off in offsets:
            if off:
                ax.axvline(off, color="gray", lw=0.5, alpha=0.5)
        ax.set_xlabel("training step (tasks in sequence)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.set_title("Training loss across the stream", fontsize=10)
    ax2.set_title(running.capitalize(), fontsize=10)
    ax1.legend(fontsize=8, ncol=2 if len(offsets) > 6 else 1)
    fig.suptitle(_run_title(run_dir), fontsize=9)
    return fig


def _axes_text(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def plot_interference(run_dir: str | Path) -> Path:
    return _save(figure_interference(run_dir), Path(run_dir) / "interference.png")


def figure_interference(run_dir: str | Path):
    """From interference.csv: the old/new gradient cosine over each new task's steps, one line per old task;
    and the first-order predicted old-task loss changes against the observed ones."""
    run_dir = Path(run_dir)
    df = pd.read_csv(run_dir / io.INTERFERENCE_FILE)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    steps_per_task = df.groupby("task")["step"].max().cumsum().shift(fill_value=0)  # tasks side by side
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, g in df.groupby("old_task"):
        for t, gt in g.groupby("task"):
            ax1.plot(gt["step"] + steps_per_task[t], gt["cosine"], color=colors[(k - 1) % len(colors)], lw=1.2,
                     label=f"old task {k}" if t == g["task"].min() else None)
    for t, off in steps_per_task.items():
        ax1.axvline(off, color="gray", lw=0.5, alpha=0.5)
        ax1.text(off, 1.0, f" task {t}", transform=ax1.get_xaxis_transform(), fontsize=7, va="top")
    ax1.axhline(0, color="black", lw=0.6)
    _axes_text(ax1, "training step (tasks 2.. in sequence)", "cos(g_old, g_new)",
               "Gradient interference with each old task")
    lim = np.nanmax(np.abs(df[["predicted_dloss", "linearised_dloss", "observed_dloss"]].to_numpy())) * 1.05
    ax2.plot([-lim, lim], [-lim, lim], color="gray", lw=0.8, ls="--", label="y = x")
    ax2.scatter(df["observed_dloss"], df["predicted_dloss"], s=12, label="-lr sum g_old . g_new")
    ax2.scatter(df["observed_dloss"], df["linearised_dloss"], s=12, marker="x", label="g_old . (actual update)")
    _axes_text(ax2, "observed old-task loss change since the task began", "first-order prediction",
               "Predicted vs observed forgetting (loss)")
    fig.suptitle(_run_title(run_dir), fontsize=9)
    return fig


def plot_spectrum(run_dir: str | Path) -> Path:
    return _save(figure_spectrum(run_dir), Path(run_dir) / "spectrum.png")


def figure_spectrum(run_dir: str | Path):
    """From spectrum.csv / spectrum_layers.csv: the top-k Fisher eigenvalues after each task (log scale), and
    each layer's share of the top-k eigenvector mass."""
    run_dir = Path(run_dir)
    df = pd.read_csv(run_dir / io.SPECTRUM_FILE)
    layers = pd.read_csv(run_dir / io.SPECTRUM_LAYERS_FILE)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    for t, g in df.groupby("after_task"):
        share = g["topk_share"].iloc[0]
        ax1.semilogy(g["index"], g["eigenvalue"], marker="o", ms=3,
                     label=f"after task {t} (top-k: {share:.0%} of tr F)")
    _axes_text(ax1, "eigenvalue index", "Fisher eigenvalue", "Top-k Fisher spectrum of each task")
    pivot = layers.pivot(index="after_task", columns="layer", values="mass_share").fillna(0)
    bottom = np.zeros(len(pivot))
    for layer in pivot.columns:
        ax2.bar(pivot.index.astype(str), pivot[layer], bottom=bottom, label=layer)
        bottom += pivot[layer].to_numpy()
    _axes_text(ax2, "after task", "share of top-k eigenvector mass", "Where the sharp directions live")
    fig.suptitle(_run_title(run_dir), fontsize=9)
    return fig


REPLAY_SAMPLES = "replay_samples"


def plot_replay_samples(run_dir: str | Path) -> Path:
    return _save(figure_replay_samples(run_dir), Path(run_dir) / f"{REPLAY_SAMPLES}.png")


def figure_replay_samples(run_dir: str | Path):
    """From replay_samples.npz: one row per task, the generator's samples after it (what the next task replays),
    each titled with the unit the classifier of that moment gives it."""
    run_dir = Path(run_dir)
    arrays = io.read_arrays(run_dir, REPLAY_SAMPLES)
    samples, units = arrays["samples"], arrays["units"]  # [tasks, n, *input shape], [tasks, n]
    n_tasks, n = samples.shape[:2]
    fig, axes = plt.subplots(n_tasks, n, figsize=(0.8 * n + 1.0, 0.95 * n_tasks + 0.8), squeeze=False)
    for t in range(n_tasks):
        for i in range(n):
            img = samples[t, i]
            if img.ndim == 3 and img.shape[0] == 3:  # colour: channels last, each image scaled to [0, 1]
                img = np.moveaxis(img, 0, -1)
                img = (img - img.min()) / max(float(np.ptp(img)), 1e-12)
            else:
                img = img.reshape(img.shape[-2:]) if img.ndim >= 2 and img.shape[0] == 1 else img.reshape(1, -1)
            ax = axes[t, i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, aspect="auto" if img.shape[0] == 1 else "equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{units[t, i]}", fontsize=7, pad=2)
            if i == 0:
                ax.set_ylabel(f"after {t + 1}", fontsize=8)
    fig.suptitle(f"Generated replay (title: the classifier's unit)\n{_run_title(run_dir)}", fontsize=9)
    return fig


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _label(row: pd.Series, keys: list[str]) -> str:
    """``method=er scenario=class_il buffer=200``: the settings that vary among the configurations plotted."""
    parts = []
    for k in keys or ["method"]:
        v = row.get(k)
        if v in ("", None) or (isinstance(v, float) and np.isnan(v)):
            continue
        parts.append(f"{k.removeprefix(OVERRIDE_PREFIX)}={_value(v)}")
    return " ".join(parts) or str(row.get("method", ""))


def _not_completed(row: pd.Series) -> str:
    """``2 diverged, 1 failed``: the runs of a configuration missing from its mean."""
    return ", ".join(f"{int(row[c])} {c.removeprefix('n_')}" for c in STATUS_COUNTS
                     if c != "n_completed" and c in row and row[c] > 0)


def plot_vs(by_cfg: pd.DataFrame, key: str, out: Path, metrics: tuple[str, ...], log_x: bool) -> Path:
    return _save(figure_vs(by_cfg, key, metrics, log_x), out)


def figure_vs(by_cfg: pd.DataFrame, key: str, metrics: tuple[str, ...], log_x: bool):
    """Metric(s) against ``key`` (lam or buffer), one line per configuration of the other varied settings,
    95% CI as error bars where a point pools two or more seeds."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), squeeze=False)
    numeric = pd.to_numeric(by_cfg[key], errors="coerce").notna()
    data = by_cfg[numeric & (by_cfg["n"] > 0)].copy()
    data[key] = pd.to_numeric(data[key])
    lost = pd.to_numeric(by_cfg.loc[numeric & (by_cfg["n"] == 0), key])  # every run failed or diverged
    lines = [k for k in varying(by_cfg) if k not in (key, OVERRIDE_PREFIX + key)] or ["method"]
    for ax, metric in zip(axes[0], metrics):
        for _, grp in data.groupby(lines, sort=True):
            grp = grp.sort_values(key)
            mean, ci = grp[f"{metric}_mean"], grp[f"{metric}_ci95"].where(grp["n"] >= 2, 0).fillna(0)
            if metric in ("ACC", "forgetting") and not _lower(by_cfg):  # past [0, 1] says nothing more
                yerr = [np.minimum(ci, mean - min(0.0, mean.min())), np.minimum(ci, 1.0 - mean)]
            else:
                yerr = ci
            n = "/".join(sorted({str(int(v)) for v in grp["n"]}))
            ax.errorbar(grp[key], mean, yerr=yerr, marker="o", capsize=3, alpha=0.85,
                        label=f"{_label(grp.iloc[0], lines)} (n={n})")
        if len(lost):  # at the axis' foot, in data coordinates so that the x range takes them in
            low = ax.get_ylim()[0]
            ax.plot(lost, [low] * len(lost), "x", color="tab:red", ms=8, clip_on=False, zorder=3,
                    label=f"{key} with no completed run ({len(lost)})")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(key + (" (log scale)" if log_x else " (samples)"))
        ax.set_ylabel(f"{metric} (mean over seeds{'; MSE: lower is better' if _lower(by_cfg) else ''})")
        ax.set_title(f"{metric} vs {key} (95% CI where n >= 2)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_methods(by_cfg: pd.DataFrame, out: Path) -> Path:
    return _save(figure_methods(by_cfg), out)


def figure_methods(by_cfg: pd.DataFrame):
    """Mean ACC and forgetting per configuration, labelled by the settings that vary, with n; 95% CI error
    bars where n >= 2; a configuration whose runs did not all complete is marked, and kept when none did."""
    keys = varying(by_cfg)
    labels = []
    for _, r in by_cfg.iterrows():
        missing = _not_completed(r)
        labels.append(f"{_label(r, keys)} (n={int(r['n'])}{'; ' + missing if missing else ''})")
    y = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(labels) + 1.8), sharey=True)
    for ax, metric, color in zip(axes, ("ACC", "forgetting"), ("tab:blue", "tab:red")):
        mean = by_cfg[f"{metric}_mean"]
        ci = by_cfg[f"{metric}_ci95"].where(by_cfg["n"] >= 2).fillna(0)
        ax.barh(y, mean.fillna(0), color=color, alpha=0.75)
        pooled = (by_cfg["n"] >= 2).to_numpy()
        if pooled.any():  # a seed alone has no interval: no bar rather than a bar of zero width
            ax.errorbar(mean[pooled], y[pooled], xerr=ci[pooled], fmt="none", ecolor="black", capsize=3)
        for i in np.flatnonzero(mean.isna().to_numpy()):
            ax.text(0.01, y[i], "no completed run", va="center", fontsize=8, color="black")
        lower = _lower(by_cfg)
        ax.set_xlabel(f"{metric} (mean over seeds; 95% CI where n >= 2{'; MSE: lower is better' if lower else ''})")
        low = float(mean.min()) if mean.notna().any() else 0.0
        high = float((mean + ci).max()) * 1.05 if lower and mean.notna().any() else 1.0  # an error has no ceiling
        ax.set_xlim(min(0.0, low - 0.05), high)  # accuracy: CI beyond [0, 1] is clipped
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    for tick, (_, r) in zip(axes[0].get_yticklabels(), by_cfg.iterrows()):
        if _not_completed(r):
            tick.set_color("tab:red")
    axes[0].invert_yaxis()
    sources = sorted({str(v) for v in by_cfg.get("data_source", pd.Series(dtype=str)) if str(v) not in ("", "nan")})
    fig.suptitle("Method comparison" + (f" (data: {', '.join(sources)})" if sources else ""))
    return fig


def plot_dir(path: str | Path) -> list[Path]:
    """Every plot that applies to ``path``: a run directory, a sweep directory, or a folder of runs."""
    path = Path(path)
    made: list[Path] = []
    if (path / io.R_FILE).exists():
        made += [plot_R(path), plot_task_curves(path)]
    if (path / io.LOG_FILE).exists() and len(pd.read_csv(path / io.LOG_FILE)):
        made.append(plot_loss(path))
    if (path / io.INTERFERENCE_FILE).exists() and len(pd.read_csv(path / io.INTERFERENCE_FILE)):
        made.append(plot_interference(path))
    if (path / io.SPECTRUM_FILE).exists() and len(pd.read_csv(path / io.SPECTRUM_FILE)):
        made.append(plot_spectrum(path))
    if (path / f"{REPLAY_SAMPLES}.npz").exists():
        made.append(plot_replay_samples(path))
    if not (path / BY_CONFIG_FILE).exists() and any(path.glob(f"*/{io.METRICS_FILE}")):
        write_summaries(path)
    if (path / BY_CONFIG_FILE).exists():
        by_cfg = pd.read_csv(path / BY_CONFIG_FILE)
        if not by_cfg.empty:
            made.append(plot_methods(by_cfg, path / "methods.png"))
            for key, log_x in (("lam", True), ("buffer", False)):
                if key in by_cfg and pd.to_numeric(by_cfg[key], errors="coerce").nunique() > 1:
                    metrics = ("ACC", "forgetting") if key == "lam" else ("ACC",)
                    made.append(plot_vs(by_cfg, key, path / f"{key}.png", metrics, log_x))
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clrun-plot", description="Plot a run or sweep directory from its CSVs.")
    p.add_argument("dirs", nargs="+", help="run or sweep directories; each gets the plots its CSVs allow")
    a = p.parse_args(argv)
    for d in a.dirs:
        if not Path(d).is_dir():
            print(f"clrun-plot: error: {d} is not a directory", file=sys.stderr)
            return 2
        for f in plot_dir(d):
            print(f)
    return 0
