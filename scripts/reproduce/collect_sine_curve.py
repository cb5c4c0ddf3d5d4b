"""Javed & White's Fig. 3 from clrun runs on the incremental sine waves (benchmark=sine): per method, the mean
squared error over the functions learnt so far after each function (Fig. 3a) and each function's error after
all of them (Fig. 3b), averaged over seeds, plus one summary row per method.

    python scripts/reproduce/collect_sine_curve.py SWEEP_OR_RUN_DIR... --out results/papers/javed2019

writes sine_curve.csv and sine_runs.csv there (render.py shows them on docs/reproductions/javed2019.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from clrun import io
from clrun.metrics import seen_average
from clrun.report import collect

LABELS = {"oml": "OML", "oml_pretrain": "Pre-training", "naive": "naive (no meta-training)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="directory for sine_curve.csv and sine_runs.csv")
    a = ap.parse_args(argv)
    runs = collect(*a.dirs)
    runs = runs[(runs.status == "completed") & (runs.benchmark == "sine")]
    if runs.empty:
        print("collect_sine_curve.py: no completed sine run below the directories given", file=sys.stderr)
        return 1
    curve, summary = {}, []
    for method, grp in runs.groupby("method", sort=False):
        Rs = [pd.read_csv(Path(d) / io.R_FILE, index_col=0).to_numpy(dtype=float) for d in grp.job_dir]
        label = LABELS.get(method, method)
        seeds = ",".join(str(int(s)) for s in sorted(grp.seed))
        curve[f"{label}: mean over functions 1..k"] = np.mean([seen_average(R) for R in Rs], axis=0)
        curve[f"{label}: function k after all"] = np.mean([R[-1] for R in Rs], axis=0)
        meta = pd.to_numeric(grp.get("meta_steps", pd.Series(dtype=float)), errors="coerce")
        summary.append({"method": label, "seeds": seeds, "meta_steps": "" if meta.isna().all() else int(meta.iloc[0]),
                        "final MSE (ACC)": f"{grp.ACC.mean():.3f} ± {grp.ACC.std(ddof=1):.3f}" if len(grp) > 1
                        else f"{grp.ACC.mean():.3f}",
                        "forgetting": f"{grp.forgetting.mean():.3f}", "BWT": f"{grp.BWT.mean():.3f}",
                        "meta-training min/run": _minutes(grp, "meta_train_seconds"),
                        "min/run": _minutes(grp, "wall_seconds"), "device": ", ".join(sorted(set(grp.device)))})
    frame = pd.DataFrame(curve).round(3)
    frame.insert(0, "k", np.arange(1, len(frame) + 1))
    a.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(a.out / "sine_curve.csv", index=False)
    pd.DataFrame(summary).to_csv(a.out / "sine_runs.csv", index=False)
    print(f"{a.out / 'sine_curve.csv'}, {a.out / 'sine_runs.csv'}: {len(runs)} runs")
    return 0


def _minutes(grp: pd.DataFrame, column: str) -> str:
    values = pd.to_numeric(grp.get(column, pd.Series(dtype=float)), errors="coerce")
    return "" if values.isna().all() else f"{values.mean() / 60:.1f}"


if __name__ == "__main__":
    sys.exit(main())
