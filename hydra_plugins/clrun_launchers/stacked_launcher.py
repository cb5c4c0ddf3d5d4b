"""``hydra/launcher=stacked``: a sweep's jobs that differ only in ``seed`` run as one process's stacked model
(clrun.vectorized), up to ``max_seeds`` at a time; every other job, and every group that cannot be stacked,
runs as the basic launcher runs it. Each job keeps its own directory, files and status.

``n_jobs`` > 1 splits each group into ``n_jobs`` stacks of near-equal size and trains the stacks in that many
worker processes at once (each with cores / n_jobs torch threads unless ``threads`` is set): on a CPU a
stack's per-seed hooks run on one core, so two stacks on two cores do twice the work."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def _sets_seed(override: str) -> bool:
    return override.partition("=")[0].lstrip("+~") == "seed"


def seed_group(overrides: Sequence[str]) -> tuple[str, ...]:
    """A job's overrides without its seed: the jobs of one group differ only in the seed."""
    return tuple(o for o in overrides if not _sets_seed(o))


def _seed_index(overrides: Sequence[str]) -> int | None:
    """The position of the one plain ``seed=VALUE`` among ``overrides``, else None."""
    found = [i for i, o in enumerate(overrides) if _sets_seed(o)]
    return found[0] if len(found) == 1 and overrides[found[0]].startswith("seed=") else None


class SeedGroupConfigLoader:
    """Hydra's config loader, composing each seed group once: a group's first job is composed by Hydra, the
    others are a copy of it with their own seed, task overrides and override dirname (what Hydra's composition
    sets from the overrides), because the jobs differ only in that plain value. A whole composition costs
    0.1-0.5 s a job on a 2-core CPU, and a sweep does it twice per job (the sweeper's validation, then the launch).
    Everything else, and any job that is not a plain ``seed=`` away from one already composed, goes to Hydra's
    loader."""

    def __init__(self, loader: ConfigLoader) -> None:
        self._loader = loader
        self._composed: dict[tuple, DictConfig] = {}  # seed group -> its first job's config, as Hydra composed it

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        at = _seed_index(sweep_overrides)
        if at is None or "seed" in master_config.hydra.runtime.choices:  # no seed, or a config group named seed
            return self._loader.load_sweep_config(master_config, sweep_overrides)
        hydra_overrides = tuple(OmegaConf.to_container(master_config.hydra.overrides.hydra))
        group = (hydra_overrides, seed_group(sweep_overrides))
        if group not in self._composed:
            self._composed[group] = self._loader.load_sweep_config(master_config, sweep_overrides)
            return copy.deepcopy(self._composed[group])
        return with_seed(self._composed[group], sweep_overrides, at)


def with_seed(first: DictConfig, overrides: Sequence[str], at: int) -> DictConfig:
    """The config Hydra composes for ``overrides``, from ``first``, composed for the same overrides with another
    ``seed=`` at position ``at``."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    cfg = copy.deepcopy(first)
    OmegaConf.update(cfg, "seed", parsed[at].value(), merge=True)
    # Hydra lists the command's hydra.* overrides first, then the job's: the job's task overrides are its own
    app = [o for o in parsed if not o.is_hydra_override()]
    dirname = cfg.hydra.job.config.override_dirname
    with open_dict(cfg.hydra):
        cfg.hydra.overrides.task = [o.input_line for o in app]
        cfg.hydra.job.override_dirname = get_overrides_dirname(overrides=app, kv_sep=dirname.kv_sep,
                                                               item_sep=dirname.item_sep,
                                                               exclude_keys=dirname.exclude_keys)
    return cfg


class StackedLauncher(Launcher):
    def __init__(self, max_seeds: int = 16, n_jobs: int = 1) -> None:
        if int(max_seeds) < 1 or int(n_jobs) < 1:
            raise ValueError(f"hydra.launcher.max_seeds={max_seeds} and hydra.launcher.n_jobs={n_jobs} must be >= 1")
        self.max_seeds, self.n_jobs = int(max_seeds), int(n_jobs)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # the sweeper shares this context: its validation of every job then composes each seed group once too
        if not isinstance(hydra_context.config_loader, SeedGroupConfigLoader):
            hydra_context.config_loader = SeedGroupConfigLoader(hydra_context.config_loader)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from clrun import app

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, overrides in enumerate(job_overrides):
            groups.setdefault(seed_group(overrides), []).append(i)
        log.info(f"Launching {len(job_overrides)} jobs in {len(groups)} seed groups (at most {self.max_seeds} "
                 f"seeds stacked, {self.n_jobs} stacks at a time)")
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        chunks = []  # the jobs of one stacked model each
        for members in groups.values():
            size = min(self.max_seeds, -(-len(members) // self.n_jobs))
            chunks += [members[start : start + size] for start in range(0, len(members), size)]
        if self.n_jobs == 1:
            for chunk in chunks:
                ready, specs = self._prepare(chunk, job_overrides, initial_job_idx, returns)
                self._finish(returns, ready, app.run_stacked(specs))
            return returns  # type: ignore[return-value]
        # spawned, not forked (a forked torch process may hang in its thread pool); the workers start and import
        # while the jobs are prepared here (not in setup: a sweep refused before its launch would wait for them),
        # and each stack trains as soon as its jobs are ready
        with ProcessPoolExecutor(max_workers=self.n_jobs, mp_context=get_context("spawn")) as pool:
            for _ in range(self.n_jobs):
                pool.submit(app.start_worker)
            pending = []
            for chunk in chunks:
                ready, specs = self._prepare(chunk, job_overrides, initial_job_idx, returns)
                pending.append((ready, pool.submit(app.run_stacked_unit, specs)))
            for ready, future in pending:
                values, statuses = future.result()
                app.JOB_STATUSES.extend(statuses)  # the sweep's exit code reads them in this process
                self._finish(returns, ready, values)
        return returns  # type: ignore[return-value]

    def _prepare(self, chunk: list[int], job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                 returns: list[JobReturn | None]) -> tuple[list[int], list[object]]:
        """Hydra's job context for each job of ``chunk`` (directory, .hydra files, logging) with clrun's checks;
        the jobs ready to train and their specs (a job its preset refuses gets the worst objective now)."""
        from clrun import app

        specs: dict[int, object] = {}
        for i in chunk:
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(job_overrides[i]))}")
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job_overrides[i]))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            returns[i] = run_job(hydra_context=self.hydra_context, task_function=app.prepare_job, config=cfg,
                                 job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            specs[i] = returns[i].return_value
            if specs[i] is None:  # refused by its preset: the worst point, as the basic launcher's
                returns[i].return_value = app.objective(None, None)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        ready = [i for i in chunk if specs[i] is not None]
        return ready, [specs[i] for i in ready]

    @staticmethod
    def _finish(returns: list[JobReturn | None], ready: list[int], values: list) -> None:
        for i, value in zip(ready, values):
            returns[i].return_value = value
