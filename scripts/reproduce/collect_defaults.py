"""Collect the `defaults` sweeps of mnist.sh into one table (results/mnist/defaults.csv).

    python scripts/reproduce/collect_defaults.py outputs/readme/defaults results/mnist/defaults.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

COLUMNS = ["method", "lam", "online", "status", "ACC", "forgetting", "learning_accuracy",
           "penalty_unstable_fraction", "train_seconds"]


def collect(root: Path) -> pd.DataFrame:
    rows = []
    for metrics in sorted(root.glob("*/*/metrics.csv")):
        row = pd.read_csv(metrics).iloc[0].to_dict()
        cfg = OmegaConf.load(metrics.parent / "config.yaml")
        row["online"] = OmegaConf.select(cfg, "method.online", default=None)
        rows.append(row)
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return df.sort_values(["method", "online", "lam"], na_position="first").reset_index(drop=True)


if __name__ == "__main__":
    collect(Path(sys.argv[1])).to_csv(sys.argv[2], index=False, float_format="%.5g")
