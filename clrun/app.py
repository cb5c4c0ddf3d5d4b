"""The ``clrun`` console script: Hydra composes the config, :func:`clrun.run.run` does the work."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from clrun import io
from clrun.data import DatasetError
from clrun.run import run
from clrun.streams import ConfigError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("clrun")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    sweeping = hc.mode == RunMode.MULTIRUN
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if cfg.threads is None and n_jobs:  # parallel jobs share the cores: jobs x threads = cores
        cores = os.cpu_count() or 1
        cfg.threads = max(1, cores // (cores if n_jobs < 0 else n_jobs))
    try:
        row = run(cfg, hc.runtime.output_dir)
    except (ConfigError, DatasetError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"clrun: error: {err}", file=sys.stderr)
        if sweeping:  # one bad job must not stop the sweep; the summary lists it as failed
            _record_failure(cfg, hc.runtime.output_dir, err)
            return float("nan")
        sys.exit(2)
    except Exception as err:
        if not sweeping or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.exception("job failed; the sweep goes on")
        _record_failure(cfg, hc.runtime.output_dir, err)
        return float("nan")
    if row["status"] != "completed" and not sweeping:
        print(f"clrun: run {row['status']}: {row.get('error', '')}", file=sys.stderr)
        sys.exit(3)
    return row["ACC"]


def _record_failure(cfg: DictConfig, out_dir: str, err: BaseException) -> None:
    """A metrics.csv for a job that failed before training wrote one."""
    path = Path(out_dir) / io.METRICS_FILE
    if path.exists():
        return
    target = str(OmegaConf.select(cfg, "method._target_", default=""))
    io.write_metrics(Path(out_dir), {"method": target.rsplit(".", 1)[-1].lower(), "seed": cfg.get("seed"),
                                     "status": "failed", "error": f"{type(err).__name__}: {err}"})


def user_search_path(argv: list[str], env: str | None) -> list[str]:
    """``argv`` with the directories of ``CLRUN_CONFIG_PATH`` (``os.pathsep``-separated) added to Hydra's
    config search path, after any ``hydra.searchpath`` the command line gives: a user's own config groups
    (conf/method/mine.yaml, ...) are found without touching clrun's."""
    dirs = [d for d in (env or "").split(os.pathsep) if d]
    if not dirs:
        return argv
    for d in dirs:
        if not Path(d).is_dir():
            sys.exit(f"clrun: error: CLRUN_CONFIG_PATH={env} names {d}, which is not a directory")
    extra = [f"file://{Path(d).resolve()}" for d in dirs]
    given = [a for a in argv if a.startswith("hydra.searchpath=")]
    if given:
        listed = OverridesParser.create().parse_override(given[-1]).value()  # the user's list, as Hydra reads it
        rest = [a for a in argv if not a.startswith("hydra.searchpath=")]
        return [*rest, f"hydra.searchpath=[{','.join([*map(str, listed), *extra])}]"]
    return [*argv, f"hydra.searchpath=[{','.join(extra)}]"]


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
            sys.exit("clrun: error: --resume needs a run directory")
        run_dir = Path(sys.argv[i + 1])
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.exists():
            sys.exit(f"clrun: error: {run_dir} is not a clrun run directory (no .hydra/overrides.yaml)")
        overrides = [o for o in OmegaConf.load(overrides_file) if not str(o).startswith(("resume=", "hydra."))]
        rest = sys.argv[1:i] + sys.argv[i + 2 :]
        sys.argv = [sys.argv[0], *map(str, overrides), *rest, f"hydra.run.dir={run_dir}", "resume=true"]
    _hydra_main()


if __name__ == "__main__":
    main()
