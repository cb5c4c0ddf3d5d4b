"""Cost of each method relative to naive fine-tuning, and of the vectorised Fisher against a per-sample loop.

    CLRUN_DATA=DIR python scripts/speed/methods.py [--reps 3] [--tasks 5] [--methods ewc,er] [--iters N]

Training time is clrun's ``train_seconds`` (the training loop, including the end-of-task work such as the
Fisher or exemplar selection, excluding evaluation). Writes results/speed/methods.csv and
results/speed/fisher.csv and prints both tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from clrun.app import CONF_DIR
from clrun.importance import fisher_diag
from clrun.learner import Learner
from clrun.methods.naive import Naive
from clrun.models import MLP
from clrun.run import run
from clrun.streams import Scenario, permuted

HERE = Path(__file__).resolve().parents[2] / "results" / "speed"
METHODS = ["naive", "ewc", "online_ewc", "si", "mas", "lwf", "er", "agem", "gem", "der", "derpp", "icarl", "pnn",
           "packnet", "supsup", "dgr", "dgr_distill"]
# the scenario each method is timed in: its own where it cannot serve domain-IL
SCENARIO = {"icarl": "class_il", "pnn": "task_il", "packnet": "task_il", "supsup": "task_il"}
# variants of a method's YAML, timed under their own names; K-FAC at lam 1: at EWC's default 100 (and at 10) its
# penalty passes plain SGD's stability limit on this stream by the third task (lr x lam x eig(A) x eig(G) > 2)
VARIANTS = {"ewc_kfac": ["method=ewc", "method.fisher_form=kfac", "method.lam=1"],
            "online_ewc_kfac": ["method=online_ewc", "method.fisher_form=kfac", "method.lam=1"],
            # MER steps through each incoming example: per example 1 + replay_batch_size steps (riemer), or one
            # step on the memory batch and the example (mammoth)
            "mer_mammoth": ["method=mer", "method.variant=mammoth"]}


def cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def bench_training(reps: int, tasks: int, methods: list[str], iters: int | None = None) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as d:  # one-off costs (first optimiser, kernels) before any timing
        run(cfg("benchmark=synthetic", "quiet=true", "plots=false", "device=cpu", "method=ewc"), d)
    times: dict[str, list[float]] = {m: [] for m in methods}
    last: dict[str, dict] = {}
    for rep in range(reps):  # round-robin: a drift in the machine's speed hits every method alike
        for method in methods:
            with tempfile.TemporaryDirectory() as d:
                scenario = SCENARIO.get(method, "domain_il")
                last[method] = run(cfg(*VARIANTS.get(method, [f"method={method}"]), f"benchmark.n_tasks={tasks}",
                                       f"scenario={scenario}", *([f"iters={iters}"] if iters else []),
                                       "quiet=true", "plots=false", "device=cpu", "checkpoint=false",
                                       f"seed={rep}"), d)
            times[method].append(last[method]["train_seconds"])
            print(f"rep {rep} {method:>10}: {times[method][-1]:.2f} s", flush=True)
    rows = [{"method": m, "train_seconds": statistics.median(times[m]), "min_s": min(times[m]),
             "max_s": max(times[m]), "reps": reps, "ACC": last[m]["ACC"],
             "buffer_bytes": last[m].get("buffer_bytes", float("nan")),
             "importance_bytes": last[m].get("importance_bytes", float("nan")),
             "generator_parameters": last[m].get("generator_parameters", float("nan")),
             "peak_rss_mb": last[m]["peak_rss_mb"], "iters_per_task": iters or "epoch"} for m in methods]
    df = pd.DataFrame(rows)
    df["ratio_to_naive"] = df.train_seconds / float(df.loc[df.method == "naive", "train_seconds"].iloc[0])
    # the machine's speed drifts between repetitions: the ratio within each repetition is the steadier number
    df["median_ratio_within_rep"] = [statistics.median(t / n for t, n in zip(times[m], times["naive"]))
                                     for m in methods]
    return df


def fisher_loop(model, x, y, mask):
    """The per-sample reference: one autograd.grad per sample."""
    params = [p for p in model.parameters()]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        logp = F.log_softmax(model(x[i : i + 1]).masked_fill(~mask[i : i + 1], -1e30), dim=1)[0, y[i]]
        for t, g in zip(total, torch.autograd.grad(-logp, params)):
            t += g.pow(2)
    return [t / len(x) for t in total]


def bench_fisher(n_vec: int, n_loop: int) -> pd.DataFrame:
    s = permuted(n_tasks=1, stream_seed=0, data_root=os.environ.get("CLRUN_DATA"))
    sc = Scenario("domain_il", s)
    torch.manual_seed(0)
    model = MLP(s.in_shape, sc.n_outputs, hidden=[400, 400])
    L = Learner(model, s, sc, Naive())
    x, y, ids = L.task_sample(0, n_vec)
    n_vec = len(y)  # the embedded 5k sample has fewer
    mask = sc.candidates(ids, 0)
    rows = []
    t0 = time.perf_counter()
    fisher_diag(model, x, y, mask, "empirical", chunk=16, backend="vmap")
    vec = time.perf_counter() - t0
    rows.append({"fisher": "vectorised (vmap(grad))", "samples": n_vec, "seconds": vec, "samples_per_s": n_vec / vec})
    t0 = time.perf_counter()
    fisher_diag(model, x, y, mask, "empirical", backend="auto")
    lin = time.perf_counter() - t0
    rows.append({"fisher": "Linear-layer outer products (backend=auto, MLP)", "samples": n_vec, "seconds": lin,
                 "samples_per_s": n_vec / lin})
    t0 = time.perf_counter()
    fisher_loop(model, x[:n_loop], y[:n_loop], mask[:n_loop])
    loop = time.perf_counter() - t0
    rows.append({"fisher": "per-sample loop (autograd.grad)", "samples": n_loop, "seconds": loop,
                 "samples_per_s": n_loop / loop})
    # one training epoch on the same number of samples, for the yardstick
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t0 = time.perf_counter()
    for s0 in range(0, n_vec, 128):
        opt.zero_grad()
        F.cross_entropy(model(x[s0 : s0 + 128]), y[s0 : s0 + 128]).backward()
        opt.step()
    ep = time.perf_counter() - t0
    rows.append({"fisher": "one SGD epoch on the same samples (batch 128)", "samples": n_vec, "seconds": ep,
                 "samples_per_s": n_vec / ep})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--fisher-samples", type=int, default=10_000)
    ap.add_argument("--loop-samples", type=int, default=1_000)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated; naive is always included; also {', '.join(VARIANTS)}")
    ap.add_argument("--skip-fisher", action="store_true")
    ap.add_argument("--iters", type=int, default=None,
                    help="steps per task for every method, naive included (default: one epoch); MER's cost per "
                    "incoming batch is then timed in minutes rather than hours")
    ap.add_argument("--out", default="methods.csv", help="file name under results/speed/")
    a = ap.parse_args()
    methods = ["naive"] + [m for m in a.methods.split(",") if m and m != "naive"]
    torch.set_num_threads(torch.get_num_threads())
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    if not a.skip_fisher:
        fisher = bench_fisher(a.fisher_samples, a.loop_samples)
        fisher.to_csv(HERE / "fisher.csv", index=False, float_format="%.4g")
        print(fisher.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        rate = dict(zip(fisher.fisher, fisher.samples_per_s))
        loop = rate["per-sample loop (autograd.grad)"]
        print(f"vmap / loop: {rate['vectorised (vmap(grad))'] / loop:.1f}x; "
              f"outer products / loop: {rate['Linear-layer outer products (backend=auto, MLP)'] / loop:.1f}x")
    train = bench_training(a.reps, a.tasks, methods, a.iters)
    train.to_csv(HERE / a.out, index=False, float_format="%.4g")
    print(train.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
