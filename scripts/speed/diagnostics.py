"""The cost of the diagnostics: permuted MNIST (5 tasks, naive, the defaults), without and with
``diagnostics.interference`` / ``diagnostics.spectrum``, median of ``--reps`` runs of each, as a ratio.

    CLRUN_DATA=DIR python scripts/speed/diagnostics.py --reps 2
Writes results/speed/diagnostics.csv."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

VARIANTS = {
    "none": [],
    "interference": ["diagnostics.interference=true"],
    "spectrum": ["diagnostics.spectrum=true"],
    "both": ["diagnostics.interference=true", "diagnostics.spectrum=true"],
}


def one_run(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "clrun.app", "quiet=true", "plots=false", "checkpoint=false",
                        "benchmark=permuted_mnist", "method=naive", f"hydra.run.dir={d}", *extra], check=True)
        wall = time.perf_counter() - t0
        m = pd.read_csv(Path(d) / "metrics.csv").iloc[0]
        return {"wall": wall, "train": float(m["train_seconds"])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args()
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(a.reps):  # interleaved, so drift in the machine's speed hits every variant alike
        for name, extra in VARIANTS.items():
            runs[name].append(one_run(extra))
    base = {k: statistics.median(r[k] for r in runs["none"]) for k in ("wall", "train")}
    rows = []
    for name in VARIANTS:
        wall = statistics.median(r["wall"] for r in runs[name])
        train = statistics.median(r["train"] for r in runs[name])
        rows.append({"diagnostics": name, "wall_s": round(wall, 1), "train_s": round(train, 1),
                     "wall_ratio": round(wall / base["wall"], 2), "train_ratio": round(train / base["train"], 2),
                     "reps": a.reps})
    df = pd.DataFrame(rows)
    df.to_csv(Path(__file__).resolve().parents[2] / "results" / "speed" / "diagnostics.csv", index=False)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
