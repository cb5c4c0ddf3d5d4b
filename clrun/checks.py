"""Every check of a run's inputs, made before any data is loaded or any file is written: settings, the
optimiser, the stack of methods, devices, memory, the run directory and its disk. Each failure is one
:class:`~clrun.errors.ConfigError` line naming the key, the value and what is allowed."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clrun.errors import ClrunError, ConfigError
from clrun.streams import Scenario


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=auto or device=cpu")
    if name not in ("cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"device={name!r} is not allowed; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device={name} is not available: this machine has {torch.cuda.device_count()} CUDA "
                          "device(s); use device=auto, device=cpu or an index below that")
    return torch.device(name)


MAX_THREADS_PER_CORE = 4
BOOLEAN_KEYS = ("quiet", "plots", "checkpoint", "resume", "deterministic", "reset_optimizer", "check_step",
                "data.download", "data.normalize")


def _number(cfg: DictConfig, key: str, kind: type, low: float, allow_none: bool = False, strict: bool = False,
            prefix: str = ""):
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and kind is int:
        ok = float(value).is_integer()
    if ok:
        ok = value > low if strict else value >= low
    if not ok:
        what = "an integer" if kind is int else "a finite number"
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(f"{prefix}{key}={value!r} is not allowed: use {what} {bound}")


def validate(cfg: DictConfig) -> None:
    """Every top-level setting checked before any data is loaded or any step is taken."""
    _number(cfg, "seed", int, 0)
    _number(cfg, "lam", float, 0, allow_none=True)
    _number(cfg, "buffer", int, 0, allow_none=True)
    _number(cfg, "lr", float, 0, strict=True)
    _number(cfg, "epochs", int, 1)
    _number(cfg, "iters", int, 1, allow_none=True)
    _number(cfg, "batch_size", int, 1)
    _number(cfg, "eval_batch_size", int, 1)
    _number(cfg, "threads", int, 1, allow_none=True)
    _number(cfg, "skip_limit", float, 0)
    _number(cfg, "log_every", int, 0, allow_none=True)
    if not OmegaConf.select(cfg, "skip_limit", default=0) <= 1:
        raise ConfigError(f"skip_limit={OmegaConf.select(cfg, 'skip_limit')!r} is not allowed: use a share in [0, 1]")
    threads, cores = OmegaConf.select(cfg, "threads"), os.cpu_count() or 1
    if threads is not None and threads > MAX_THREADS_PER_CORE * cores:
        raise ConfigError(f"threads={threads} is not allowed on this machine's {cores} cores: use at most "
                          f"{MAX_THREADS_PER_CORE * cores} (threads beyond the cores only slow torch down)")
    for key in BOOLEAN_KEYS:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, bool):  # Hydra reads `no`, `maybe` or `1` as a string or number: refuse them
            raise ConfigError(f"{key}={value!r} is not allowed: use true or false")
    if OmegaConf.select(cfg, "on_nan") not in ("stop", "skip"):
        raise ConfigError(f"on_nan={OmegaConf.select(cfg, 'on_nan')!r} is not allowed; use stop or skip")
    root = OmegaConf.select(cfg, "data.root")
    if root is not None and Path(str(root)).exists() and not Path(str(root)).is_dir():
        raise ConfigError(f"data.root={root} is not a directory")


def check_output_dir(out_dir: Path) -> None:
    """The run directory exists (or can be made) and can be written, before anything else happens."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"the run directory {out_dir} is a file; choose a directory (hydra.run.dir=...)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"the run directory {out_dir} cannot be created: {err.strerror or err}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"the run directory {out_dir} is not writable; choose another (hydra.run.dir=...)")


def check_stack(method: Any, regularizers: list) -> None:
    names = [m.name for m in (method, *regularizers)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"regularizers: {', '.join(twice)} is given twice (as method= and in +regularizers, or "
                          "twice in +regularizers); each method may appear once")


def _available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation: GPU memory on CUDA, else the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def sample_bytes(in_shape: tuple[int, ...], n_outputs: int) -> int:
    """One replay-buffer sample: float32 inputs and logits, int64 label, task id and reservoir key."""
    return 4 * (math.prod(in_shape) + n_outputs) + 3 * 8


def check_memory(method: Any, stream: Any, scenario: Scenario, device: torch.device) -> None:
    """A replay memory that cannot fit is refused before it is allocated (buffer=1e9 would ask for 256 GB)."""
    size = getattr(method, "buffer_size", None)
    if not size:
        return
    need, free = int(size) * sample_bytes(stream.in_shape, scenario.n_outputs), _available_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"buffer={size} needs about {need / 2**30:.1f} GiB for its samples of shape "
                          f"{tuple(stream.in_shape)}, but {free / 2**30:.1f} GiB is available on {device}; use a "
                          "smaller buffer")


def check_optimizer(cfg: DictConfig, factory: Any) -> None:
    """Optimiser settings checked by building the optimiser once, before training, not at task 1."""
    node = cfg.optimizer
    name = str(OmegaConf.select(node, "_target_", default="")).rsplit(".", 1)[-1]
    for key, low, strict in (("lr", 0, True), ("momentum", 0, False), ("weight_decay", 0, False),
                             ("dampening", 0, False), ("eps", 0, True)):
        if key in node:
            _number(node, key, float, low, strict=strict, prefix="optimizer.")
    if "betas" in node:
        betas = OmegaConf.to_container(node.betas) if OmegaConf.is_list(node.betas) else node.betas
        if not (isinstance(betas, list) and len(betas) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ConfigError(f"optimizer.betas={betas!r} is not allowed: use two numbers in [0, 1)")
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"optimizer={name} refuses its settings: {' '.join(str(err).split())}") from None


def check_disk(out_dir: Path, learner: Any) -> None:
    """Room for a checkpoint (model, a copy per method snapshot, replay memory) before the first task."""
    params = sum(p.numel() * p.element_size() for p in learner.model.parameters())
    buffered = sum(getattr(m, "buffer_size", 0) or 0 for m in learner.methods)
    per_sample = sample_bytes(learner.stream.in_shape, learner.scenario.n_outputs)
    need = 4 * params + buffered * per_sample + 2**20  # the temp file and the old one coexist a moment
    free = shutil.disk_usage(out_dir).free
    if need > free:
        raise ConfigError(f"{out_dir} has {free / 2**20:.0f} MiB free, a checkpoint needs about "
                          f"{need / 2**20:.0f} MiB; free space, or run with checkpoint=false")


def build(node: DictConfig, key: str = "", **kwargs):
    """``hydra.utils.instantiate``, its errors as one line naming the config group (``key``): our own
    configuration/dataset errors unwrapped, a class that cannot be imported or a setting it does not take
    named."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ClrunError):
            raise cause from None
        target = OmegaConf.select(node, "_target_")
        root = err
        while root.__cause__ is not None:
            root = root.__cause__
        why = " ".join(f"{type(root).__name__}: {root}".split())
        if "Error locating target" in str(err):  # a user's class that cannot be imported: say which and why
            raise ConfigError(f"_target_={target} cannot be imported ({why}); run clrun from the directory that "
                              "holds its package, or install the package") from None
        raise ConfigError(f"{key or 'config'}: {target} refuses its settings ({why[:300]})") from None
