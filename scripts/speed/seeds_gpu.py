"""Seeds on one GPU: N seeds of one cell of van de Ven's permuted MNIST (``paper=vandeven2019/perm_mnist``)
trained as stacked models (``hydra/launcher=stacked``, ``--stacks`` processes) against N processes side by
side, one seed each, under CUDA MPS when its daemon can be started (as the preset's cells were run before:
``scripts/device/gpu_cells.sh``). Each mode is the whole command, from start to its last run's files. For a
machine with a GPU:

    CLRUN_DATA=DIR python scripts/speed/seeds_gpu.py [--seeds 15] [--cell naive,domain_il] [--stacks 1,2]

Writes results/speed/seeds_gpu.csv: wall seconds, runs per hour, the speed-up over the processes, the device's
peak memory per seed (``peak_device_mb / stacked_seeds``; for the processes, each one's own), and the mean ACC
(the same in every mode up to GPU rounding). ``--device cpu --extra "iters=20 benchmark.n_tasks=2" --seeds 3
--out /tmp/x.csv`` checks the script itself on a CPU. On a lent machine without clrun's dependencies or MNIST,
bring them as scripts/device/gpu_cells.sh says.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[2] / "results" / "speed" / "seeds_gpu.csv"
CLRUN = [sys.executable, "-m", "clrun.app"]
QUIET = ["quiet=true", "plots=false", "checkpoint=false", "threads=1"]


def start_mps(where: Path) -> dict | None:
    """The environment of a CUDA MPS daemon started for this benchmark, or None when it cannot be started."""
    if shutil.which("nvidia-cuda-mps-control") is None:
        return None
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(where / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(where / "log")}
    for d in ("pipe", "log"):
        (where / d).mkdir(parents=True, exist_ok=True)
    started = subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, capture_output=True, text=True)
    return env if started.returncode == 0 else None


def stop_mps(env: dict | None) -> None:
    if env is not None:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", env=env, capture_output=True, text=True)


def processes(cell: list[str], seeds: int, where: Path, env: dict) -> float:
    """N single-seed runs started together; the seconds until the last has written its files."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*CLRUN, *cell, f"seed={s}", *QUIET, f"hydra.run.dir={where / f'seed_{s}'}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for s in range(seeds)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    failed = [e for p, e in zip(procs, errors) if p.returncode != 0]
    if failed:
        raise SystemExit(f"seeds_gpu.py: {len(failed)} of {seeds} processes failed; the first said:\n{failed[0]}")
    return wall


def stacked(cell: list[str], seeds: int, stacks: int, where: Path, env: dict) -> float:
    """One ``clrun -m ... hydra/launcher=stacked`` command over the N seeds in ``stacks`` worker processes."""
    cmd = [*CLRUN, "-m", *cell, f"seed={','.join(map(str, range(seeds)))}", *QUIET, "hydra/launcher=stacked",
           f"hydra.launcher.max_seeds={seeds}", f"hydra.launcher.n_jobs={stacks}", f"hydra.sweep.dir={where}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=15)
    ap.add_argument("--cell", default="naive,domain_il", help="METHOD,SCENARIO of the preset")
    ap.add_argument("--stacks", default="1,2", help="worker processes of the stacked launcher, one mode each")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--extra", default="", help="more overrides, for every mode")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    method, scenario = a.cell.split(",")
    cell = ["paper=vandeven2019/perm_mnist", f"method={method}", f"scenario={scenario}", f"device={a.device}",
            *a.extra.split()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mps = start_mps(tmp / "mps") if a.device.startswith("cuda") else None
        try:
            env = mps or dict(os.environ)
            modes = [("processes", "MPS" if mps else "no MPS", lambda d: processes(cell, a.seeds, d, env))]
            modes += [(f"stacked_{k}", f"hydra/launcher=stacked hydra.launcher.n_jobs={k}",
                       lambda d, k=int(k): stacked(cell, a.seeds, k, d, env)) for k in a.stacks.split(",")]
            for mode, settings, go in modes:
                where = tmp / mode
                wall = go(where)
                runs = pd.concat([pd.read_csv(m) for m in where.glob("*/metrics.csv")])
                per_seed = (runs.peak_device_mb / runs.stacked_seeds).max() if "peak_device_mb" in runs else None
                rows.append({"cell": a.cell.replace(",", " "), "mode": mode, "seeds": len(runs), "settings": settings,
                             "wall_s": wall, "runs_per_hour": 3600 * len(runs) / wall,
                             "peak_device_mb_per_seed": per_seed, "ACC_mean": runs.ACC.mean(),
                             "completed": int((runs.status == "completed").sum()), "device": runs.device.iloc[0]})
                print(mode, f"{wall:.1f} s", flush=True)
        finally:
            stop_mps(mps)
    table = pd.DataFrame(rows)
    table["speedup"] = table.wall_s.iloc[0] / table.wall_s
    a.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out, index=False, float_format="%.4g")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
