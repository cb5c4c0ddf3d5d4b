import os
import signal
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from clrun.errors import CheckpointError, ClrunError, ConfigError, ResumeMismatch
from clrun.run import run
from tests.conftest import FAST, clrun_cmd, make_cfg
from tests.test_data import write_idx

# long enough per task (a few seconds) to be killed in the middle of one
SLOW_TASKS = [*FAST, "epochs=250", "benchmark.n_tasks=5"]


def _wait_for_tasks(out, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = out / "metrics.csv"
        if m.exists():
            try:
                if pd.read_csv(m).tasks_done[0] >= n:
                    return
            except (pd.errors.EmptyDataError, KeyError):
                pass
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process ended early"
        time.sleep(0.01)
    raise AssertionError(f"task {n} never finished")


def test_kill_9_in_task_3_then_resume_gives_the_uninterrupted_R(tmp_path):
    full = tmp_path / "full"
    run(make_cfg(*SLOW_TASKS), full)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(clrun_cmd(*SLOW_TASKS, f"hydra.run.dir={killed}"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_tasks(killed, 2, proc)
    time.sleep(0.2)  # into task 3
    proc.kill()
    proc.wait()
    m = pd.read_csv(killed / "metrics.csv")
    assert m.status[0] == "running" and m.tasks_done[0] == 2
    resumed = subprocess.run(clrun_cmd("--resume", str(killed)), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (killed / "R.csv").read_text() == (full / "R.csv").read_text()
    assert pd.read_csv(killed / "metrics.csv").status[0] == "completed"
    log = pd.read_csv(killed / "log.csv")
    assert log.task.tolist() == pd.read_csv(full / "log.csv").task.tolist()


@pytest.mark.parametrize("method", ["ewc", "er", "lwf", "si", "icarl", "dgr", "adapters method.task_inference=entropy",
                                    "mer method.replay_batch_size=2 method.beta=0.5 benchmark.n_train=40"])
def test_resume_restores_method_state(tmp_path, method):
    # stop after 2 of 4 tasks (iters cap), resume, compare with an uninterrupted run
    common = [*FAST, f"method={method}".split()[0], *method.split()[1:], "benchmark.n_tasks=5", "buffer=50", "lam=1"]
    full = tmp_path / "full"
    run(make_cfg(*common), full)
    part = tmp_path / "part"
    from clrun import learner as learner_mod

    original = learner_mod.Learner.train_task

    def stop_in_task_3(self, task_id, *a, **k):
        if task_id == 2:
            self.stop_requested = "SIGTERM"
        return original(self, task_id, *a, **k)

    learner_mod.Learner.train_task = stop_in_task_3
    try:
        row = run(make_cfg(*common), part)
    finally:
        learner_mod.Learner.train_task = original
    assert row["status"] == "interrupted" and row["tasks_done"] == 2
    run(make_cfg(*common, "resume=true"), part)
    assert (part / "R.csv").read_text() == (full / "R.csv").read_text()


def test_sigterm_marks_interrupted_and_leaves_a_resumable_directory(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(clrun_cmd(*SLOW_TASKS, "benchmark.n_tasks=2", f"hydra.run.dir={out}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_tasks(out, 1, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    m = pd.read_csv(out / "metrics.csv")
    assert m.status[0] == "interrupted" and "SIGTERM" in m.error[0]
    assert (out / "checkpoint.pt").exists()
    resumed = subprocess.run(clrun_cmd("--resume", str(out)), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert pd.read_csv(out / "metrics.csv").status[0] == "completed"


def test_a_resumed_sweep_with_a_changed_grid_matches_jobs_by_identity(tmp_path):
    # seed=0,1 ran; the grid becomes seed=1,2: seed 1 is found done in its own directory, seed 2 runs, and no
    # directory ends up holding one seed's rows under another seed's name
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "benchmark.n_tasks=2", f"hydra.sweep.dir={sweep}"]
    assert subprocess.run(clrun_cmd(*args, "seed=0,1"), capture_output=True, timeout=300).returncode == 0
    before = {d: (sweep / d / "metrics.csv").stat().st_mtime_ns for d in ("seed=0", "seed=1")}
    again = subprocess.run(clrun_cmd(*args, "seed=1,2", "resume=true"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already holds a completed run" in again.stdout + again.stderr
    assert {d: (sweep / d / "metrics.csv").stat().st_mtime_ns for d in ("seed=0", "seed=1")} == before
    for seed in (0, 1, 2):
        job = sweep / f"seed={seed}"
        assert pd.read_csv(job / "metrics.csv").seed[0] == seed
        assert f"seed={seed}" in (job / ".hydra" / "overrides.yaml").read_text()
    summary = pd.read_csv(sweep / "summary.csv")
    assert sorted(summary.seed) == [0, 1, 2] and (summary.status == "completed").all()


def test_checkpoint_false_writes_no_checkpoint(tmp_path):
    run(make_cfg(*FAST, "benchmark.n_tasks=2", "checkpoint=false"), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists() and (tmp_path / "R.csv").exists()


# ---- a catalogue of bad input: each exits non-zero, before training, with a one-line message
def _bad_inputs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    corrupt = tmp_path / "corrupt"
    write_idx(corrupt, truncate=True)
    bad_label = tmp_path / "bad_label"
    write_idx(bad_label)
    labels = bad_label / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1] + bytes([200]))  # right size, a label no digit has
    short_labels = tmp_path / "short_labels"
    write_idx(short_labels)
    labels = short_labels / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">ii", 2049, 59) + labels.read_bytes()[8:-1])  # consistent file, one label short
    return [
        (["method=nosuch"], 1, "method/nosuch"),
        (["benchmark=nosuch"], 1, "benchmark/nosuch"),
        (["scenario=nosuch"], 1, "scenario/nosuch"),
        (["model=nosuch"], 1, "model/nosuch"),
        (["nosuchkey=1"], 1, "Could not override 'nosuchkey'"),
        (["lam=-1"], 2, "lam=-1 is not allowed"),
        (["lam=abc"], 2, "lam='abc' is not allowed"),
        (["buffer=-5"], 2, "buffer=-5 is not allowed"),
        (["lr=0"], 2, "lr=0 is not allowed: use a finite number > 0"),
        (["lr=-0.1"], 2, "lr=-0.1 is not allowed"),
        (["epochs=0"], 2, "epochs=0 is not allowed: use an integer >= 1"),
        (["epochs=1.5"], 2, "epochs=1.5 is not allowed"),
        (["batch_size=0"], 2, "batch_size=0 is not allowed"),
        (["batch_size=big"], 2, "batch_size='big' is not allowed"),
        (["iters=0"], 2, "iters=0 is not allowed"),
        (["seed=-1"], 2, "seed=-1 is not allowed"),
        (["benchmark.n_tasks=11"], 2, "benchmark.n_tasks=11 is not allowed"),
        (["benchmark.n_tasks=3"], 2, "benchmark.n_tasks=3 must divide the 10 classes"),
        (["benchmark.n_tasks=0"], 2, "benchmark.n_tasks=0 is not allowed"),
        (["method=icarl", "scenario=domain_il"], 2, "does not support scenario=domain_il"),
        (["method=er", "buffer=0"], 2, "buffer=0 is not allowed for er"),
        (["method=er", "buffer=5", "method.buffer_policy=class_balanced"], 2, "smaller than the 10 classes"),
        (["method=er", "method.buffer_policy=fifo"], 2, "buffer_policy='fifo' is not allowed"),
        (["method=ewc", "method.fisher=bogus"], 2, "method.fisher='bogus' is not allowed"),
        (["device=tpu"], 2, "device='tpu' is not allowed"),
        (["on_nan=maybe"], 2, "on_nan='maybe' is not allowed"),
        ([f"data.root={a_file}"], 2, "is not a directory"),
        (["benchmark=permuted_mnist", f"data.root={corrupt}"], 2, "train-images-idx3-ubyte is corrupt or truncated"),
        # optimiser settings fail before training, not at task 1
        (["optimizer.momentum=-1"], 2, "optimizer.momentum=-1 is not allowed"),
        (["optimizer.weight_decay=-1"], 2, "optimizer.weight_decay=-1 is not allowed"),
        (["optimizer.lr=abc"], 2, "optimizer.lr='abc' is not allowed"),
        (["optimizer=adam", "optimizer.betas=[0.9,1.5]"], 2, "optimizer.betas=[0.9, 1.5] is not allowed"),
        (["optimizer=adam", "+optimizer.nosuch=1"], 2, "optimizer=Adam refuses its settings"),
        # resources: memory, threads, devices, directories
        (["method=er", "buffer=1000000000"], 2, "buffer=1000000000 needs about"),
        (["threads=100000"], 2, "threads=100000 is not allowed"),
        ([f"device=cuda:{torch.cuda.device_count()}"], 2, "is not available"),
        ([f"hydra.run.dir={a_file}/run"], 2, "is a file, not a directory"),
        # values read strictly: booleans, finite numbers, each method once
        (["checkpoint=no"], 2, "checkpoint='no' is not allowed: use true or false"),
        (["quiet=maybe"], 2, "quiet='maybe' is not allowed: use true or false"),
        (["lam=inf"], 2, "lam=inf is not allowed: use a finite number"),
        (["lam=1e400"], 2, "lam=inf is not allowed"),
        (["skip_limit=2"], 2, "skip_limit=2 is not allowed"),
        (["method=ewc", "+regularizers=[ewc]"], 2, "ewc is given twice"),
        # a setting the class does not take: Hydra's instantiate error as one line naming the group
        (["+method.nosuch=1"], 2, "method: clrun.methods.naive.Naive refuses its settings"),
        # dataset contents checked, not just file sizes
        (["benchmark=permuted_mnist", f"data.root={bad_label}"], 2, "has labels from 0 to 200"),
        (["benchmark=permuted_mnist", f"data.root={short_labels}"], 2, "has 60 images but 59 labels"),
    ]


# the command line's own checks, and one representative of run()'s: exit status, one line, no traceback
CLI_CASES = {"method=nosuch", "nosuchkey=1", "lam=abc", "optimizer.momentum=-1", "checkpoint=no",
             "benchmark.n_tasks=3"}


def _needs_cli(overrides):
    return bool(CLI_CASES & set(overrides)) or any(o.startswith("hydra.") for o in overrides)


def test_bad_inputs_fail_fast_with_a_clear_one_line_message(tmp_path):
    cases = [c for c in _bad_inputs(tmp_path) if _needs_cli(c[0])]
    assert len(cases) >= 6

    def attempt(case):
        overrides, code, message = case
        args = [*FAST, *overrides] if "benchmark=permuted_mnist" not in overrides else ["quiet=true", *overrides]
        if not any(o.startswith("hydra.run.dir") for o in overrides):
            args.append(f"hydra.run.dir={tmp_path / 'runs' / str(hash(tuple(overrides)))}")
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        proc = subprocess.run(clrun_cmd(*args), capture_output=True, text=True, timeout=300, env=env)
        return case, proc

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(attempt, cases))
    for (overrides, code, message), proc in results:
        assert proc.returncode == code, (overrides, proc.returncode, proc.stderr[-500:])
        assert message in proc.stderr, (overrides, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr, overrides
        if code == 2:  # ours: one line, before any training
            assert proc.stderr.strip().splitlines()[-1].startswith("clrun: error: "), overrides
            assert "after task" not in proc.stderr


def test_every_bad_setting_is_refused_by_run_before_any_file_is_written(tmp_path):
    cases = [c for c in _bad_inputs(tmp_path) if not _needs_cli(c[0])]
    assert len(cases) >= 39
    for i, (overrides, code, message) in enumerate(cases):
        base = FAST if "benchmark=permuted_mnist" not in overrides else ["quiet=true", "plots=false"]
        if code == 1:  # Hydra's own refusal (an unknown group option): composing fails, nothing runs
            with pytest.raises(Exception, match=message.split("/")[-1]):
                make_cfg(*base, *overrides)
            continue
        out = tmp_path / "run" / str(i)
        with pytest.raises(ClrunError) as err:
            run(make_cfg(*base, *overrides), out)
        assert message in str(err.value) and "\n" not in str(err.value), (overrides, str(err.value))
        assert not out.exists() or not any(out.iterdir()), (overrides, list(out.iterdir()))


def test_deterministic_mode_runs_and_gives_the_same_R_on_cpu(tmp_path):
    run(make_cfg(*FAST, "method=er", "buffer=50"), tmp_path / "plain")
    proc = subprocess.run(clrun_cmd(*FAST, "method=er", "buffer=50", "deterministic=true",
                                    f"hydra.run.dir={tmp_path / 'det'}"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "det" / "R.csv").read_text() == (tmp_path / "plain" / "R.csv").read_text()


# ---- checkpoints that cannot execute code
def _partial_run(tmp_path, *overrides, name="part", stop_in=2):
    """A run stopped (as by SIGTERM) at the start of task ``stop_in`` + 1: a checkpoint after ``stop_in`` tasks."""
    from clrun import learner as learner_mod

    original = learner_mod.Learner.train_task

    def stop(self, task_id, *a, **k):
        if task_id == stop_in:
            self.stop_requested = "SIGTERM"
        return original(self, task_id, *a, **k)

    learner_mod.Learner.train_task = stop
    try:
        row = run(make_cfg(*FAST, "benchmark.n_tasks=5", *overrides), tmp_path / name)
    finally:
        learner_mod.Learner.train_task = original
    assert row["status"] == "interrupted"
    return tmp_path / name


class _Payload:
    """What a hostile checkpoint holds: unpickling it would touch ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_never_unpickles_code_from_a_checkpoint(tmp_path):
    part = _partial_run(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"format": "clrun-checkpoint", "version": 2, "state": _Payload(marker)}, part / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="holds pickled Python objects.*clrun-checkpoint upgrade"):
        run(make_cfg(*FAST, "benchmark.n_tasks=5", "resume=true"), part)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "damaged or truncated"), (b"garbage" * 100, "damaged or truncated"), (None, "damaged or truncated"),
    ("not_clrun", "is not a clrun checkpoint")])
def test_a_checkpoint_that_is_not_clruns_is_a_clear_error(tmp_path, content, message):
    part = _partial_run(tmp_path)
    path = part / "checkpoint.pt"
    if content is None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short mid-file
    elif content == "not_clrun":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        run(make_cfg(*FAST, "benchmark.n_tasks=5", "resume=true"), part)


@pytest.mark.parametrize("method", ["er", "lwf"])  # a replay buffer object; a snapshot model
def test_checkpoints_hold_only_tensors_and_plain_containers(tmp_path, method):
    part = _partial_run(tmp_path, f"method={method}", "buffer=50")
    payload = torch.load(part / "checkpoint.pt", weights_only=True)  # raises on anything else
    assert payload["format"] == "clrun-checkpoint" and payload["version"] == 2
    assert payload["identity"]["seed"] == 0 and "method._target_" in payload["identity"]


def test_a_checkpoint_from_before_format_2_says_how_to_upgrade_and_then_resumes_identically(tmp_path):
    from clrun import checkpoint

    common = ["benchmark.n_tasks=5", "method=er", "buffer=50"]
    full = tmp_path / "full"
    run(make_cfg(*FAST, *common), full)
    part = _partial_run(tmp_path, *common[1:])
    payload = torch.load(part / "checkpoint.pt", weights_only=True)
    modules = frozenset({"clrun.methods.er"})
    torch.save(checkpoint.decode(payload["state"], modules), part / "checkpoint.pt")  # the old pickled layout
    with pytest.raises(CheckpointError, match=f"clrun-checkpoint upgrade {part}"):
        run(make_cfg(*FAST, *common, "resume=true"), part)
    checkpoint.upgrade(part)
    run(make_cfg(*FAST, *common, "resume=true"), part)
    assert (part / "R.csv").read_text() == (full / "R.csv").read_text()


def test_resume_refuses_a_crafted_overrides_file(tmp_path):
    from clrun.app import CONF_DIR, resume_overrides

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- method._target_=clrun.io.atomic_write_text\n")
    with pytest.raises(SystemExit):
        resume_overrides(run_dir, [Path(CONF_DIR)])
    (run_dir / ".hydra" / "overrides.yaml").write_text("- method=ewc\n- method._target_=clrun.methods.ewc.EWC\n")
    assert resume_overrides(run_dir, [Path(CONF_DIR)]) == ["method=ewc", "method._target_=clrun.methods.ewc.EWC"]
    for corrupt in ("{not: a list}", "- 'lr=['\n", "[[["):
        (run_dir / ".hydra" / "overrides.yaml").write_text(corrupt)
        with pytest.raises(SystemExit):
            resume_overrides(run_dir, [Path(CONF_DIR)])


def test_resume_cli_refusals_print_one_line_and_change_no_file(tmp_path):
    part = _partial_run(tmp_path)
    (part / ".hydra").mkdir()
    (part / ".hydra" / "overrides.yaml").write_text(
        "- benchmark=synthetic\n- device=cpu\n- lr=0.1\n- model.hidden=[64]\n- benchmark.n_tasks=5\n")
    crafted = tmp_path / "crafted"
    (crafted / ".hydra").mkdir(parents=True)
    (crafted / ".hydra" / "overrides.yaml").write_text(f"- method._target_=clrun.io.atomic_write_text\n"
                                                       f"- +method.path={tmp_path / 'written'}\n")

    def files(d):
        return {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    before = files(part)
    commands = [("--resume", str(part), "lr=abc"), ("--resume", str(part), "seed=1"),
                ("--resume", str(part), "model.hidden=[32]"), ("--resume", str(part), "benchmark.n_tasks=2"),
                ("--resume", str(crafted))]

    def attempt(args):
        return args, subprocess.run(clrun_cmd(*args), capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(attempt, commands))
    for args, proc in results:
        assert proc.returncode == 2, (args, proc.stderr[-400:])
        assert proc.stderr.strip().splitlines()[-1].startswith("clrun: error: "), (args, proc.stderr[-400:])
        assert "Traceback" not in proc.stderr
    assert "seed: 0 -> 1" in results[1][1].stderr and "model.hidden" in results[2][1].stderr
    assert "sets method._target_=clrun.io.atomic_write_text" in results[4][1].stderr
    assert files(part) == before
    assert not (tmp_path / "written").exists()


def test_resume_with_other_settings_names_the_keys_and_changes_nothing(tmp_path):
    part = _partial_run(tmp_path)
    before = {p: p.read_bytes() for p in part.iterdir() if p.is_file()}
    for overrides, key in ((["seed=1"], "seed: 0 -> 1"), (["method=ewc"], "method._target_"),
                           (["lr=0.05"], "lr: 0.1 -> 0.05")):
        with pytest.raises(ResumeMismatch, match=key):
            run(make_cfg(*FAST, "benchmark.n_tasks=5", "resume=true", *overrides), part)
    done = tmp_path / "done"
    run(make_cfg(*FAST, "benchmark.n_tasks=2"), done)
    with pytest.raises(ResumeMismatch, match="seed"):  # a completed run is checked too, not just returned
        run(make_cfg(*FAST, "benchmark.n_tasks=2", "resume=true", "seed=1"), done)
    assert {p: p.read_bytes() for p in part.iterdir() if p.is_file()} == before
    run(make_cfg(*FAST, "benchmark.n_tasks=5", "resume=true", "threads=1", "quiet=false"), part)  # not identity


def test_a_new_run_never_overwrites_a_directory_holding_one(tmp_path):
    run(make_cfg(*FAST, "benchmark.n_tasks=2"), tmp_path)
    before = (tmp_path / "R.csv").read_text()
    with pytest.raises(ConfigError, match="already holds a run .*resume=true"):
        run(make_cfg(*FAST, "benchmark.n_tasks=2", "seed=1"), tmp_path)
    assert (tmp_path / "R.csv").read_text() == before


# ---- honest statuses
def test_on_nan_skip_stops_as_diverged_when_most_steps_are_skipped(tmp_path):
    row = run(make_cfg(*FAST, "lr=1e6", "on_nan=skip", "iters=20"), tmp_path)
    assert row["status"] == "diverged" and "skip_limit=0.1" in row["error"]
    R = pd.read_csv(tmp_path / "R.csv", index_col=0)
    assert R.loc["init"].notna().all()  # the untrained row survives a run that stops in task 1


def test_an_epoch_with_every_step_skipped_logs_no_loss(tmp_path):
    run(make_cfg(*FAST, "lr=1e6", "on_nan=skip", "skip_limit=1", "iters=20", "benchmark.n_tasks=2"), tmp_path)
    log = pd.read_csv(tmp_path / "log.csv")
    assert (log.skipped_steps > 0).any()
    empty = log[log.steps == 0]
    assert len(empty) and empty.loss.isna().all() and empty.train_acc.isna().all()  # never the fake 0.0


@pytest.mark.parametrize("on_nan", ["skip", "stop"])
def test_non_finite_weights_from_a_finite_loss_are_caught(tmp_path, on_nan):
    row = run(make_cfg(*FAST, "method=ewc", "lam=1e15", "lr=0.5", f"on_nan={on_nan}", "benchmark.n_tasks=5"),
              tmp_path)
    assert row["status"] == "diverged", row
    assert "non-finite" in row["error"]


def test_sigint_stops_the_whole_sweep_and_still_writes_its_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(clrun_cmd("-m", *SLOW_TASKS, "benchmark.n_tasks=2", "seed=0,1,2",
                                      f"hydra.sweep.dir={sweep}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_tasks(sweep / "seed=0", 0, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 3, stderr[-800:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 3 and (summary.status == "interrupted").all(), summary[["status", "error"]]
    assert summary.error.str.contains("not started").sum() == 2


# ---- leftovers of a kill
def test_temp_files_are_removed_and_a_cut_plot_is_redrawn_on_resume(tmp_path):
    part = _partial_run(tmp_path, "plots=true")
    (part / ".checkpoint.pt.x1y2.tmp").write_bytes(b"\0" * 1000)  # a kill during the checkpoint write
    run(make_cfg(*FAST, "benchmark.n_tasks=5", "resume=true", "plots=true"), part)
    assert not list(part.glob(".*.tmp"))
    png = part / "R.png"
    good = png.read_bytes()
    png.write_bytes(good[: len(good) // 3])  # a kill while plotting
    run(make_cfg(*FAST, "benchmark.n_tasks=5", "resume=true", "plots=true"), part)
    assert png.read_bytes().endswith(b"IEND\xaeB`\x82")


def test_a_full_disk_is_one_clear_error(tmp_path, monkeypatch):
    import shutil as shutil_mod

    from clrun import io as io_mod

    monkeypatch.setattr(shutil_mod, "disk_usage", lambda p: shutil_mod._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(ConfigError, match="MiB free, a checkpoint needs about"):
        run(make_cfg(*FAST, "benchmark.n_tasks=2"), tmp_path / "a")
    monkeypatch.undo()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_mod, "write_log", full)
    with pytest.raises(ConfigError, match="cannot write the run's files .*No space left on device"):
        run(make_cfg(*FAST, "benchmark.n_tasks=2"), tmp_path / "b")


def test_an_unwritable_run_directory_is_refused_before_anything_else(tmp_path, monkeypatch):
    from clrun import checks

    monkeypatch.setattr(checks.os, "access", lambda path, mode: False)  # as a non-root user sees a 0o500 dir
    with pytest.raises(ConfigError, match="is not writable"):
        run(make_cfg(*FAST), tmp_path / "ro")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run(make_cfg(*FAST), a_file)


def test_method_state_round_trips_through_the_safe_format_and_code_is_refused():
    from collections import OrderedDict

    import numpy as np

    from clrun import checkpoint

    gen = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(3, 2)
    state = {"fisher": [torch.ones(2)], "rng": ("MT19937", np.arange(4, dtype=np.uint32), 1), "seen": {1, 2},
             "order": OrderedDict(a=1), "gen": gen, "old_model": layer, "by_task": {0: torch.zeros(1)}}
    payload = checkpoint.encode(state)
    buf = __import__("io").BytesIO()
    torch.save(payload, buf)
    buf.seek(0)
    back = checkpoint.decode(torch.load(buf, weights_only=True), frozenset())
    assert back["rng"][1].dtype == np.uint32 and back["rng"][1].tolist() == [0, 1, 2, 3]
    assert back["seen"] == {1, 2} and isinstance(back["order"], OrderedDict) and 0 in back["by_task"]
    assert torch.equal(back["gen"].get_state(), gen.get_state())
    assert isinstance(back["old_model"], torch.nn.Linear)
    assert torch.equal(back["old_model"](torch.ones(1, 3)), layer(torch.ones(1, 3)))
    with pytest.raises(CheckpointError, match=r"state.hook is a function"):
        checkpoint.encode({"hook": lambda: 0})
    with pytest.raises(CheckpointError, match="refusing to load it"):
        checkpoint.decode({"__object__": "os:_wrap_close", "state": {}}, frozenset())


def test_sweep_job_directories_are_named_by_their_overrides():
    from clrun.app import job_dir_name

    assert job_dir_name("lam=10,seed=1") == "lam=10,seed=1"
    assert job_dir_name("") == "job"
    a, b = job_dir_name("model.hidden=[64]"), job_dir_name("model.hidden=(64)")
    assert a != b and "/" not in job_dir_name("data.root=/a/b") and "[" not in a
    assert len(job_dir_name("lam=" + "1" * 300)) <= 120


def test_resume_refuses_other_data_than_the_run_had(tmp_path):
    part = _partial_run(tmp_path)
    metrics = pd.read_csv(part / "metrics.csv")
    metrics.loc[0, "data_source"] = "embedded-5k"  # as if the run had started without the full data
    metrics.to_csv(part / "metrics.csv", index=False)
    with pytest.raises(ResumeMismatch, match="data_source=embedded-5k"):
        run(make_cfg(*FAST, "benchmark.n_tasks=5", "resume=true"), part)


def test_wall_time_adds_up_across_a_resume(tmp_path):
    part = _partial_run(tmp_path, "epochs=40")  # two tasks of training before the stop
    run(make_cfg(*FAST, "benchmark.n_tasks=5", "epochs=40", "resume=true"), part)
    m = pd.read_csv(part / "metrics.csv").iloc[0]
    assert m.status == "completed" and m.wall_seconds >= m.train_seconds + m.eval_seconds


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="per-job peak memory needs Linux")
def test_peak_memory_is_the_jobs_own_not_the_processes(tmp_path):
    import resource

    import numpy as np

    big = np.ones(5 * 10**7)  # 400 MB touched before the job: a sweep's earlier job
    del big
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = run(make_cfg(*FAST, "benchmark.n_tasks=2"), tmp_path)
    assert row["peak_rss_mb"] < lifetime - 300
