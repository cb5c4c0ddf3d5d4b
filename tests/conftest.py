import os
import sys
from pathlib import Path

import pytest
import torch

from clrun.app import compose

# tests run on two cores: keep torch from oversubscribing them
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent
FAST = ["benchmark=synthetic", "quiet=true", "device=cpu", "lr=0.1", "model.hidden=[64]", "plots=false"]


def make_cfg(*overrides: str):
    """A composed clrun config, as the clrun command would run it, without Hydra globals."""
    return compose(*overrides)


def clrun_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "clrun.app", *args]


@pytest.fixture
def cfg_factory():
    return make_cfg
