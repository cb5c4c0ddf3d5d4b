import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from clrun.run import run
from tests.conftest import FAST, clrun_cmd, make_cfg
from tests.test_data import write_idx

# long enough per task (a few seconds) to be killed in the middle of one
SLOW_TASKS = [*FAST, "epochs=1000", "benchmark.n_tasks=5"]


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


@pytest.mark.parametrize("method", ["ewc", "er", "lwf", "si", "icarl"])
def test_resume_restores_method_state(tmp_path, method):
    # stop after 2 of 4 tasks (iters cap), resume, compare with an uninterrupted run
    common = [*FAST, f"method={method}", "benchmark.n_tasks=5", "buffer=50", "lam=1"]
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


def test_resumed_sweep_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "seed=0,1", "benchmark.n_tasks=2", f"hydra.sweep.dir={sweep}"]
    assert subprocess.run(clrun_cmd(*args), capture_output=True, timeout=300).returncode == 0
    before = {i: (sweep / str(i) / "metrics.csv").stat().st_mtime_ns for i in range(2)}
    again = subprocess.run(clrun_cmd(*args, "resume=true"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already holds a completed run" in again.stdout + again.stderr
    assert {i: (sweep / str(i) / "metrics.csv").stat().st_mtime_ns for i in range(2)} == before


def test_checkpoint_false_writes_no_checkpoint(tmp_path):
    run(make_cfg(*FAST, "benchmark.n_tasks=2", "checkpoint=false"), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists() and (tmp_path / "R.csv").exists()


# ---- a catalogue of bad input: each exits non-zero, before training, with a one-line message
def _bad_inputs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    corrupt = tmp_path / "corrupt"
    write_idx(corrupt, truncate=True)
    return [
        (["method=nosuch"], 1, "method/nosuch"),
        (["benchmark=nosuch"], 1, "benchmark/nosuch"),
        (["scenario=nosuch"], 1, "scenario/nosuch"),
        (["model=nosuch"], 1, "model/nosuch"),
        (["nosuchkey=1"], 1, "Could not override 'nosuchkey'"),
        (["lam=-1"], 2, "lam=-1 is not allowed"),
        (["lam=abc"], 2, "lam='abc' is not allowed"),
        (["buffer=-5"], 2, "buffer=-5 is not allowed"),
        (["lr=0"], 2, "lr=0 is not allowed: use a number > 0"),
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
    ]


def test_bad_inputs_fail_fast_with_a_clear_one_line_message(tmp_path):
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 20

    def attempt(case):
        overrides, code, message = case
        args = [*FAST, *overrides] if "benchmark=permuted_mnist" not in overrides else ["quiet=true", *overrides]
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        proc = subprocess.run(clrun_cmd(*args, f"hydra.run.dir={tmp_path / 'runs' / str(hash(tuple(overrides)))}"),
                              capture_output=True, text=True, timeout=300, env=env)
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


def test_deterministic_mode_runs_and_gives_the_same_R_on_cpu(tmp_path):
    run(make_cfg(*FAST, "method=er", "buffer=50"), tmp_path / "plain")
    proc = subprocess.run(clrun_cmd(*FAST, "method=er", "buffer=50", "deterministic=true",
                                    f"hydra.run.dir={tmp_path / 'det'}"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "det" / "R.csv").read_text() == (tmp_path / "plain" / "R.csv").read_text()
