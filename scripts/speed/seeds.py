"""Throughput of a sweep's seeds: one after another (the basic launcher), two processes side by side (joblib), as
one stacked model (``hydra/launcher=stacked``) and as one stacked model per core in as many processes
(``hydra.launcher.n_jobs``), each the whole ``clrun -m ... seed=0,...,N-1`` command.

    CLRUN_DATA=DIR python scripts/speed/seeds.py [--seeds 10] [--protocols der_seq_mnist,permuted_mnist,...]

Run it alone: the modes of a protocol run in turn on the same machine, ``--repeats`` times round robin, and
each keeps its fastest run. Writes results/speed/seeds.csv: wall seconds of the command (the fastest, and every
run's), runs per hour, the speed-up over the sequential sweep (threads = cores) and over the faster of the two
sequential sweeps (threads = cores, threads=1),
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
    # the same Seq-MNIST with SI (mammoth's settings): a regulariser whose hooks (closed-form penalty gradient,
    # clipping, path integral) run per seed in the stack
    "der_seq_mnist_si": ["paper=der2020/seq_mnist", "method=si"],
}
CORES = os.cpu_count() or 1
MODES = {
    "sequential": [f"threads={CORES}"],
    # at batch 10 one thread is faster than two: the speed-ups are also given over the faster of the two
    "sequential_1thread": ["threads=1"],
    "joblib": ["threads=1", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={CORES}"],
    "stacked": [f"threads={CORES}", "hydra/launcher=stacked"],
    # one stack per core, in as many processes
    "stacked_parallel": ["threads=1", "hydra/launcher=stacked", f"hydra.launcher.n_jobs={CORES}"],
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
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=2, help="runs of each mode, interleaved; the fastest is kept")
    a = ap.parse_args()
    rows = []
    for name in a.protocols.split(","):
        walls: dict[str, list[float]] = {}
        for _ in range(a.repeats):  # round robin: a slow spell of the machine hits every mode alike
            for mode in a.modes.split(","):
                extra = MODES[mode]
                with tempfile.TemporaryDirectory() as d:
                    wall, runs = sweep(PROTOCOLS[name], extra, a.seeds, Path(d) / "sweep")
                walls.setdefault(mode, []).append(wall)
                print(name, mode, f"{wall:.1f} s", flush=True)
                if len(walls[mode]) < a.repeats:
                    continue
                stacked = int(runs.stacked_seeds.max())
                best = min(walls[mode])
                rows.append({"protocol": name, "method": runs.method.iloc[0], "mode": mode, "seeds": len(runs),
                             "settings": " ".join(extra), "wall_s": best,
                             "wall_s_all": " ".join(f"{w:.1f}" for w in walls[mode]),
                             "runs_per_hour": 3600 * len(runs) / best, "peak_rss_mb": runs.peak_rss_mb.max(),
                             "peak_rss_mb_per_seed": runs.peak_rss_mb.max() / stacked,
                             "ACC_mean": runs.ACC.mean(), "completed": int((runs.status == "completed").sum())})
    table = pd.DataFrame(rows)
    sequential = table[table["mode"].str.startswith("sequential")]
    base = table[table["mode"] == "sequential"].set_index("protocol").wall_s
    fastest = sequential.groupby("protocol").wall_s.min()
    table["speedup"] = [base[p] / w if p in base else float("nan") for p, w in zip(table.protocol, table.wall_s)]
    table["speedup_over_fastest_sequential"] = [fastest[p] / w if p in fastest else float("nan")
                                                for p, w in zip(table.protocol, table.wall_s)]
    if OUT.exists():  # the protocols not run this time keep their rows
        kept = pd.read_csv(OUT)
        table = pd.concat([kept[~kept.protocol.isin(table.protocol)], table], ignore_index=True)
    table.to_csv(OUT, index=False, float_format="%.4g")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
