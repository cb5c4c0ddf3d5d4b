"""What the reference loops (scripts/reference/*.py) share, none of it clrun's: MNIST as tensors straight
from torchvision's files, and a command line that runs the given seeds one after another on one thread."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.datasets import MNIST


def mnist(root: str, pad: int = 0) -> tuple[torch.Tensor, ...]:
    """(train x, train y, test x, test y): raw [0, 1] pixels, zero-padded by ``pad`` on each side, flattened."""
    def split(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ds = MNIST(root, train=train, download=False)
        return F.pad(ds.data.float() / 255, (pad, pad, pad, pad)).flatten(1), ds.targets

    return (*split(True), *split(False))


def cli(doc: str, pad: int, run_seed: Callable[[int, tuple[torch.Tensor, ...], argparse.Namespace], str],
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, seeds: tuple[int, ...] = (0,)) -> None:
    """Parse --seeds/--root (and the script's own options), then print one line per seed with its minutes."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    ap.add_argument("--root", default=os.environ.get("CLRUN_DATA", "data"))
    if add_arguments:
        add_arguments(ap)
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = mnist(a.root, pad)
    for seed in a.seeds:
        start = time.time()
        line = run_seed(seed, data, a)
        print(f"seed {seed} {line}  ({(time.time() - start) / 60:.1f} min)", flush=True)
