"""Javed & White's Fig. 3 from clrun runs on the incremental sine waves (benchmark=sine): per method, the mean
squared error over the functions learnt so far after each function (Fig. 3a) and each function's error after
all of them (Fig. 3b), averaged over seeds, plus one summary row per method (and per number of meta steps).
Timings are left to scripts/speed/oml.py, which measures them alone.

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
    runs = runs.assign(meta_steps=pd.to_numeric(runs.get("meta_steps", np.nan), errors="coerce"))
    for (method, meta), grp in runs.groupby(["method", "meta_steps"], sort=False, dropna=False):
        Rs = [pd.read_csv(Path(d) / io.R_FILE, index_col=0).to_numpy(dtype=float) for d in grp.job_dir]
        lengths = {R.shape[1] for R in Rs} | {len(c) for c in curve.values()}
        if len(lengths) > 1:
            raise SystemExit("collect_sine_curve.py: the runs have different numbers of tasks; collect them apart")
        label = LABELS.get(method, method) + ("" if pd.isna(meta) else f", {int(meta)} meta steps")
        seeds = ",".join(str(int(s)) for s in sorted(grp.seed))
        curve[f"{label}: mean over functions 1..k"] = np.mean([seen_average(R) for R in Rs], axis=0)
        curve[f"{label}: function k after all"] = np.mean([R[-1] for R in Rs], axis=0)
        summary.append({"method": label, "seeds": seeds,
                        "final MSE (ACC)": f"{grp.ACC.mean():.3f} ± {grp.ACC.std(ddof=1):.3f}" if len(grp) > 1
                        else f"{grp.ACC.mean():.3f}",
                        "forgetting": f"{grp.forgetting.mean():.3f}", "BWT": f"{grp.BWT.mean():.3f}",
                        "learning accuracy (MSE just learnt)": f"{grp.learning_accuracy.mean():.3f}"})
    frame = pd.DataFrame(curve).round(3)
    frame.insert(0, "k", np.arange(1, len(frame) + 1))
    a.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(a.out / "sine_curve.csv", index=False)
    pd.DataFrame(summary).to_csv(a.out / "sine_runs.csv", index=False)
    print(f"{a.out / 'sine_curve.csv'}, {a.out / 'sine_runs.csv'}: {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
