"""Every method, the diagnostics, low-rank EWC, SupSup's task inference and a preset on CUDA (device=cuda),
each a short run on the synthetic stream, then the default offline run (device=auto). For machines with a GPU:

    python scripts/device/cuda_smoke.py
Prints one line per run and exits non-zero if any run did not complete."""

from __future__ import annotations

import sys
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from clrun.app import CONF_DIR
from clrun.run import run

BASE = ["benchmark=synthetic", "device=cuda", "quiet=true", "plots=false", "epochs=2", "lr=0.1"]
CASES = [[f"method={m}"] for m in ["naive", "joint", "ewc", "online_ewc", "mas", "si", "lwf", "er", "agem", "gem",
                                   "der", "derpp", "icarl"]]
CASES += [[f"method={m}", "scenario=task_il"] for m in ["pnn", "packnet", "supsup"]]
CASES += [["method=supsup", "method.task_inference=oneshot"], ["method=supsup", "method.task_inference=binary"],
          ["method=ewc", "method.fisher_form=lowrank", "method.rank=5"],
          ["method=naive", "diagnostics.interference=true", "diagnostics.spectrum=true", "diagnostics.every=5"],
          ["method=er", "+regularizers=[lwf,ewc]"], ["model=cnn", "method=ewc", "method.backend=vmap", "lr=0.01"],
          ["paper=der2020/seq_mnist_buffer", "method=derpp", "benchmark.dataset=synthetic", "benchmark.name=tiny",
           "benchmark.n_tasks=2", "iters=5"]]


def cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    failed = 0
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            try:
                row = run(cfg(*BASE, *case), d)
                status = row["status"]
            except Exception as err:  # report and go on: one line per case
                status, row = f"error {type(err).__name__}: {err}", {}
            ok = status == "completed" and row.get("peak_device_mb", 0) > 0  # the device memory is reported
            failed += not ok
            print(f"{'ok ' if ok else 'BAD'} {' '.join(case):70s} ACC={row.get('ACC', float('nan')):.3f} "
                  f"{row.get('peak_device_mb', float('nan')):7.1f} MB {time.perf_counter() - t0:5.1f}s "
                  f"{'' if ok else status}", flush=True)
    # the per-sample-gradient paths agree across devices: diagonal Fisher and the Lanczos spectrum of a CNN
    from clrun.importance import SampleGradients, fisher_diag, lanczos_top
    from clrun.models import CNN

    torch.manual_seed(0)
    model = CNN((1, 8, 8), 10, channels=[4, 8], hidden=32)
    x, y = torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))
    mask = torch.ones(256, 10, dtype=torch.bool)
    f_cpu = fisher_diag(model, x, y, mask, "empirical", backend="vmap")
    f_gpu = fisher_diag(model.cuda(), x.cuda(), y.cuda(), mask.cuda(), "empirical", backend="vmap")
    err = max(float((f_gpu[n].cpu() - f_cpu[n]).abs().max() / f_cpu[n].abs().max()) for n in f_cpu)
    g = SampleGradients(model, x.cuda(), y.cuda(), mask.cuda())
    top_gpu, _ = lanczos_top(g.fisher_matmul, g.dim, 5, generator=torch.Generator().manual_seed(0), device="cuda")
    g_cpu = SampleGradients(model.cpu(), x, y, mask)
    top_cpu, _ = lanczos_top(g_cpu.fisher_matmul, g_cpu.dim, 5, generator=torch.Generator().manual_seed(0))
    err_eig = float(((top_gpu.cpu() - top_cpu).abs() / top_cpu).max())
    ok = err < 1e-3 and err_eig < 1e-3
    failed += not ok
    print(f"{'ok ' if ok else 'BAD'} CNN Fisher CPU vs CUDA: max rel diff {err:.1e}; top-5 eigenvalues {err_eig:.1e}")
    with tempfile.TemporaryDirectory() as d:  # the out-of-the-box run: offline MNIST sample, device=auto
        row = run(cfg("device=auto", "quiet=true", "plots=false"), d)
        print(f"default run on {row['data_source']}: ACC={row['ACC']:.4f} wall={row['wall_seconds']:.1f}s "
              f"train={row['train_seconds']:.1f}s eval={row['eval_seconds']:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
