"""One continual-learning run: build the stream, evaluate the untrained model, train task after task,
evaluate every task after every task, and write R.csv, metrics.csv and log.csv into ``out_dir``."""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import resource
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from clrun import io
from clrun.data import DatasetError
from clrun.diagnostics import Diagnostics
from clrun.learner import Diverged, Interrupted, Learner
from clrun.metrics import all_metrics
from clrun.streams import ConfigError, Scenario

log = logging.getLogger("clrun")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=auto or device=cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device={name!r} is not allowed; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _number(cfg: DictConfig, key: str, kind: type, low: float, allow_none: bool = False, strict: bool = False):
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int:
        ok = float(value).is_integer()
    if ok:
        ok = value > low if strict else value >= low
    if not ok:
        what = "an integer" if kind is int else "a number"
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(f"{key}={value!r} is not allowed: use {what} {bound}")


def validate(cfg: DictConfig) -> None:
    """Every top-level setting checked before any data is loaded or any step is taken."""
    _number(cfg, "seed", int, 0)
    _number(cfg, "lam", float, 0, allow_none=True)
    _number(cfg, "buffer", int, 0, allow_none=True)
    _number(cfg, "lr", float, 0, strict=True)
    _number(cfg, "epochs", int, 1)
    _number(cfg, "iters", int, 1, allow_none=True)
    _number(cfg, "batch_size", int, 1)
    _number(cfg, "eval_batch_size", int, 1)
    _number(cfg, "threads", int, 1, allow_none=True)
    if OmegaConf.select(cfg, "on_nan") not in ("stop", "skip"):
        raise ConfigError(f"on_nan={OmegaConf.select(cfg, 'on_nan')!r} is not allowed; use stop or skip")
    root = OmegaConf.select(cfg, "data.root")
    if root is not None and Path(str(root)).exists() and not Path(str(root)).is_dir():
        raise ConfigError(f"data.root={root} is not a directory")


def build(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate``, surfacing our own configuration/dataset errors unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ConfigError, DatasetError)):
            raise cause from None
        if "Error locating target" in str(err):  # a user's class that cannot be imported: say which and why
            key, root = OmegaConf.select(node, "_target_"), err
            while root.__cause__ is not None:
                root = root.__cause__
            why = " ".join(f"{type(root).__name__}: {root}".split())
            raise ConfigError(f"_target_={key} cannot be imported ({why}); run clrun from the directory that holds "
                              "its package, or install the package") from None
        raise


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def device_label(device: torch.device) -> str:
    """``cpu`` or ``cuda:N (GPU name)``: the timings in metrics.csv mean nothing without it."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run the experiment described by ``cfg`` (a composed clrun config) and write its CSVs to ``out_dir``.

    Returns the metrics row. Works without Hydra globals, so tests and notebooks can call it directly.
    With ``resume=true`` a run continues after the last task checkpointed in ``out_dir``; a run already
    completed there is not redone."""
    try:
        return _run(cfg, out_dir)
    finally:
        # learner <-> method references form cycles: without a collection here a sweep's next job builds its
        # stream while the last one's is still alive (R-MNIST: 5 GB a stream, peak RSS 10 GB from job 2 on)
        gc.collect()


def _run(cfg: DictConfig, out_dir: str | Path) -> dict:
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    validate(cfg)
    if cfg.resume:
        done = io.read_metrics(out_dir)
        if done is not None and done.get("status") == "completed":
            log.info("%s already holds a completed run; nothing to do", out_dir)
            return done
    io.atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = pick_device(str(cfg.device))
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    seed_everything(int(cfg.seed))

    method = build(cfg.method)  # method settings are checked before any data is loaded
    regularizers = [build(c) for c in (cfg.regularizers or {}).values()]
    diagnostics = Diagnostics(out_dir, **OmegaConf.to_container(cfg.get("diagnostics") or {}))
    stream = build(cfg.benchmark, data_root=cfg.data.root, download=cfg.data.download,
                   normalize=bool(OmegaConf.select(cfg, "data.normalize", default=True)))
    scenario = Scenario(str(cfg.scenario.name), stream, str(cfg.scenario.get("train_units", "seen")))
    stream.to(device)
    T = len(stream)
    model = build(cfg.model, in_shape=stream.in_shape, n_outputs=scenario.n_outputs)
    learner = Learner(model, stream, scenario, method, regularizers, build(cfg.optimizer), device,
                      int(cfg.batch_size), int(cfg.eval_batch_size), int(cfg.seed), str(cfg.on_nan),
                      bool(OmegaConf.select(cfg, "reset_optimizer", default=True)),
                      check_step=bool(OmegaConf.select(cfg, "check_step", default=False)))

    if diagnostics.enabled:
        diagnostics.bind(learner)
        learner.observers.append(diagnostics)

    R = np.full((T + 1, T), np.nan)
    log_rows: list[dict] = []
    base_row = {
        "benchmark": stream.name, "scenario": scenario.name, "method": method.name,
        "regularizers": "+".join(r.name for r in regularizers),
        "lam": _first_attr([method, *regularizers], "lam"), "buffer": _first_attr([method], "buffer_size"),
        "seed": int(cfg.seed), "n_tasks": T, "data_source": stream.data_source, "eval_split": stream.eval_split,
        "device": device_label(device),
    }
    clock = {"train": 0.0, "eval": 0.0}
    start_task = 0

    def metrics_row(status: str, tasks_done: int) -> dict:
        done = all_metrics(R) if tasks_done == T else dict.fromkeys(
            ["ACC", "forgetting", "BWT", "FWT", "learning_accuracy"], math.nan)
        return {**base_row, "status": status, "tasks_done": tasks_done, **done,
                "wall_seconds": time.perf_counter() - t_start, "train_seconds": clock["train"],
                "eval_seconds": clock["eval"], "peak_rss_mb": _peak_rss_mb(), "parameters": learner.n_parameters(),
                "buffer_bytes": math.nan, **{k: v for m in learner.methods for k, v in m.extra_metrics().items()}}

    state = io.load_checkpoint(out_dir, str(device)) if cfg.resume else None
    if state is not None:
        start_task = _restore(state, learner, R, log_rows, clock)
        if diagnostics.enabled:
            diagnostics.resume(start_task)
        log.info("resuming %s after task %d/%d", out_dir, start_task, T)
    else:
        t0 = time.perf_counter()
        R[0] = learner.evaluate_all(-1)
        clock["eval"] += time.perf_counter() - t0
    row = metrics_row("running", start_task)
    with _stop_on_signals(learner):
        try:
            for t in range(start_task, T):
                bars: list[tqdm] = []
                progress = _progress_bar(f"task {t + 1}/{T} {stream.tasks[t].name}", bool(cfg.quiet), bars)
                t0 = time.perf_counter()
                try:
                    learner.train_task(t, int(cfg.epochs), cfg.iters, progress=progress, on_epoch=log_rows.append)
                finally:
                    clock["train"] += time.perf_counter() - t0
                    for b in bars:
                        b.close()
                t0 = time.perf_counter()
                R[t + 1] = learner.evaluate_all(t)
                clock["eval"] += time.perf_counter() - t0
                if cfg.checkpoint:  # before the CSVs: a run whose CSVs say task t is done can resume from t
                    io.save_checkpoint(out_dir, _snapshot(learner, R, log_rows, clock, t + 1))
                io.write_R(out_dir, R)
                io.write_log(out_dir, log_rows)
                row = metrics_row("completed" if t == T - 1 else "running", t + 1)
                io.write_metrics(out_dir, row)
                if not cfg.quiet:
                    log.info("after task %d/%d: mean accuracy on seen tasks %.4f", t + 1, T,
                             np.mean(R[t + 1, : t + 1]))
        except (Diverged, Interrupted) as err:  # the rows so far stay; the run says why it stopped
            status = "diverged" if isinstance(err, Diverged) else "interrupted"
            hint = "; resume with resume=true in this output directory" if status == "interrupted" else ""
            log.error("%s%s", err, hint)
            row = _stopped(out_dir, metrics_row(status, row["tasks_done"]), str(err), log_rows)
        except Exception as err:
            _stopped(out_dir, metrics_row("failed", row["tasks_done"]), f"{type(err).__name__}: {err}", log_rows)
            raise
    if cfg.plots and row["status"] == "completed":
        from clrun import plots  # matplotlib only when plotting

        plots.plot_dir(out_dir)
    if not cfg.quiet:
        print(io.r_frame(R).round(4).to_string())
        print("  ".join(f"{k}={row[k]:.4f}" for k in ["ACC", "forgetting", "BWT", "FWT"]))
    return row


def _stopped(out_dir: Path, row: dict, error: str, log_rows: list[dict]) -> dict:
    """Write the log and the metrics row of a run that stopped before its last task (completed runs already did)."""
    row = {**row, "error": error}
    io.write_log(out_dir, log_rows)
    io.write_metrics(out_dir, row)
    return row


def _snapshot(learner: Learner, R: np.ndarray, log_rows: list[dict], clock: dict, tasks_done: int) -> dict:
    """Everything needed to continue after ``tasks_done`` tasks exactly as an uninterrupted run would."""
    return {
        "tasks_done": tasks_done, "R": R.copy(), "log_rows": list(log_rows), "clock": dict(clock),
        "model": learner.model.state_dict(), "methods": [m.state_dict() for m in learner.methods],
        "rng": {"torch": torch.get_rng_state(), "batches": learner.generator.get_state(),
                "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }


def _restore(state: dict, learner: Learner, R: np.ndarray, log_rows: list[dict], clock: dict) -> int:
    learner.model.load_state_dict(state["model"])
    for m, s in zip(learner.methods, state["methods"]):
        m.load_state_dict(s)
    rng = state["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    learner.generator.set_state(rng["batches"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    R[:] = state["R"]
    log_rows[:] = state["log_rows"]
    clock.update(state["clock"])
    return int(state["tasks_done"])


class _stop_on_signals:
    """SIGINT/SIGTERM ask the learner to stop at the next step; the run then writes what it has."""

    def __init__(self, learner: Learner):
        self.learner = learner
        self.previous: dict = {}

    def _handler(self, signum, frame) -> None:
        self.learner.stop_requested = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _progress_bar(desc: str, quiet: bool, bars: list):
    """A progress callback for Learner.train_task: opens a tqdm bar sized to the task's steps."""

    def start(total: int):
        bars.append(tqdm(total=total, desc=desc, leave=False, disable=quiet, unit="step"))
        return bars[-1].update

    return start


def _first_attr(objs, attr: str) -> float:
    for o in objs:
        v = getattr(o, attr, None)
        if v is not None:
            return v
    return math.nan
