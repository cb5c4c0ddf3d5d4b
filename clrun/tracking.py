"""Experiment trackers (``logger=tensorboard``, ``logger=[mlflow,wandb]``): each run sends its configuration,
its training curves (log.csv's rows), the R matrix after every task, its final metrics, and its CSVs and plots
as artifacts, through the tracker's own client (TensorBoard's SummaryWriter, MlflowClient, wandb).

A sweep is one experiment (MLflow), one group (W&B), one log directory (TensorBoard: the sweep directory),
with one run per job. The clients are an optional extra: ``pip install "clrun[tracking]"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clrun.errors import ConfigError

FINAL_METRICS = ("ACC", "forgetting", "BWT", "FWT", "learning_accuracy", "wall_seconds", "train_seconds",
                 "peak_rss_mb")


@dataclass
class RunInfo:
    """What a tracker knows of the run it records."""

    out_dir: Path  # the run directory
    name: str  # the run's name: its directory's name
    group: str  # the experiment / group: the sweep directory's name, or "clrun" for a single run
    group_dir: Path  # where a sweep's shared tracking files go: the sweep directory (a single run: its own)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved configuration, flattened


class Tracker:
    """One tracker's client for one run. Every method but :meth:`start` is called after it."""

    client = ""  # the module the tracker needs, for the message when it is missing

    def start(self, info: RunInfo) -> None:
        raise NotImplementedError

    def log_curve(self, values: dict[str, float], step: int) -> None:
        """Training-curve values (``train/loss``, ``train/acc``, ...) at the stream's global step."""

    def log_R(self, R: np.ndarray, tasks_done: int, step: int) -> None:
        """Row ``tasks_done`` of R: every task's accuracy after training ``tasks_done`` tasks."""

    def log_final(self, row: dict, files: list[Path], step: int) -> None:
        """The final metrics row and the run's files (CSVs, plots)."""

    def finish(self, status: str) -> None:
        """``status``: completed, diverged, interrupted or failed."""

    def require(self) -> None:
        """The client is installed: checked before the run starts, so a missing one is one clear line."""
        import importlib.util

        if importlib.util.find_spec(self.client) is None:
            raise ConfigError(f"logger={type(self).__name__.lower()} needs the {self.client} package: "
                              'pip install "clrun[tracking]"')


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"method.lam": 100, ...}`` from a nested config."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _finite(values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


def _r_row(R: np.ndarray, tasks_done: int) -> dict[str, float]:
    row = R[tasks_done]
    values = {f"accuracy/task_{j + 1}": float(row[j]) for j in range(R.shape[1]) if np.isfinite(row[j])}
    if tasks_done:
        values["accuracy/mean_seen"] = float(np.mean(row[:tasks_done]))
    return values


class TensorBoard(Tracker):
    """TensorBoard event files in ``<run dir>/tensorboard`` (``tensorboard --logdir SWEEP_DIR`` shows the jobs
    side by side), written with torch's SummaryWriter."""

    client = "tensorboard"

    def __init__(self, log_dir: str | None = None):
        self.log_dir = log_dir

    def start(self, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(self.log_dir) / info.name if self.log_dir
                                                else info.out_dir / "tensorboard"))
        table = "\n".join(f"| {k} | {v} |" for k, v in sorted(info.config.items()))
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table)

    def log_curve(self, values: dict[str, float], step: int) -> None:
        for k, v in _finite(values).items():
            self.writer.add_scalar(k, v, step)

    def log_R(self, R: np.ndarray, tasks_done: int, step: int) -> None:
        for k, v in _r_row(R, tasks_done).items():
            self.writer.add_scalar(k, v, tasks_done)  # x: tasks trained, as in task_accuracy.png

    def log_final(self, row: dict, files: list[Path], step: int) -> None:
        import matplotlib.image as mpimg

        for k, v in _finite({k: row.get(k) for k in FINAL_METRICS}).items():
            self.writer.add_scalar(f"final/{k}", v, 0)
        for f in files:
            if f.suffix == ".png":
                self.writer.add_image(f"plots/{f.stem}", mpimg.imread(f)[..., :3], 0, dataformats="HWC")

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class MLflow(Tracker):
    """An MLflow run through ``MlflowClient``: parameters, metrics with steps, artifacts, and its end status.
    ``tracking_uri`` null: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<sweep dir>/mlflow.db`` (a single run:
    its own directory) with artifacts beside it."""

    client = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment

    def start(self, info: RunInfo) -> None:
        import os

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:
            uri = f"sqlite:///{(info.group_dir / 'mlflow.db').resolve()}"
            artifacts = (info.group_dir / "mlartifacts").resolve().as_uri()
        self.mlflow = MlflowClient(tracking_uri=uri)
        name = self.experiment or info.group
        found = self.mlflow.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self._create(name, artifacts)
        self.run_id = self.mlflow.create_run(experiment_id, run_name=info.name,
                                             tags={"clrun.run_dir": str(info.out_dir)}).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in sorted(info.config.items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
            self.mlflow.log_batch(self.run_id, params=params[i : i + 100])

    def _create(self, name: str, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.mlflow.create_experiment(name, artifact_location=artifacts)
        except MlflowException:  # a parallel job created it first
            return self.mlflow.get_experiment_by_name(name).experiment_id

    def _metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k.replace("/", "."), v, now, step) for k, v in _finite(values).items()]
        if metrics:
            self.mlflow.log_batch(self.run_id, metrics=metrics)

    def log_curve(self, values: dict[str, float], step: int) -> None:
        self._metrics(values, step)

    def log_R(self, R: np.ndarray, tasks_done: int, step: int) -> None:
        self._metrics(_r_row(R, tasks_done), tasks_done)

    def log_final(self, row: dict, files: list[Path], step: int) -> None:
        self._metrics({f"final/{k}": row.get(k) for k in FINAL_METRICS}, 0)
        for f in files:
            self.mlflow.log_artifact(self.run_id, str(f))

    def finish(self, status: str) -> None:
        self.mlflow.set_terminated(self.run_id, {"completed": "FINISHED", "interrupted": "KILLED"}.get(status,
                                                                                                     "FAILED"))


class WandB(Tracker):
    """A W&B run: config, history with steps, summary, plots as images, CSVs and plots as an artifact. ``mode``:
    online, offline (the default unless ``$WANDB_MODE`` says otherwise: nothing leaves the machine until
    ``wandb sync``) or disabled."""

    client = "wandb"

    def __init__(self, project: str = "clrun", entity: str | None = None, mode: str | None = None,
                 tags: list[str] | None = None):
        if mode not in (None, "online", "offline", "disabled"):
            raise ConfigError(f"logger.wandb.mode={mode!r} is not allowed: use online, offline or disabled")
        self.project, self.entity, self.mode, self.tags = project, entity, mode, list(tags or [])

    def start(self, info: RunInfo) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode or "offline",
                              group=info.group, name=info.name, dir=str(info.out_dir), config=info.config,
                              tags=self.tags, reinit="create_new", settings=wandb.Settings(console="off",
                                                                                          silent=True))

    def log_curve(self, values: dict[str, float], step: int) -> None:
        self.run.log(_finite(values), step=step)

    def log_R(self, R: np.ndarray, tasks_done: int, step: int) -> None:
        self.run.log({**_r_row(R, tasks_done), "tasks_done": tasks_done}, step=step)

    def log_final(self, row: dict, files: list[Path], step: int) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in _finite({k: row.get(k) for k in FINAL_METRICS}).items()})
        images = {f"plots/{f.stem}": self.wandb.Image(str(f)) for f in files if f.suffix == ".png"}
        if images:
            self.run.log(images, step=step)
        artifact = self.wandb.Artifact(f"{self.run.id}-outputs", type="run-outputs")
        for f in files:
            artifact.add_file(str(f))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


class Trackers:
    """The run's trackers together, and the stream's global step they share (steps of earlier tasks + the
    step within the current one)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers
        self.offset = 0  # steps of the tasks before the current one
        self.step = 0

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def require(self) -> None:
        for t in self.trackers:
            t.require()

    def start(self, info: RunInfo, log_rows: list[dict]) -> None:
        """Start every tracker; on resume, the global step continues after the restored rows' tasks."""
        steps_per_task: dict[int, int] = {}  # a task's last epoch row holds its step count
        for r in log_rows:
            if r.get("kind") == "epoch":
                steps_per_task[r["task"]] = int(r["step"])
        self.offset = sum(steps_per_task.values())
        for t in self.trackers:
            t.start(info)

    def log_row(self, row: dict) -> None:
        """A log.csv row: the curve (every log_every steps) as train/*, an epoch's end as epoch/*."""
        self.step = self.offset + int(row["step"])
        prefix = "train" if row.get("kind") == "interval" else "epoch"
        for t in self.trackers:
            t.log_curve({f"{prefix}/loss": row["loss"], f"{prefix}/acc": row["train_acc"],
                         f"{prefix}/skipped_steps": row["skipped_steps"]}, self.step)

    def task_done(self, R: np.ndarray, tasks_done: int) -> None:
        self.offset = self.step
        for t in self.trackers:
            t.log_R(R, tasks_done, self.step)

    def final(self, row: dict, out_dir: Path) -> None:
        files = sorted(p for p in Path(out_dir).iterdir() if p.suffix in (".csv", ".png") and p.is_file())
        for t in self.trackers:
            t.log_final(row, files, self.step)

    def finish(self, status: str) -> None:
        for t in self.trackers:
            t.finish(status)
