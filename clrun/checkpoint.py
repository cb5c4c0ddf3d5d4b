"""The checkpoint format and a run's identity.

A checkpoint is read with ``torch.load(weights_only=True)``: it holds tensors and plain containers only, so a
run directory from someone else cannot execute code on ``--resume``. Method state (buffers, masks, snapshot
models) is encoded into that form here and decoded only into classes of clrun, of ``torch.nn``, or of the
modules the run's own configuration already imported (a user's method).

A run's *identity* is every resolved setting that changes its results (seed, method and its settings,
stream, model, optimiser, lr, ...). Resume compares it with the directory's and refuses a different one.

``clrun-checkpoint upgrade DIR`` rewrites a checkpoint written before this format (a pickle), for a user who
trusts where it came from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from clrun import io
from clrun.errors import CheckpointError, ResumeMismatch

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT, VERSION = "clrun-checkpoint", 2
# settings that do not change what a run computes: a resume may change them freely
# the paper preset's record (its published numbers, what it set) is not itself a setting: what it set is compared
# where it landed (lr, method.*), so a run started before conf/paper/ (``protocol``) still resumes
NOT_IDENTITY = ("resume", "quiet", "plots", "threads", "device", "eval_batch_size", "checkpoint", "check_step",
                "deterministic", "diagnostics", "data.root", "data.download", "log_every", "logger", "hydra",
                "paper", "protocol")
# modules whose classes a checkpoint may name, besides those of the run's own method, regularisers and model
SAFE_MODULE_PREFIXES = ("clrun.", "torch.nn.")


# ---- identity
def identity(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved settings that change a run's results, flattened to ``{"method.lam": 100, ...}``."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
            return
        key = prefix[:-1]
        if not any(key == n or key.startswith(n + ".") for n in NOT_IDENTITY):
            flat[key] = node

    walk(tree, "")
    return flat


def identity_hash(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ. A top-level key only the current config has is a setting newer than the stored
    run (its default keeps the old behaviour), not a difference."""
    keys = sorted(set(stored) | set(current))
    return [k for k in keys if stored.get(k, "<absent>") != current.get(k, "<absent>")
            and not (k not in stored and "." not in k)]


def check_same_run(out_dir: Path, cfg: DictConfig) -> None:
    """Refuse to resume ``out_dir`` with a configuration other than the one it was run with."""
    saved = Path(out_dir) / "config.yaml"
    if not saved.exists():
        return
    try:
        stored = identity(yaml.safe_load(saved.read_text()) or {})
    except yaml.YAMLError as err:
        raise CheckpointError(f"{saved} cannot be read ({' '.join(str(err).split())[:120]}); it records what the "
                              "run was: restore it, or start the run in a new directory") from None
    diff = differences(stored, identity(cfg))
    if diff:
        shown = ", ".join(f"{k}: {_short(stored.get(k, '<absent>'))} -> {_short(identity(cfg).get(k, '<absent>'))}"
                          for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise ResumeMismatch(f"resume: {out_dir} holds a different run ({shown}{more}); resume it without changing "
                             "these, or run the new configuration in another directory")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- encoding method state into tensors and plain containers
def encode(value: Any, where: str = "state") -> Any:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, torch.Size):
        return {"__size__": list(value)}
    if isinstance(value, tuple):
        return tuple(encode(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, OrderedDict):
        return {"__odict__": [[k, encode(v, f"{where}.{k}")] for k, v in value.items()]}
    if isinstance(value, dict):
        return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted(value, key=repr)}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value)).clone()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state(), "device": str(value.device)}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.nn.Module) or (hasattr(value, "__dict__") and not callable(value)
                                              and not isinstance(value, types.ModuleType)):
        cls = type(value)
        return {"__object__": f"{cls.__module__}:{cls.__qualname__}", "state": encode(vars(value), where)}
    raise CheckpointError(f"{where} is a {type(value).__name__}, which a checkpoint cannot hold: keep method state "
                          "as tensors, numbers, strings, lists, dicts, numpy arrays or objects made of them")


def decode(value: Any, modules: frozenset[str]) -> Any:
    if isinstance(value, tuple):
        return tuple(decode(v, modules) for v in value)
    if isinstance(value, list):
        return [decode(v, modules) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        return value["__ndarray__"].numpy().copy()
    if "__odict__" in value:
        return OrderedDict((k, decode(v, modules)) for k, v in value["__odict__"])
    if "__set__" in value:
        return set(value["__set__"])
    if "__size__" in value:
        return torch.Size(value["__size__"])
    if "__generator__" in value:
        gen = torch.Generator(device=value["device"])
        gen.set_state(value["__generator__"])
        return gen
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__dtype__" in value:
        dtype = getattr(torch, value["__dtype__"], None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"the checkpoint names an unknown dtype {value['__dtype__']!r}")
        return dtype
    if "__object__" in value:
        cls = _allowed_class(value["__object__"], modules)
        obj = cls.__new__(cls)
        obj.__dict__.update(decode(value["state"], modules))  # restores the attributes; runs no constructor
        return obj
    return {k: decode(v, modules) for k, v in value.items()}


def _allowed_class(name: str, modules: frozenset[str]) -> type:
    module, _, qualname = name.partition(":")
    if not (module.startswith(SAFE_MODULE_PREFIXES) or module in modules) or module not in sys.modules:
        raise CheckpointError(f"the checkpoint names a class {name}, which is neither clrun's, torch.nn's nor of this "
                              "run's method or model; refusing to load it")
    obj: Any = sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        raise CheckpointError(f"the checkpoint names {name}, which is not a class of this clrun; refusing to load it")
    return obj


def run_modules(*objects: Any) -> frozenset[str]:
    """The modules of a run's own method, regularisers and model: their classes may appear in its state."""
    return frozenset(type(o).__module__ for o in objects)


# ---- files
def save(out_dir: Path, state: dict, ident: dict[str, Any]) -> None:
    """torch.save through a temp file and os.replace (io.atomic_write_bytes): a kill mid-write leaves the
    previous checkpoint."""
    payload = {"format": FORMAT, "version": VERSION, "identity": ident, "identity_hash": identity_hash(ident),
               "state": encode(state)}
    io.atomic_write_bytes(Path(out_dir) / CHECKPOINT_FILE, lambda f: torch.save(payload, f))


def load(out_dir: Path, ident: dict[str, Any], modules: frozenset[str], device: str = "cpu") -> dict | None:
    """The state saved in ``out_dir``'s checkpoint, or None when there is none. Never unpickles code."""
    path = Path(out_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    payload = _read(path, device)
    stored = payload.get("identity")
    if not isinstance(stored, dict) or differences(stored, ident):
        diff = ", ".join(differences(stored, ident)[:6]) if isinstance(stored, dict) else "no identity recorded"
        raise ResumeMismatch(f"resume: {path} was written by a run with other settings than this command's ({diff}); "
                             "resume it with its own settings, or delete the checkpoint to start this run afresh")
    return decode(payload["state"], modules)


def model_state(out_dir: Path) -> dict[str, Any]:
    """The model weights of the last task checkpointed in run directory ``out_dir`` (a trunk to reuse)."""
    state = _read(Path(out_dir) / CHECKPOINT_FILE, "cpu")["state"]
    return decode(state["model"], frozenset())


def _read(path: Path, device: str) -> dict:
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "can still be loaded" in str(err):  # a pickled class or function
            raise CheckpointError(
                f"{path} holds pickled Python objects: it was written by a clrun before checkpoint format 2, or "
                "not by clrun, and loading it could run code. If you trust where it came from, "
                f"`clrun-checkpoint upgrade {path.parent}` converts it; otherwise delete it to restart the run "
                "from its first task") from None
        raise _damaged(path, err) from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, IndexError, KeyError) as err:
        raise _damaged(path, err) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a clrun checkpoint; delete it to restart the run from its first task")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format {payload.get('version')}, this clrun reads format "
                              f"{VERSION}; resume it with the clrun that wrote it, or delete it to restart the run")
    return payload


def _damaged(path: Path, err: BaseException) -> CheckpointError:
    why = " ".join(str(err).split())[:100] or type(err).__name__
    return CheckpointError(f"{path} is damaged or truncated ({why}); delete it to restart the run from its first "
                           "task")


# ---- the upgrade command
def upgrade(run_dir: Path) -> None:
    """Rewrite a pickled (format 1) checkpoint in format 2. Unpickles it: only for files one trusts."""
    path = Path(run_dir) / CHECKPOINT_FILE
    config = Path(run_dir) / "config.yaml"
    if not path.exists() or not config.exists():
        raise CheckpointError(f"{run_dir} has no {CHECKPOINT_FILE} and config.yaml to upgrade")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and state.get("format") == FORMAT:
            print(f"{path} is already in format {state.get('version')}")
            return
    except pickle.UnpicklingError:
        pass
    state = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for this file
    if not isinstance(state, dict) or "tasks_done" not in state:
        raise CheckpointError(f"{path} is not a clrun checkpoint")
    save(Path(run_dir), state, identity(yaml.safe_load(config.read_text()) or {}))
    print(f"{path} rewritten in checkpoint format {VERSION}; resume with `clrun --resume {run_dir}`")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="clrun-checkpoint",
        description="Convert a checkpoint written before checkpoint format 2 (a pickle) so that --resume can load it.")
    sub = parser.add_subparsers(dest="command", required=True, help="what to do (one command: upgrade)")
    up = sub.add_parser("upgrade", help="rewrite RUN_DIR/checkpoint.pt in the safe format; unpickles it once, so "
                                        "only for files you trust")
    up.add_argument("run_dir", type=Path, help="a run directory holding checkpoint.pt and config.yaml")
    args = parser.parse_args(argv)
    try:
        upgrade(args.run_dir)
    except CheckpointError as err:
        sys.exit(f"clrun-checkpoint: error: {err}")


if __name__ == "__main__":
    main()
