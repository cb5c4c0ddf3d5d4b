"""The ``clrun`` console script: Hydra composes the config, :func:`clrun.run.run` does the work."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import hydra
from hydra import compose as compose_hydra
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from clrun import io, papers, stop
from clrun.errors import ClrunError
from clrun.metrics import LOWER_IS_BETTER
from clrun.report import SweepSummary

_WARNED: set[str] = set()
_NOTES: list[str] = []  # what the command line was completed with, said once its settings are accepted
_NOT_A_RUN = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version"}
JOB_STATUSES: list[str] = []  # the statuses of the jobs this process ran: a sweep's exit code
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("clrun")


@dataclass
class JobSpec:
    """One job of a command, checked and ready to run: its config, directory, sweep and Hydra's files."""

    cfg: DictConfig
    out_dir: Path
    sweep_dir: Path | None
    job_files: dict[str, str]
    direction: object  # the sweeper's optimisation direction(s), for :func:`objective`


def prepare_job(cfg: DictConfig) -> JobSpec | None:
    """The job Hydra has composed into ``cfg`` (inside its job context), with its paper preset's settings; None
    for a sweep job the preset refuses (recorded in its directory; a single run exits with the message)."""
    hc = HydraConfig.get()
    sweeping = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if cfg.threads is None and n_jobs:  # parallel jobs share the cores: jobs x threads = cores
        cores = os.cpu_count() or 1
        cfg.threads = max(1, cores // (cores if n_jobs < 0 else n_jobs))
    try:
        papers.apply(cfg, list(hc.overrides.task), hc.runtime.choices)
    except ClrunError as err:
        if not sweeping:
            fail(str(err))
        _record_failure(cfg, out_dir, err, _job_files(cfg, hc))
        JOB_STATUSES.append("refused")  # a sweep records the refused job and goes on
        print(f"clrun: error: {err}", file=sys.stderr)
        return None
    while _NOTES:
        print(f"clrun: {_NOTES.pop(0)}", file=sys.stderr)
    for warning in unused_settings(cfg, list(hc.overrides.task)):
        if warning not in _WARNED:  # once per sweep, not once per job
            _WARNED.add(warning)
            print(f"clrun: warning: {warning}", file=sys.stderr)
    return JobSpec(cfg, out_dir, Path(hc.sweep.dir) if sweeping else None, _job_files(cfg, hc),
                   OmegaConf.select(hc, "sweeper.direction"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | tuple[float, float]:
    spec = prepare_job(cfg)
    if spec is None:
        return objective(None, OmegaConf.select(HydraConfig.get(), "sweeper.direction"))
    return _hydra_job(spec)


def run_stacked(specs: list[JobSpec]) -> list[float | tuple[float, float]]:
    """Jobs that differ only in their seed, trained as one stacked model where they can be (clrun.vectorized;
    ``hydra/launcher=stacked``); their objectives. Each keeps its own run directory and status."""
    from clrun import vectorized

    if stop.stop_signal() or len(specs) < 2:  # as one job each: the sweep's stop, or nothing to stack
        return [_hydra_job(spec) for spec in specs]
    try:
        rows, reason = vectorized.run_seeds([s.cfg for s in specs], [s.out_dir for s in specs],
                                            [s.job_files for s in specs], specs[0].sweep_dir)
    except Exception as err:  # noqa: BLE001 - a bad command is refused, anything else failed; the sweep goes on
        status = _sweep_job_error(err, [(s.cfg, s.out_dir, s.job_files) for s in specs])
        JOB_STATUSES.extend([status] * len(specs))
        return [objective(None, s.direction) for s in specs]
    if reason and reason not in _WARNED:
        _WARNED.add(reason)
        print(f"clrun: note: seeds run one after another, not stacked: {reason}", file=sys.stderr)
    for row in rows:
        JOB_STATUSES.append(str(row["status"]))
    return [objective(row, s.direction) for row, s in zip(rows, specs)]


def start_worker() -> None:
    """A launcher's worker process's first task: import what training needs while the jobs are prepared."""
    import atexit

    import torch

    # a spawned worker leaves by sys.exit, and tearing down an interpreter that holds torch takes about 1 s that
    # the sweep waits for; the worker's runs have written and closed their files by then
    atexit.register(_exit_now)

    from clrun import vectorized  # noqa: F401

    # torch's first optimiser imports torch._dynamo, about 1.4 s on a 2-core CPU: paid here, not by a run
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def _exit_now() -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_stacked_unit(specs: list[JobSpec]) -> tuple[list[float | tuple[float, float]], list[str]]:
    """:func:`run_stacked` in a worker process (``hydra/launcher=stacked hydra.launcher.n_jobs=N``): the
    objectives and the jobs' statuses, which the launching process counts."""
    stop.handle_stop_signals()  # a Ctrl-C reaches the workers too: their runs stop and write what they have
    JOB_STATUSES.clear()
    values = run_stacked(specs)
    return values, list(JOB_STATUSES)


def _hydra_job(spec: JobSpec) -> float | tuple[float, float]:
    status, row = _run_job(spec.cfg, spec.out_dir, spec.sweep_dir, spec.job_files)
    JOB_STATUSES.append(status)
    return objective(row, spec.direction)


def objective(row: dict | None, direction) -> float | tuple[float, float]:
    """What an optimising sweeper reads: ACC; with two directions (``hydra/sweeper=optuna
    'hydra.sweeper.direction=[maximize,minimize]'``), (ACC, forgetting) for a Pareto front. A job that did not
    complete (diverged, failed) is the worst point, ACC 0 and forgetting 1: the study steers away from it and
    goes on (the Optuna sweeper stops on a NaN), while the job's own CSVs say what happened. On a regression
    stream ACC is the mean squared error (minimise it): a job that did not complete there gets 1e30 for both."""
    done = row is not None and row.get("status") == "completed"
    error = row is not None and row.get("measure") in LOWER_IS_BETTER
    worst_acc, worst_fgt = (1e30, 1e30) if error else (0.0, 1.0)
    acc = float(row["ACC"]) if done else worst_acc
    fgt = float(row["forgetting"]) if done else worst_fgt
    # one direction is a string or the Optuna sweeper's Direction enum, two a list
    two = (OmegaConf.is_list(direction) or isinstance(direction, (list, tuple))) and len(direction) == 2
    return (acc, fgt) if two else acc


def _run_job(cfg: DictConfig, out_dir: Path, sweep_dir: Path | None,
             job_files: dict[str, str]) -> tuple[str, dict | None]:
    """One job (of the sweep in ``sweep_dir``, if any): its status in this process (refused: a bad command, or
    a directory holding another run) and its metrics row."""
    sweeping = sweep_dir is not None
    if stop.stop_signal():  # an earlier job of this sweep was interrupted: the rest are not started
        io.record_not_started(cfg, out_dir, f"not started: the sweep was stopped by {stop.stop_signal()}",
                              job_files)
        return "interrupted", None
    from clrun.run import run  # imported by the first job: a command refused before it, or --help, needs no torch

    try:
        row = run(cfg, out_dir, job_files=job_files, sweep_dir=sweep_dir)
    except Exception as err:
        if sweeping:  # one bad job must not stop the sweep; the summary lists it
            return _sweep_job_error(err, [(cfg, out_dir, job_files)]), None
        if isinstance(err, ClrunError) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            print(f"clrun: error: {err}", file=sys.stderr)
            sys.exit(2)
        raise
    if row["status"] != "completed" and not sweeping:
        print(f"clrun: run {row['status']}: {row.get('error', '')}", file=sys.stderr)
        sys.exit(3)
    return str(row["status"]), row


def _sweep_job_error(err: Exception, jobs: list[tuple[DictConfig, Path, dict[str, str] | None]]) -> str:
    """A sweep's job (or stack of jobs) that raised: re-raised with HYDRA_FULL_ERROR=1, else said (a bad command
    in one line, anything else with its traceback) and recorded in each job's directory; the jobs' status."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    refused = isinstance(err, ClrunError)
    if refused:
        print(f"clrun: error: {err}", file=sys.stderr)
    else:
        log.exception("job failed; the sweep goes on", exc_info=err)
    for cfg, out_dir, job_files in jobs:
        _record_failure(cfg, out_dir, err, job_files)
    return "refused" if refused else "failed"


def unused_settings(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """The top-level numbers a command sets that no method or regulariser of the run reads (``method=naive
    lam=10,1000``): jobs differing only in them would repeat the same run."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    text = OmegaConf.to_yaml(OmegaConf.create({"method": cfg.method, "regularizers": cfg.regularizers or {}}))
    method = str(OmegaConf.select(cfg, "method._target_", default="?")).rsplit(".", 1)[-1].lower()
    return [f"{key} has no effect on method={method}: neither its config nor a regulariser's reads {key}, so "
            f"runs that differ only in {key} are the same run"
            for key in ("lam", "buffer") if key in given and f"${{{key}}}" not in text]


def _job_files(cfg: DictConfig, hc: DictConfig) -> dict[str, str]:
    """What Hydra would write into ``.hydra/`` (config, its own config, the overrides): clrun writes them once the
    command has been checked, so a refused command leaves an existing run directory as it was."""
    return {".hydra/config.yaml": OmegaConf.to_yaml(cfg), ".hydra/hydra.yaml": OmegaConf.to_yaml({"hydra": hc}),
            ".hydra/overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task))}


def _record_failure(cfg: DictConfig, out_dir: Path, err: BaseException, job_files: dict[str, str]) -> None:
    """A metrics.csv for a job that failed before training wrote one (never over another run's files)."""
    if (out_dir / io.METRICS_FILE).exists():
        return
    io.record_not_started(cfg, out_dir, f"{type(err).__name__}: {err}", job_files, status="failed")


def job_dir_name(override_dirname: str) -> str:
    """A sweep job's directory, named by its overrides (``lam=10,seed=1``) rather than its index: a sweep
    resumed with a changed grid finds each job's own directory, and never another job's."""
    if not override_dirname:
        return "job"  # a sweep of one job
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", override_dirname)
    if name != override_dirname or len(name) > 120:  # the original text, kept apart by its hash
        name = f"{name[:100]}-{hashlib.sha1(override_dirname.encode()).hexdigest()[:8]}"
    return name


OmegaConf.register_new_resolver("clrun_job_dir", job_dir_name, replace=True)


def with_overrides(argv: list[str], extra: list[str], before: bool = False) -> list[str]:
    """``argv`` with ``extra`` overrides next to the command's own, after them (or ``before`` them, so that the
    command's win): Hydra's parser takes the overrides as one run of arguments, so one added after a flag
    (``--cfg job``) would be refused."""
    overrides = [i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")]
    at = (overrides[0] if before else overrides[-1] + 1) if overrides else len(argv)
    return [*argv[:at], *extra, *argv[at:]]


def user_search_path(argv: list[str], env: str | None) -> list[str]:
    """``argv`` with the directories of ``CLRUN_CONFIG_PATH`` (``os.pathsep``-separated) added to Hydra's
    config search path, after any ``hydra.searchpath`` the command line gives: a user's own config groups
    (conf/method/mine.yaml, ...) are found without touching clrun's."""
    dirs = [d for d in (env or "").split(os.pathsep) if d]
    if not dirs:
        return argv
    for d in dirs:
        if not Path(d).is_dir():
            fail(f"CLRUN_CONFIG_PATH={env} names {d}, which is not a directory")
    extra = [f"file://{Path(d).resolve()}" for d in dirs]
    given = [a for a in argv if a.startswith("hydra.searchpath=")]
    if given:
        listed = OverridesParser.create().parse_override(given[-1]).value()  # the user's list, as Hydra reads it
        rest = [a for a in argv if not a.startswith("hydra.searchpath=")]
        return with_overrides(rest, [f"hydra.searchpath=[{','.join([*map(str, listed), *extra])}]"])
    return with_overrides(argv, [f"hydra.searchpath=[{','.join(extra)}]"])


def main() -> None:
    """``clrun [overrides]``; ``clrun --resume DIR`` re-runs DIR's own overrides into DIR with resume=true."""
    # a user's method, stream or model is a module of their own project: importable from where clrun runs,
    # as with ``python -m``
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    sys.argv = [sys.argv[0], *user_search_path(sys.argv[1:], os.environ.get("CLRUN_CONFIG_PATH"))]
    if "--resume" in sys.argv:
        i = sys.argv.index("--resume")
        if i + 1 >= len(sys.argv):
            fail("--resume needs a run directory")
        run_dir = Path(sys.argv[i + 1])
        overrides = resume_overrides(run_dir, config_dirs(sys.argv))
        rest = sys.argv[1:i] + sys.argv[i + 2 :]
        # the directory's overrides first, so the command's own win; its directory and resume=true last
        argv = with_overrides(rest, overrides, before=True)
        sys.argv = [sys.argv[0], *with_overrides(argv, [f"hydra.run.dir={run_dir}", "resume=true"])]
    check_output_dirs(sys.argv[1:])
    sweeping = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    sys.argv = [sys.argv[0], *paper_arguments(sys.argv[1:], sweeping)]
    if sweeping:  # a Ctrl-C stops the whole sweep (the jobs left are not started), and its summary is written
        stop.handle_stop_signals()
        sys.argv = [sys.argv[0], *name_jobs_by_swept_keys(sys.argv[1:])]
    SweepSummary.outcome = None
    JOB_STATUSES.clear()
    _hydra_main()
    # this command's jobs when they ran in this process (the basic launcher), else the sweep directory's CSVs
    outcome = dict(Counter(JOB_STATUSES)) if JOB_STATUSES else SweepSummary.outcome or {}
    bad = {k: v for k, v in outcome.items() if k != "completed"}
    if sweeping and bad:
        print(f"clrun: error: not every job completed: {bad}", file=sys.stderr)
        sys.exit(3)


def paper_arguments(argv: list[str], sweeping: bool) -> list[str]:
    """``argv`` with old preset names replaced (and a warning each) and, for a paper preset run without ``-m``,
    the first value of each key its sweep varies that the command does not set, said on stderr."""
    try:
        argv, warnings = papers.rewrite_aliases(argv)
    except ClrunError as err:
        fail(str(err))
    for warning in warnings:
        print(f"clrun: warning: {warning}", file=sys.stderr)
    preset = papers.selects_paper(argv)
    if sweeping or preset is None or any(a in _NOT_A_RUN for a in argv):
        return argv
    overrides = [a for a in argv if "=" in a]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            composed = compose_hydra(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception:  # Hydra reports a bad override itself, with its own message
        return argv
    params = OmegaConf.to_container(composed.hydra.sweeper.params or {})
    given = {a.partition("=")[0].lstrip("+~") for a in overrides}
    cell = papers.first_cell(params, given)
    if cell:  # said once the preset has accepted the command
        _NOTES.append(f"paper={preset} without -m runs its first cell: {' '.join(cell)} (clrun -m paper={preset} "
                      "runs the whole sweep)")
    return with_overrides(argv, cell)


def compose(*overrides: str) -> DictConfig:
    """The config the clrun command would run for ``overrides``, with a paper preset's per-method settings
    applied, and no Hydra globals: for notebooks and tests (``run(compose("method=ewc"), out_dir)``)."""
    rewritten, _ = papers.rewrite_aliases(list(overrides))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose_hydra(config_name="config", overrides=rewritten, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return papers.apply(cfg, rewritten, choices)


def fail(message: str) -> NoReturn:
    """A refused command: one line on stderr, exit status 2, before any file is written."""
    print(f"clrun: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_output_dirs(argv: list[str]) -> None:
    """``hydra.run.dir`` / ``hydra.sweep.dir`` usable before Hydra creates them (it fails with a traceback)."""
    for a in argv:
        key, _, value = a.partition("=")
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or not value:
            continue
        path = Path(value)
        while not path.exists() and path != path.parent:
            path = path.parent
        if not path.is_dir():
            fail(f"{key}={value} is not allowed: {path} is a file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            fail(f"{key}={value} is not allowed: {path} is not writable")


def name_jobs_by_swept_keys(argv: list[str]) -> list[str]:
    """A sweep's job directories named by what varies (``method=er,buffer=20``): the settings every job shares
    are left out of the names, unless the command sets the names' keys itself."""
    if any(a.startswith("hydra.job.config.override_dirname") for a in argv):
        return argv
    parser = OverridesParser.create()
    fixed = []
    for a in argv:
        if a.startswith("-") or "=" not in a:
            continue
        try:
            o = parser.parse_override(a)
        except Exception:  # Hydra reports a malformed override itself, with its own message
            return argv
        if not o.is_sweep_override() and not o.key_or_group.startswith("hydra"):
            fixed.append(o.key_or_group)
    keys = ",".join(repr(k) for k in ["resume", "quiet", "plots", *fixed])
    return with_overrides(argv, [f"hydra.job.config.override_dirname.exclude_keys=[{keys}]"])


def config_dirs(argv: list[str]) -> list[Path]:
    """clrun's config directory and the user's (CLRUN_CONFIG_PATH, hydra.searchpath=...)."""
    dirs = [Path(CONF_DIR)]
    for a in argv:
        if a.startswith("hydra.searchpath="):
            for d in OverridesParser.create().parse_override(a).value():
                dirs.append(Path(str(d).removeprefix("file://")))
    return dirs


def allowed_targets(dirs: list[Path]) -> set[str]:
    """Every ``_target_`` a config file in ``dirs`` names: the classes a resumed run may instantiate."""
    found: set[str] = set()
    for d in dirs:
        for f in d.rglob("*.yaml") if d.is_dir() else []:
            found.update(re.findall(r"_target_:\s*['\"]?([\w.]+)", f.read_text(errors="replace")))
    return found


def resume_overrides(run_dir: Path, dirs: list[Path]) -> list[str]:
    """The overrides a run directory was run with, checked: a crafted file must not name code to run."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.exists():
        fail(f"{run_dir} is not a clrun run directory (no .hydra/overrides.yaml)")
    try:
        listed = OmegaConf.load(overrides_file)
        if not OmegaConf.is_list(listed) or not all(isinstance(o, str) for o in listed):
            raise ValueError("not a list of overrides")
        parsed = OverridesParser.create().parse_overrides([str(o) for o in listed])
    except Exception as err:  # YAML, grammar or shape: the file is not what clrun wrote
        why = " ".join(str(err).split())[:120]
        fail(f"{overrides_file} cannot be read as clrun's overrides ({why}); restore it, or "
                 "rerun the experiment in a new directory")
    targets = allowed_targets(dirs)
    kept = []
    for text, o in zip(map(str, listed), parsed):
        key = o.key_or_group
        if key.startswith("hydra") or key == "resume":
            continue
        if key.endswith("_target_") and str(o.value()) not in targets:
            fail(f"{overrides_file} sets {key}={o.value()}, a class no config file names; "
                     "resume refuses to instantiate it. If you trust it, rerun the command yourself with this "
                     "override (or add a config file for the class under CLRUN_CONFIG_PATH)")
        kept.append(text)
    return kept


if __name__ == "__main__":
    main()
