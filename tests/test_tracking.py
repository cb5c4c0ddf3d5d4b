"""Experiment trackers: what a run sends to TensorBoard, MLflow and W&B, read back with each one's own reader."""

import json
import struct
import subprocess

import pandas as pd
import pytest

from clrun.errors import ConfigError
from clrun.run import run
from tests.conftest import FAST, clrun_cmd, make_cfg

TRACKED = [*FAST, "benchmark.n_tasks=2", "iters=8", "log_every=2", "plots=true"]


def _wandb_records(run_dir):
    """The records of a W&B offline run, parsed with wandb's protobuf definitions from its transaction log
    (LevelDB's log framing: 32 KiB blocks, 7-byte record headers, after W&B's 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    data, pos, block = path.read_bytes(), 7, 32768
    assert data[:4] == b":W&B"
    chunks, pending = [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # the zero padding at a block's end
            pos += left - 7
            continue
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        else:
            chunks.append(pending + chunk)
    records = []
    for c in chunks:
        r = pb.Record()
        r.ParseFromString(c)
        records.append(r)
    return records


def test_one_run_reaches_tensorboard_mlflow_and_wandb(tmp_path):
    out = tmp_path / "run"
    row = run(make_cfg(*TRACKED, "logger=[tensorboard,mlflow,wandb]"), out)
    assert row["status"] == "completed"
    log = pd.read_csv(out / "log.csv")
    curve = log[log.kind == "interval"]

    # TensorBoard, through its own event reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    tb.Reload()
    assert [e.step for e in tb.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [round(e.value, 5) for e in tb.Scalars("train/loss")] == [round(v, 5) for v in curve.loss]
    assert [e.step for e in tb.Scalars("accuracy/task_1")] == [0, 1, 2]  # R's column 1: init, after 1, after 2
    assert tb.Scalars("final/ACC")[0].value == pytest.approx(row["ACC"], abs=1e-6)
    assert {"plots/R", "plots/task_accuracy", "plots/loss"} <= set(tb.Tags()["images"])
    assert "method._target_" in tb.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()

    # MLflow, through its client against the SQLite store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (ml,) = client.search_runs([client.get_experiment_by_name("clrun").experiment_id])
    assert ml.info.run_name == "run" and ml.info.status == "FINISHED"
    assert ml.data.params["method._target_"] == "clrun.methods.naive.Naive" and ml.data.params["seed"] == "0"
    assert [m.step for m in client.get_metric_history(ml.info.run_id, "train.loss")] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert ml.data.metrics["final.ACC"] == pytest.approx(row["ACC"], abs=1e-6)
    assert len(client.get_metric_history(ml.info.run_id, "accuracy.task_2")) == 3
    artifacts = {a.path for a in client.list_artifacts(ml.info.run_id)}
    assert {"R.csv", "metrics.csv", "log.csv", "R.png", "loss.png"} <= artifacts

    # W&B offline, its records read back
    records = _wandb_records(out)
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert start.run_group == "clrun" and start.display_name == "run"
    config = {u.key: json.loads(u.value_json) for u in start.config.update}
    assert config["method._target_"] == "clrun.methods.naive.Naive" and config["seed"] == 0
    history = [{i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history if "train/loss" in h] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert any("accuracy/task_1" in h and "tasks_done" in h for h in history)
    assert any("plots/R" in h for h in history)
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({(u.nested_key[0] if u.nested_key else u.key): u.value_json for u in r.summary.update})
    assert json.loads(summary["final/ACC"]) == pytest.approx(row["ACC"], abs=1e-6)
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert {"R.csv", "metrics.csv", "R.png"} <= {e.path for e in artifact.manifest.contents}


def test_a_sweep_is_one_experiment_with_a_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(clrun_cmd("-m", *TRACKED, "plots=false", "seed=0,1", "logger=[mlflow,wandb]",
                                    f"hydra.sweep.dir={sweep}"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["seed=0", "seed=1"]
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    groups = [r.run.run_group for job in ("seed=0", "seed=1") for r in _wandb_records(sweep / job)
              if r.WhichOneof("record_type") == "run"]
    assert groups == ["sweep", "sweep"]


def test_a_bad_tracker_setting_is_refused_before_the_run(tmp_path):
    with pytest.raises(ConfigError, match="logger.wandb.mode='sometimes' is not allowed"):
        run(make_cfg(*TRACKED, "logger=wandb", "logger.wandb.mode=sometimes"), tmp_path)
    assert not any(tmp_path.iterdir())
