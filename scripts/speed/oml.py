"""What OML's meta-training costs: naive, the Pre-training baseline and OML (first- and second-order) on Javed &
White's incremental sine waves (paper=javed2019/sine), each with ``--meta-steps`` meta steps, seed 0.

    python scripts/speed/oml.py [--meta-steps 5] [--reps 2] [--threads 2]

Per method: the stream's training seconds without meta-training (``train_seconds`` - ``meta_train_seconds``), the
seconds per meta step, the preset's 20,000 meta steps extrapolated, and both as ratios to naive's stream
training. Round robin over the methods, the fastest repetition kept. Writes results/speed/methods_oml.csv.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch

from clrun.app import compose
from clrun.run import run

OUT = Path(__file__).resolve().parents[2] / "results" / "speed" / "methods_oml.csv"
PRESET_META_STEPS = 20000
VARIANTS = {"naive": ["method=naive"], "oml_pretrain": ["method=oml_pretrain"], "oml": ["method=oml"],
            "oml_second_order": ["method=oml", "method.first_order=false"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta-steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    best: dict[str, dict] = {}
    for _ in range(a.reps):
        for name, overrides in VARIANTS.items():
            meta = [] if name == "naive" else [f"method.meta_steps={a.meta_steps}"]
            cfg = compose("paper=javed2019/sine", "seed=0", "quiet=true", "plots=false", "checkpoint=false",
                          "device=cpu", f"threads={a.threads}", *overrides, *meta)
            with tempfile.TemporaryDirectory() as d:
                row = run(cfg, d)
            stream = row["train_seconds"] - row.get("meta_train_seconds", 0.0)
            if name not in best or stream < best[name]["stream"]:
                best[name] = {"stream": stream, "meta": row.get("meta_train_seconds", 0.0), "ACC": row["ACC"]}
    naive = best["naive"]["stream"]
    rows = []
    for name, b in best.items():
        per_step = b["meta"] / a.meta_steps if name != "naive" else 0.0
        rows.append({"method": name, "stream_train_seconds": round(b["stream"], 2),
                     "stream_ratio_to_naive": round(b["stream"] / naive, 2),
                     "seconds_per_meta_step": round(per_step, 3),
                     "preset_meta_training_hours": round(per_step * PRESET_META_STEPS / 3600, 2),
                     "preset_ratio_to_naive": round((per_step * PRESET_META_STEPS + b["stream"]) / naive),
                     "meta_steps_timed": 0 if name == "naive" else a.meta_steps, "threads": a.threads})
    frame = pd.DataFrame(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT, index=False)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
