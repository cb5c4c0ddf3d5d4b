"""One continual-learning run: build the stream, evaluate the untrained model, train task after task,
evaluate every task after every task, and write R.csv, metrics.csv and log.csv into ``out_dir``."""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import clrun
from clrun import checkpoint as ckpt
from clrun import checks, io, papers, stop, tracking
from clrun.diagnostics import Diagnostics
from clrun.errors import ConfigError, ResumeMismatch
from clrun.learner import Diverged, Interrupted, Learner
from clrun.metrics import LOWER_IS_BETTER, all_metrics
from clrun.streams import Scenario

log = logging.getLogger("clrun")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

def _redraw_missing_plots(out_dir: Path) -> None:
    """A completed run whose plot is missing or cut short (killed while plotting) gets it drawn again."""
    if all(io.png_ok(out_dir / name) for name in ("R.png", "task_accuracy.png", "loss.png")):
        return
    from clrun import plots

    plots.plot_dir(out_dir)

def reset_peak_rss() -> None:
    """Start this job's peak-memory count afresh (Linux: VmHWM); in a sweep, jobs share the process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the process's high-water mark it is
        pass


def _peak_device_mb(device: torch.device) -> dict:
    """On a GPU, ``peak_device_mb``: the most memory torch held on it since the job's start (a stacked model's
    seeds share it: one seed's share is about peak_device_mb / stacked_seeds); nothing on a CPU."""
    if device.type != "cuda":
        return {}
    return {"peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def _peak_rss_mb() -> float:
    """This job's peak resident memory since :func:`reset_peak_rss` (VmHWM), else the process's lifetime peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def device_label(device: torch.device) -> str:
    """``cpu`` or ``cuda:N (GPU name)``: the timings in metrics.csv mean nothing without it."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def run(cfg: DictConfig, out_dir: str | Path, job_files: Mapping[str, str] | None = None,
        sweep_dir: str | Path | None = None) -> dict:
    """Run the experiment described by ``cfg`` (a composed clrun config) and write its CSVs to ``out_dir``.

    Returns the metrics row. Works without Hydra globals, so tests and notebooks can call it directly.
    With ``resume=true`` a run continues after the last task checkpointed in ``out_dir``; a run already
    completed there is not redone. ``job_files`` (name -> text, e.g. Hydra's ``.hydra/overrides.yaml``) are
    written into ``out_dir`` once every setting has been checked: a command that is refused changes no file.
    ``sweep_dir``: the sweep the run is a job of; its trackers group the sweep's runs under its name."""
    try:
        return drive(_run(cfg, out_dir, job_files, Path(sweep_dir) if sweep_dir else None))
    finally:
        # learner <-> method references form cycles: without a collection here a sweep's next job builds its
        # stream while the last one's is still alive (R-MNIST: 5 GB a stream, peak RSS 10 GB from job 2 on)
        gc.collect()


@dataclass
class TrainTask:
    """What a run asks its driver for between evaluations: train ``task`` of ``learner``'s stream (its
    ``train_task`` arguments). :func:`drive` trains it alone; clrun.vectorized trains several runs' together."""

    learner: Learner
    task: int
    epochs: int
    iters: int | None
    progress: Callable
    on_log_row: Callable[[dict], None]
    # the seconds the task's training took, where a driver trains several runs' tasks at once (the stack's time,
    # not the time until this run is resumed); None: the time from the request to the run's resumption
    seconds: float | None = None

    def train_alone(self) -> None:
        self.learner.train_task(self.task, self.epochs, self.iters, progress=self.progress,
                                on_log_row=self.on_log_row)


def drive(steps: Generator[TrainTask, BaseException | None, dict], request: TrainTask | None = None) -> dict:
    """Run a run's generator to its end (from ``request``, when it has already asked for one), training each task
    it asks for alone; an error in training goes back into the run at the point it asked (which records a
    divergence, an interruption or a failure)."""
    try:
        request = request or next(steps)
        while True:
            try:
                request.train_alone()
            except Exception as err:  # noqa: BLE001 - the run decides what each error means
                request = steps.throw(err)
            else:
                request = steps.send(None)
    except StopIteration as stop:
        return stop.value


def _run(cfg: DictConfig, out_dir: str | Path, job_files: Mapping[str, str] | None,
         sweep_dir: Path | None) -> Generator[TrainTask, BaseException | None, dict]:
    """The run, as a generator: it yields a :class:`TrainTask` where a task is to be trained and gets None back
    when it is (or the training's Diverged / Interrupted thrown in), and returns the metrics row."""
    t_start = time.perf_counter()
    reset_peak_rss()
    out_dir = Path(out_dir)
    papers.check_applied(cfg)
    checks.check_output_dir(out_dir)
    checks.validate(cfg)
    if cfg.resume:
        ckpt.check_same_run(out_dir, cfg)
        done = io.read_metrics(out_dir)
        if done is not None and done.get("status") == "completed":
            log.info("%s already holds a completed run; nothing to do", out_dir)
            if cfg.plots:
                _redraw_missing_plots(out_dir)
            print(final_line(done, out_dir))
            return done
    elif (out_dir / io.METRICS_FILE).exists() or (out_dir / ckpt.CHECKPOINT_FILE).exists():
        status = (io.read_metrics(out_dir) or {}).get("status", "unknown")
        raise ConfigError(f"{out_dir} already holds a run (status {status}); continue it with resume=true (clrun "
                          "--resume DIR), or give the new run another directory (hydra.run.dir=...)")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = checks.pick_device(str(cfg.device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # this job's peak, as peak_rss_mb's
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    seed_everything(int(cfg.seed))

    method = checks.build(cfg.method, "method")  # method settings are checked before any data is loaded
    regularizers = [checks.build(c, f"regularizers.{k}") for k, c in (cfg.regularizers or {}).items()]
    checks.check_stack(method, regularizers)
    diagnostics = Diagnostics(out_dir, **OmegaConf.to_container(cfg.get("diagnostics") or {}))
    stream = checks.build(cfg.benchmark, "benchmark", data_root=cfg.data.root, download=cfg.data.download,
                   normalize=bool(OmegaConf.select(cfg, "data.normalize", default=True)))
    scenario = Scenario(str(cfg.scenario.name), stream, str(cfg.scenario.get("train_units", "seen")))
    before = io.read_metrics(out_dir) if cfg.resume else None
    if before is not None and str(before.get("data_source")) not in (stream.data_source, "nan"):
        raise ResumeMismatch(f"resume: {out_dir} was run on data_source={before['data_source']}, this machine gives "
                             f"{stream.data_source}; point data.root (or CLRUN_DATA) at the same data")
    checks.check_memory(method, stream, scenario, device)
    stream.to(device)
    T = len(stream)
    model = checks.build(cfg.model, "model", in_shape=stream.in_shape, n_outputs=scenario.n_outputs)
    optimizer_factory = checks.build(cfg.optimizer, "optimizer")
    checks.check_optimizer(cfg, optimizer_factory)
    learner = Learner(model, stream, scenario, method, regularizers, optimizer_factory, device,
                      int(cfg.batch_size), int(cfg.eval_batch_size), int(cfg.seed), str(cfg.on_nan),
                      bool(OmegaConf.select(cfg, "reset_optimizer", default=True)),
                      check_step=bool(OmegaConf.select(cfg, "check_step", default=False)),
                      skip_limit=float(OmegaConf.select(cfg, "skip_limit", default=0.1)),
                      log_every=OmegaConf.select(cfg, "log_every", default=None))
    trackers = tracking.Trackers([checks.build(node, f"logger.{name}")
                                  for name, node in (OmegaConf.select(cfg, "logger") or {}).items()])
    trackers.require()
    ident = ckpt.identity(cfg)
    state = None
    if cfg.resume:
        state = ckpt.load(out_dir, ident, ckpt.run_modules(method, *regularizers, model), str(device))
    if cfg.checkpoint:
        checks.check_disk(out_dir, learner)

    # everything is checked: only now may the run's files change
    if not cfg.quiet:
        print(f"clrun: run directory {out_dir}", file=sys.stderr)
    io.remove_temp_files(out_dir)
    if not (cfg.resume and (out_dir / "config.yaml").exists()):  # a resume keeps the record of what was run
        for name, text in (job_files or {}).items():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            io.atomic_write_text(out_dir / name, text)
        io.atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

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
        "measure": stream.measure,
        "device": device_label(device), "clrun_version": clrun.__version__,
    }
    clock = {"train": 0.0, "eval": 0.0, "wall": 0.0}
    start_task = 0

    def metrics_row(status: str, tasks_done: int) -> dict:
        done = all_metrics(R, stream.measure in LOWER_IS_BETTER) if tasks_done == T else dict.fromkeys(
            ["ACC", "forgetting", "BWT", "FWT", "learning_accuracy"], math.nan)
        return {**base_row, "status": status, "tasks_done": tasks_done, **done,
                "wall_seconds": clock["wall"] + time.perf_counter() - t_start, "train_seconds": clock["train"],
                "eval_seconds": clock["eval"], "peak_rss_mb": _peak_rss_mb(), **_peak_device_mb(device),
                "stacked_seeds": learner.stacked_seeds,
                "parameters": learner.n_parameters(),
                "buffer_bytes": math.nan, **{k: v for m in learner.methods for k, v in m.extra_metrics().items()}}

    if state is not None:
        start_task = _restore(state, learner, R, log_rows, clock)
        if diagnostics.enabled:
            diagnostics.resume(start_task)
        log.info("resuming %s after task %d/%d", out_dir, start_task, T)
    else:
        t0 = time.perf_counter()
        R[0] = learner.evaluate_all(-1)
        clock["eval"] += time.perf_counter() - t0
        io.write_R(out_dir, R)  # the untrained model's row survives a run that stops in its first task
    row = metrics_row("running", start_task)
    io.write_metrics(out_dir, row)
    if trackers:
        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("logger", None)
        trackers.start(tracking.RunInfo(out_dir, out_dir.name, sweep_dir.name if sweep_dir else "clrun",
                                        sweep_dir or out_dir, tracking.flatten(config)), log_rows)
        if state is None:
            trackers.task_done(R, 0)  # the untrained model's row

    def on_log_row(log_row: dict) -> None:
        log_rows.append(log_row)
        if trackers:
            trackers.log_row(log_row)

    def snapshot(tasks_done: int) -> dict:
        wall = {**clock, "wall": clock["wall"] + time.perf_counter() - t_start}  # wall time adds up across resumes
        return _snapshot(learner, R, log_rows, wall, tasks_done)

    with stop.on_signals(learner):
        try:
            for t in range(start_task, T):
                bars: list[tqdm] = []
                progress = _progress_bar(f"task {t + 1}/{T} {stream.tasks[t].name}", bool(cfg.quiet), bars)
                t0 = time.perf_counter()
                request = TrainTask(learner, t, int(cfg.epochs), cfg.iters, progress, on_log_row)
                try:
                    yield request
                finally:
                    clock["train"] += time.perf_counter() - t0 if request.seconds is None else request.seconds
                    for b in bars:
                        b.close()
                t0 = time.perf_counter()
                R[t + 1] = learner.evaluate_all(t)
                clock["eval"] += time.perf_counter() - t0
                if trackers:
                    trackers.task_done(R, t + 1)
                if cfg.checkpoint:  # before the CSVs: a run whose CSVs say task t is done can resume from t
                    ckpt.save(out_dir, snapshot(t + 1), ident)
                io.write_R(out_dir, R)
                io.write_log(out_dir, log_rows)
                for m in learner.methods:
                    for name, arrays in m.outputs().items():
                        io.write_arrays(out_dir, name, arrays)
                row = metrics_row("completed" if t == T - 1 else "running", t + 1)
                io.write_metrics(out_dir, row)
                if not cfg.quiet:
                    log.info("after task %d/%d: mean %s on seen tasks %.4f", t + 1, T, stream.measure,
                             np.mean(R[t + 1, : t + 1]))
        except (Diverged, Interrupted) as err:  # the rows so far stay; the run says why it stopped
            status = "diverged" if isinstance(err, Diverged) else "interrupted"
            hint = "; resume with resume=true in this output directory" if status == "interrupted" else ""
            log.error("%s%s", err, hint)
            row = _stopped(out_dir, metrics_row(status, row["tasks_done"]), str(err), log_rows)
        except OSError as err:  # a full disk or a directory gone read-only: say so in one line
            raise ConfigError(f"cannot write the run's files in {out_dir}: {err.strerror or err}; free space or "
                              "fix permissions, then resume with resume=true") from err
        except Exception as err:
            _stopped(out_dir, metrics_row("failed", row["tasks_done"]), f"{type(err).__name__}: {err}", log_rows)
            if trackers:
                trackers.finish("failed")
            raise
    if cfg.plots and row["status"] == "completed":
        from clrun import plots  # matplotlib only when plotting

        plots.plot_dir(out_dir)
    if trackers:
        trackers.final(row, out_dir)
        trackers.finish(row["status"])
    if not cfg.quiet:
        print(io.r_frame(R).round(4).to_string())
    print(final_line(row, out_dir))  # even with quiet=true: the result and where it is
    return row


def final_line(row: dict, out_dir: Path) -> str:
    """``ACC=0.8123  forgetting=0.0912  BWT=-0.0912  FWT=0.0021  outputs/...`` (or how the run stopped)."""
    if row["status"] == "completed":
        result = "  ".join(f"{k}={row[k]:.4f}" for k in ["ACC", "forgetting", "BWT", "FWT"])
        if row.get("measure") in LOWER_IS_BETTER:  # ACC is then the mean error on every task
            result = f"measure={row['measure']}  {result}"
    else:
        result = f"status={row['status']} after {row['tasks_done']}/{row['n_tasks']} tasks"
    return f"{result}  {out_dir}"


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
