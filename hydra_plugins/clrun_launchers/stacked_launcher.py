"""``hydra/launcher=stacked``: a sweep's jobs that differ only in ``seed`` run as one process's stacked model
(clrun.vectorized), up to ``max_seeds`` at a time; every other job, and every group that cannot be stacked,
runs as the basic launcher runs it. Each job keeps its own directory, files and status."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def seed_group(overrides: Sequence[str]) -> tuple[str, ...]:
    """A job's overrides without its seed: the jobs of one group differ only in the seed."""
    return tuple(o for o in overrides if o.partition("=")[0].lstrip("+~") != "seed")


class StackedLauncher(Launcher):
    def __init__(self, max_seeds: int = 16) -> None:
        self.max_seeds = int(max_seeds)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
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
                 "seeds stacked)")
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        for members in groups.values():
            for start in range(0, len(members), self.max_seeds):
                chunk = members[start : start + self.max_seeds]
                specs: dict[int, object] = {}
                for i in chunk:
                    idx = initial_job_idx + i
                    log.info(f"\t#{idx} : {' '.join(filter_overrides(job_overrides[i]))}")
                    cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job_overrides[i]))
                    with open_dict(cfg):
                        cfg.hydra.job.id = idx
                        cfg.hydra.job.num = idx
                    # Hydra's job context (directory, .hydra files, logging) with clrun's checks; the run waits
                    returns[i] = run_job(hydra_context=self.hydra_context, task_function=app.prepare_job,
                                         config=cfg, job_dir_key="hydra.sweep.dir",
                                         job_subdir_key="hydra.sweep.subdir")
                    specs[i] = returns[i].return_value
                ready = [i for i in chunk if specs[i] is not None]
                values = app.run_stacked([specs[i] for i in ready])
                for i, value in zip(ready, values):
                    returns[i].return_value = value
                for i in chunk:
                    if specs[i] is None:  # refused by its preset: the worst point, as the basic launcher's
                        returns[i].return_value = app.objective(None, None)
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns  # type: ignore[return-value]
