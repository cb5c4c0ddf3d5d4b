import logging
import struct

import numpy as np
import pytest
import torch

from clrun import data
from clrun.data import DatasetError


def write_idx(root, n_train=60, n_test=20, seed=0, truncate=False):
    """Small but well-formed MNIST IDX files in torchvision's layout (root/MNIST/raw)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        img_bytes = struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes()
        if truncate and prefix == "train":
            img_bytes = img_bytes[:-100]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(img_bytes)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())
        out[prefix] = (images, labels)
    return out


def test_torchvision_path_reads_idx_files_into_normalised_tensors(tmp_path):
    written = write_idx(tmp_path)
    ds = data.load("mnist", str(tmp_path), download=False)
    assert ds.source == "torchvision"
    assert ds.train_x.shape == (60, 1, 28, 28) and ds.test_x.shape == (20, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    expected = (torch.tensor(written["train"][0]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(ds.train_x[:, 0], expected, atol=1e-5)
    assert ds.train_y.tolist() == written["train"][1].tolist()


def test_torchvision_reads_our_layout_and_the_fast_reader_agrees_with_it(tmp_path):
    write_idx(tmp_path, n_train=30, n_test=10, seed=2)
    train, test = data._torchvision("mnist", str(tmp_path), download=False)
    (tv_x, tv_y), (tv_tx, tv_ty) = data._to_uint8_nchw(train), data._to_uint8_nchw(test)
    (x, y), (tx, ty) = data._mnist_from_raw(str(tmp_path))
    assert torch.equal(x, tv_x) and torch.equal(y, tv_y) and torch.equal(tx, tv_tx) and torch.equal(ty, tv_ty)


def _zero_config(monkeypatch, cache):
    """No data.root, no CLRUN_DATA: the first run on a fresh machine, the one case the embedded sample is for."""
    monkeypatch.delenv("CLRUN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))


def test_offline_fallback_uses_embedded_sample_with_warning(tmp_path, caplog, monkeypatch):
    _zero_config(monkeypatch, tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="clrun"):
        ds = data.load("mnist", None, download=False, seed=1)
    assert ds.source == "embedded-5k"
    assert "embedded" in caplog.text and "MNIST" in caplog.text
    assert len(ds.train_y) == 4000 and len(ds.test_y) == 1000
    # stratified: every digit 400 / 100 times, although the sample ships sorted by label
    assert torch.bincount(ds.train_y).tolist() == [400] * 10
    assert torch.bincount(ds.test_y).tolist() == [100] * 10
    # the train/test split is seeded and disjoint
    _zero_config(monkeypatch, tmp_path / "cache2")
    again = data.load("mnist", None, download=False, seed=1)
    assert torch.equal(again.train_x, ds.train_x)
    train_rows = {r.numpy().tobytes() for r in ds.train_x.flatten(1)}
    assert sum(r.numpy().tobytes() in train_rows for r in ds.test_x.flatten(1)) < 5  # MNIST has a few dupes


def test_offline_fallback_when_download_fails(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def no_network(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Name or service not known")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    _zero_config(monkeypatch, tmp_path)
    ds = data.load("mnist", None, download=True)
    assert ds.source == "embedded-5k"


def test_a_named_data_root_that_is_missing_or_empty_is_an_error_not_the_sample(tmp_path, monkeypatch):
    monkeypatch.delenv("CLRUN_DATA", raising=False)
    with pytest.raises(DatasetError, match=r"data.root=.*nonexistent does not exist; it should hold MNIST/raw"):
        data.load("mnist", str(tmp_path / "nonexistent"), download=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"mnist not found under data.root=.*empty \(expected MNIST/raw"):
        data.load("mnist", str(tmp_path / "empty"), download=False)
    monkeypatch.setenv("CLRUN_DATA", str(tmp_path / "also_missing"))
    with pytest.raises(DatasetError, match="CLRUN_DATA=.*also_missing does not exist"):
        data.load("mnist", None, download=True)


def test_other_datasets_name_the_files_expected(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar10 not found under .*cifar-10-batches-py"):
        data.load("cifar10", str(tmp_path), download=False)


def test_truncated_file_is_named(tmp_path):
    write_idx(tmp_path, truncate=True)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte is corrupt or truncated"):
        data.load("mnist", str(tmp_path), download=False)


def test_root_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        data.load("mnist", str(f), download=False)


def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CLRUN_DATA", str(tmp_path))
    assert data.default_root() == str(tmp_path)
    monkeypatch.delenv("CLRUN_DATA")
    assert data.default_root().endswith("clrun/data")


def test_normalize_false_gives_raw_unit_pixels(tmp_path, monkeypatch):
    from clrun import data as datamod

    _zero_config(monkeypatch, tmp_path)
    raw = datamod.load("mnist", None, download=False, normalize=False)
    std = datamod.load("mnist", None, download=False)
    assert raw.train_x.min() >= 0 and raw.train_x.max() <= 1 and raw.train_x.max() > 0.99
    mean, sd = datamod._STATS["mnist"]
    assert torch.allclose(std.train_x, (raw.train_x - mean[0]) / sd[0], atol=1e-5)


def test_the_command_line_refuses_a_missing_named_root_in_one_line(tmp_path):
    import subprocess

    from tests.conftest import clrun_cmd

    proc = subprocess.run(clrun_cmd(f"data.root={tmp_path / 'nonexistent'}", f"hydra.run.dir={tmp_path / 'run'}"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"clrun: error: data.root={tmp_path / 'nonexistent'} does not exist; it should hold "
        "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (create it to download into it, or leave data.root "
        "unset for the default cache)"]
    assert not any((tmp_path / "run").iterdir())
