"""clrun's naive run against a hand-written PyTorch loop on the same stream.

    CLRUN_DATA=DIR python scripts/speed/yardstick.py [--reps 3]

Stream: permuted MNIST, 5 tasks (task 1 the identity), MLP 784-400-400-10, SGD lr 0.01, batch 128, one epoch per
task, every task evaluated after every task (and before the first). Both run as fresh processes, so wall time is
process start to exit. Writes results/speed/yardstick.csv (medians) and prints the ratios clrun / yardstick.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2] / "results" / "speed"
TASKS, BATCH, LR = 5, 128, 0.01


def yardstick(root: str, seed: int) -> dict:
    """The plain loop: tensors in memory, no framework. Prints its own train/eval seconds as JSON."""
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def idx(name: str) -> torch.Tensor:
        raw = Path(root, "MNIST", "raw", name).read_bytes()
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims).copy())

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255.0 - 0.1307) / 0.3081).flatten(1)

    x, y = norm(idx("train-images-idx3-ubyte")), idx("train-labels-idx1-ubyte").long()
    tx, ty = norm(idx("t10k-images-idx3-ubyte")), idx("t10k-labels-idx1-ubyte").long()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    perms = [torch.arange(784)] + [torch.randperm(784, generator=g) for _ in range(TASKS - 1)]
    model = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10))
    order_gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # plain SGD keeps no state: one serves every task
    train_s = eval_s = 0.0

    def evaluate() -> list[float]:
        model.eval()
        with torch.inference_mode():
            accs = [(model(tx[:, p]).argmax(1) == ty).float().mean().item() for p in perms]
        model.train()
        return accs

    t0 = time.perf_counter()
    R = [evaluate()]
    eval_s += time.perf_counter() - t0
    for p in perms:
        t0 = time.perf_counter()
        order = torch.randperm(len(y), generator=order_gen)
        for s in range(0, len(y), BATCH):
            i = order[s : s + BATCH]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i][:, p]), y[i]).backward()
            opt.step()
        train_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        R.append(evaluate())
        eval_s += time.perf_counter() - t0
    return {"train_seconds": train_s, "eval_seconds": eval_s, "ACC": sum(R[-1]) / TASKS,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def child(cmd: list[str], env: dict) -> tuple[float, str]:
    """Wall seconds of one fresh process (start to exit) and its stdout; each child reports its own peak RSS."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--yardstick", action="store_true", help=argparse.SUPPRESS)  # the child process
    a = ap.parse_args()
    root = os.environ.get("CLRUN_DATA")
    if not root:
        sys.exit("set CLRUN_DATA to a directory holding MNIST/raw")
    if a.yardstick:
        print(json.dumps(yardstick(root, 0)))
        return
    import pandas as pd
    import torch

    env = dict(os.environ)
    rows = []
    for rep in range(a.reps):
        # alternate the order so neither always runs on a warmer machine
        for which in (("yardstick", "clrun") if rep % 2 == 0 else ("clrun", "yardstick")):
            if which == "yardstick":
                wall, out = child([sys.executable, __file__, "--yardstick"], env)
                m = json.loads(out.strip().splitlines()[-1])
            else:
                with tempfile.TemporaryDirectory() as d:
                    wall, _ = child(["clrun", "quiet=true", "plots=false", "checkpoint=false", "lr=0.01",
                                          "batch_size=128", "epochs=1", "benchmark.n_tasks=5", "device=cpu",
                                          f"hydra.run.dir={d}"], env)
                    m = pd.read_csv(Path(d) / "metrics.csv").iloc[0].to_dict()
            rows.append({"runner": which, "rep": rep, "wall_seconds": wall, "train_seconds": m["train_seconds"],
                         "eval_seconds": m["eval_seconds"], "peak_rss_mb": m["peak_rss_mb"], "ACC": m["ACC"]})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    med = df.groupby("runner")[["wall_seconds", "train_seconds", "eval_seconds", "peak_rss_mb", "ACC"]].median()
    med.loc["ratio clrun/yardstick"] = med.loc["clrun"] / med.loc["yardstick"]
    med["eval_share_of_wall"] = med.eval_seconds / med.wall_seconds
    med.loc["ratio clrun/yardstick", "eval_share_of_wall"] = float("nan")
    med.to_csv(HERE / "yardstick.csv", float_format="%.4g")
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(med.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
