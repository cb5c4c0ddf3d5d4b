"""results/mnist/lambda_search.csv from the two sweeps of lambda_search.sh: one row per run, in the order
each search ran them (Hydra's job number), with its lam, status, ACC and forgetting.

    python scripts/reproduce/collect_lambda_search.py outputs/lambda_search
"""

import sys
from pathlib import Path

import pandas as pd
import yaml


def collect(out: Path) -> pd.DataFrame:
    rows = []
    for search in ("grid", "optuna"):
        for job in sorted((out / search).iterdir()):
            if not (job / "metrics.csv").exists():
                continue
            m = pd.read_csv(job / "metrics.csv").iloc[0]
            num = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"]
            overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
            rows.append({"search": search, "run": num + 1, "lam": float(overrides["lam"]), "status": m.status,
                         "ACC": m.ACC, "forgetting": m.forgetting})
    return pd.DataFrame(rows).sort_values(["search", "run"])


if __name__ == "__main__":
    frame = collect(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/lambda_search"))
    out = Path(__file__).resolve().parents[2] / "results" / "mnist" / "lambda_search.csv"
    frame.to_csv(out, index=False, float_format="%.6g")
    print(frame.to_string(index=False))
