"""Throughput of a sweep's seeds: one after another (the basic launcher), two processes side by side (joblib) and
as one stacked model (``hydra/launcher=stacked``), each the whole ``clrun -m ... seed=0,...,N-1`` command.

    CLRUN_DATA=DIR python scripts/speed/seeds.py [--seeds 10] [--protocols der_seq_mnist,permuted_mnist]

Run it alone: the three modes of a protocol run one after the other on the same machine. Writes
results/speed/seeds.csv: wall seconds of the command, runs per hour, the speed-up over the sequential sweep,
the process's peak memory and the peak per seed (stacked: the process's peak over the seeds it holds), and the
mean ACC, which must be the same in every mode.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[2] / "results" / "speed" / "seeds.csv"
PROTOCOLS = {
    # the DER paper's Seq-MNIST (class-IL, MLP 100-100, batch 10), ER at buffer 200 with its settings
    "der_seq_mnist": ["paper=der2020/seq_mnist_buffer", "method=er", "buffer=200"],
    # clrun's default permuted MNIST (5 tasks, MLP 400-400, batch 128), naive fine-tuning
    "permuted_mnist": ["benchmark=permuted_mnist", "method=naive"],
}
CORES = os.cpu_count() or 1
MODES = {
    "sequential": [f"threads={CORES}"],
    "joblib": ["threads=1", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={CORES}"],
    "stacked": [f"threads={CORES}", "hydra/launcher=stacked"],
}


def sweep(protocol: list[str], mode: list[str], seeds: int, where: Path) -> tuple[float, pd.DataFrame]:
    cmd = [sys.executable, "-m", "clrun.app", "-m", *protocol, *mode, f"seed={','.join(map(str, range(seeds)))}",
           "quiet=true", "plots=false", "checkpoint=false", f"hydra.sweep.dir={where}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return wall, pd.concat([pd.read_csv(m) for m in where.glob("*/metrics.csv")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    a = ap.parse_args()
    rows = []
    for name in a.protocols.split(","):
        for mode, extra in MODES.items():
            with tempfile.TemporaryDirectory() as d:
                wall, runs = sweep(PROTOCOLS[name], extra, a.seeds, Path(d) / "sweep")
            stacked = int(runs.stacked_seeds.max())
            rows.append({"protocol": name, "method": runs.method.iloc[0], "mode": mode, "seeds": len(runs),
                         "settings": " ".join(extra), "wall_s": wall, "runs_per_hour": 3600 * len(runs) / wall,
                         "peak_rss_mb": runs.peak_rss_mb.max(),
                         "peak_rss_mb_per_seed": runs.peak_rss_mb.max() / stacked,
                         "ACC_mean": runs.ACC.mean(), "completed": int((runs.status == "completed").sum())})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    base = table[table["mode"] == "sequential"].set_index("protocol").wall_s
    table["speedup"] = [base[p] / w for p, w in zip(table.protocol, table.wall_s)]
    table.to_csv(OUT, index=False, float_format="%.4g")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
