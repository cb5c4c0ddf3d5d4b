"""The ``clrun`` console script: Hydra composes the config, :func:`clrun.run.run` does the work."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from clrun.data import DatasetError
from clrun.run import run
from clrun.streams import ConfigError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("clrun")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        row = run(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, DatasetError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"clrun: error: {err}", file=sys.stderr)
        sys.exit(2)
    return row["ACC"]


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
