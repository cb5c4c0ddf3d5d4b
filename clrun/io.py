"""All file output of a run: atomic CSV/YAML/torch writes, so a crash never leaves half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

R_FILE, METRICS_FILE, LOG_FILE = "R.csv", "metrics.csv", "log.csv"

METRICS_COLUMNS = [
    "benchmark", "scenario", "method", "regularizers", "lam", "buffer", "seed", "n_tasks", "data_source",
    "eval_split", "measure", "status", "tasks_done", "ACC", "forgetting", "BWT", "FWT", "learning_accuracy",
    "wall_seconds", "train_seconds", "eval_seconds", "peak_rss_mb", "parameters", "buffer_bytes", "error",
    "device", "clrun_version",
]
# kind: "epoch" (one row per epoch) or "interval" (every log_every steps: the curve); step: steps into the task
LOG_COLUMNS = ["task", "epoch", "kind", "step", "steps", "loss", "train_acc", "seconds", "skipped_steps"]
INTERFERENCE_FILE, SPECTRUM_FILE, SPECTRUM_LAYERS_FILE = "interference.csv", "spectrum.csv", "spectrum_layers.csv"
INTERFERENCE_COLUMNS = ["task", "step", "old_task", "lr", "old_loss", "new_loss", "cosine", "grad_dot",
                        "neg_pair_fraction", "predicted_dloss", "linearised_dloss", "observed_dloss"]
SPECTRUM_COLUMNS = ["after_task", "index", "eigenvalue", "trace", "topk_share", "top5pct_share",
                    "top5pct_directions", "n_samples", "n_params"]
SPECTRUM_LAYER_COLUMNS = ["after_task", "layer", "params", "mass", "mass_share"]


def atomic_write_text(path: Path | str, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path | str, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temp file beside ``path``, then os.replace: readers see the old file or the new."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_temp_files(out_dir: Path | str) -> list[Path]:
    """The temp files of writes a kill interrupted (``.R.csv.x1y2.tmp``, ``.checkpoint.pt.x1y2.tmp``)."""
    found = [p for p in Path(out_dir).glob(".*.tmp") if p.is_file()]
    for p in found:
        p.unlink()
    return found


def png_ok(path: Path) -> bool:
    """A PNG that ends with its IEND chunk: a file cut short by a kill does not."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return data.startswith(b"\x89PNG") and data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")


def atomic_write_csv(path: Path | str, frame: pd.DataFrame, index: bool = False) -> None:
    atomic_write_text(path, frame.to_csv(index=index, float_format="%.6g"))


def r_frame(R: np.ndarray) -> pd.DataFrame:
    """R (T+1, T) with rows ``init, after_task_1..T`` and columns ``task_1..T``."""
    T = R.shape[1]
    return pd.DataFrame(R, index=["init"] + [f"after_task_{i}" for i in range(1, T + 1)],
                        columns=[f"task_{j}" for j in range(1, T + 1)]).rename_axis("row")


def write_R(out_dir: Path, R: np.ndarray) -> None:
    atomic_write_csv(out_dir / R_FILE, r_frame(R), index=True)


def read_R(path: Path | str) -> np.ndarray:
    return pd.read_csv(path, index_col=0).to_numpy(dtype=float)


def write_metrics(out_dir: Path, row: dict) -> None:
    extra = [k for k in row if k not in METRICS_COLUMNS]
    frame = pd.DataFrame([row], columns=METRICS_COLUMNS + extra)
    atomic_write_csv(out_dir / METRICS_FILE, frame)


def write_log(out_dir: Path, rows: list[dict]) -> None:
    atomic_write_csv(out_dir / LOG_FILE, pd.DataFrame(rows, columns=LOG_COLUMNS))


def write_rows(out_dir: Path, name: str, rows: list[dict], columns: list[str]) -> None:
    """A diagnostics table (interference, spectrum) with its fixed columns."""
    atomic_write_csv(out_dir / name, pd.DataFrame(rows, columns=columns))


def write_arrays(out_dir: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    """A method's arrays (DGR's generated samples) as ``name.npz``."""
    atomic_write_bytes(Path(out_dir) / f"{name}.npz", lambda f: np.savez(f, **arrays))


def read_arrays(out_dir: Path | str, name: str) -> dict[str, np.ndarray] | None:
    path = Path(out_dir) / f"{name}.npz"
    if not path.exists():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def read_rows(out_dir: Path, name: str) -> list[dict]:
    path = Path(out_dir) / name
    return pd.read_csv(path).to_dict("records") if path.exists() else []


def read_metrics(out_dir: Path) -> dict | None:
    path = Path(out_dir) / METRICS_FILE
    return pd.read_csv(path).iloc[0].to_dict() if path.exists() else None


def record_not_started(cfg: DictConfig, out_dir: Path, error: str, job_files: Mapping[str, str] | None = None,
                       status: str = "interrupted") -> None:
    """metrics.csv (and the job's overrides) for a sweep job that never trained, so its summary lists it."""
    out_dir = Path(out_dir)
    if (out_dir / METRICS_FILE).exists() or not out_dir.is_dir():
        return  # another run's files are never replaced
    for name, text in (job_files or {}).items():
        if name.endswith("overrides.yaml") and not (out_dir / name).exists():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / name, text)
    target = str(OmegaConf.select(cfg, "method._target_", default=""))
    write_metrics(out_dir, {"method": target.rsplit(".", 1)[-1].lower(), "seed": cfg.get("seed"),
                            "status": status, "tasks_done": 0, "error": error})
