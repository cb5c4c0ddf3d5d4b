"""The comparison tables of docs/results.md and docs/diagnostics.md from the runs of `mnist.sh fisher_forms`,
`mnist.sh adapters` and `mnist.sh diagnostics`: one row per benchmark, method and lam (mean ± std over the
seeds' metrics.csv), with a column that marks the lam each Fisher form prefers (best mean ACC); or, for the
diagnostics sweep, diagonal and low-rank EWC side by side per lam.

    python scripts/reproduce/collect_comparison.py fisher_forms outputs/readme/fisher_forms \
        results/mnist/fisher_forms.csv
    python scripts/reproduce/collect_comparison.py adapters outputs/readme/adapters results/mnist/adapters.csv
    python scripts/reproduce/collect_comparison.py lowrank_vs_diagonal outputs/readme/diagnostics/lowrank_vs_diagonal \
        results/diagnostics/lowrank_vs_diagonal.csv
    python scripts/reproduce/collect_comparison.py mer SWEEP results/papers/der2020/mer_seq_mnist.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from clrun import io


def runs(root: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(root.rglob("metrics.csv")):
        row = io.read_metrics(path.parent)
        if row and row.get("status") in ("completed", "diverged"):
            row["lr"] = OmegaConf.load(path.parent / "config.yaml").lr  # metrics.csv does not carry it
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame["lam"] = pd.to_numeric(frame.get("lam"), errors="coerce")
    return frame


def diverged(g: pd.DataFrame) -> str | None:
    """``diverged in task 5 (3 of 3 seeds)`` when no seed of a setting completed, else None."""
    if (g.status == "completed").any():
        return None
    return f"diverged in task {int(g.tasks_done.max()) + 1} ({len(g)} of {len(g)} seeds)"


def pm(values: pd.Series, digits: int) -> str:
    if len(values) == 1:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def fisher_forms(frame: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (bench, scenario, method, lam), g in frame.groupby(["benchmark", "scenario", "method", "lam"], dropna=False):
        stopped = diverged(g)
        n_diverged = int((g.status == "diverged").sum())
        g = g[g.status == "completed"]
        if stopped:
            out.append({"benchmark": bench, "scenario": scenario, "method": method, "lam": f"{lam:g}",
                        "seeds": 0, "ACC": stopped, "forgetting": "–", "acc_mean": float("nan"), "train s": "–",
                        "importance MB": "–"})
            continue
        out.append({"benchmark": bench, "scenario": scenario, "method": method,
                    "lam": "–" if pd.isna(lam) else f"{lam:g}",
                    "seeds": f"{len(g)} ({n_diverged} diverged)" if n_diverged else len(g), "ACC": pm(g.ACC, 4),
                    "forgetting": pm(g.forgetting, 4), "acc_mean": g.ACC.mean(),
                    "train s": f"{g.train_seconds.mean():.0f}",
                    "importance MB": "–" if "importance_bytes" not in g or g.importance_bytes.isna().all()
                    else f"{g.importance_bytes.mean() / 2**20:.1f}"})
    table = pd.DataFrame(out)
    best = table.loc[table.dropna(subset=["acc_mean"]).groupby(["benchmark", "method"]).acc_mean.idxmax()].index
    table["preferred lam"] = ["◀" if i in best and table.lam[i] != "–" else "" for i in table.index]
    return table.drop(columns="acc_mean")


def adapters(frame: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (bench, scenario, method, lr), g in frame.groupby(["benchmark", "scenario", "method", "lr"]):
        g = g[g.status == "completed"]
        added = g.get("adapter_parameters_per_task")
        head = g.get("head_parameters_per_task")
        per_task = "–" if added is None or added.isna().all() else f"{int(added.mean() + head.mean()):,}"
        inferred = g.get("task_inference_acc")
        # what a task adds to what is stored: its adapters and head rows, a PNN column (on average), a SupSup mask
        if per_task != "–":
            stored = g.added_bytes_per_task.mean()
        elif method == "pnn":
            stored = 4 * g.parameters.mean() / g.n_tasks.mean()
        elif method == "supsup":
            stored = g.mask_bits_per_task.mean() / 8
        else:
            stored = None
        out.append({"benchmark": bench, "scenario": scenario, "method": method, "lr": f"{lr:g}", "seeds": len(g),
                    "ACC": pm(g.ACC, 4), "forgetting": pm(g.forgetting, 4),
                    "parameters": f"{int(g.parameters.mean()):,}", "added per task": per_task,
                    "stored per task": "–" if stored is None else f"{stored / 1024:,.0f} KB",
                    "task inferred": "(given)" if scenario == "task_il" or inferred is None or inferred.isna().all()
                    else f"{100 * inferred.mean():.1f}%",
                    "train s": f"{g.train_seconds.mean():.0f}"})
    return pd.DataFrame(out)


def lowrank_vs_diagonal(frame: pd.DataFrame) -> pd.DataFrame:
    out = []
    for lam, g in frame.groupby("lam"):
        cells = {}
        for form, method in (("diagonal", "ewc"), ("low-rank", "ewc_lowrank")):
            run = g[g.method == method]
            done = run[run.status == "completed"]
            if done.empty:
                cells[form] = (f"diverged in task {int(run.tasks_done.max()) + 1}" if len(run) else "–", "–", "–", "–")
            else:
                cells[form] = (f"{done.ACC.mean():.4f}", f"{done.forgetting.mean():.4f}",
                               f"{done.train_seconds.mean():.1f}", f"{done.importance_bytes.mean() / 1e6:.0f} MB")
        d, r = cells["diagonal"], cells["low-rank"]
        out.append({"lam": f"{lam:g}", "diagonal ACC": d[0], "diagonal forgetting": d[1], "low-rank ACC": r[0],
                    "low-rank forgetting": r[1], "diagonal / low-rank train s": f"{d[2]} / {r[2]}",
                    "diagonal / low-rank memory": f"{d[3]} / {r[3]}"})
    return pd.DataFrame(out)


def mer(frame: pd.DataFrame) -> pd.DataFrame:
    """MER per buffer (and lr): ACC and forgetting in % as the paper tables print them, steps per example and the
    minutes a run took."""
    out = []
    for (buffer, lr), g in frame.groupby(["buffer", "lr"]):
        g = g[g.status == "completed"]
        out.append({"method": g.method.iloc[0], "buffer": int(buffer), "lr": f"{lr:g}", "seeds": len(g),
                    "ACC (%)": pm(100 * g.ACC, 2), "forgetting (%)": pm(100 * g.forgetting, 2),
                    "steps per example": int(g.steps_per_example.iloc[0]),
                    "minutes per run": f"{g.wall_seconds.mean() / 60:.1f}"})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=["fisher_forms", "adapters", "lowrank_vs_diagonal", "mer"])
    ap.add_argument("root", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    frame = runs(args.root)
    tables = {"fisher_forms": fisher_forms, "adapters": adapters, "lowrank_vs_diagonal": lowrank_vs_diagonal,
              "mer": mer}
    table = tables[args.table](frame)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
