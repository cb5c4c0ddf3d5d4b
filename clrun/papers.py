"""Published protocols as presets: ``conf/paper/<paper>/<preset>.yaml`` holds a paper's protocol, its published
numbers (``paper.results``) and the settings its runs used per method (``paper.methods``). This module applies
the method's settings to a composed config, refuses a method the paper did not tune, and maps the old preset
names (``+experiment=der_perm_mnist``) to the new ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from clrun.errors import ConfigError

# the presets' names before conf/paper/ (conf/experiment/), accepted until clrun 0.3 with a warning
EXPERIMENT_ALIASES = {
    "der_seq_mnist_base": "der2020/seq_mnist", "der_seq_mnist": "der2020/seq_mnist_buffer",
    "der_perm_mnist_base": "der2020/perm_mnist", "der_perm_mnist": "der2020/perm_mnist_buffer",
    "der_rot_mnist_base": "der2020/rot_mnist", "der_rot_mnist": "der2020/rot_mnist_buffer",
    "vandeven_split_mnist": "vandeven2019/split_mnist", "vandeven_split_mnist_icarl": "vandeven2019/split_mnist_icarl",
    "vandeven_perm_mnist": "vandeven2019/perm_mnist", "vandeven_perm_mnist_icarl": "vandeven2019/perm_mnist_icarl",
    "gem_mnist_perm": "gem2017/perm_mnist", "gem_mnist_rot": "gem2017/rot_mnist",
    "agem_perm_mnist": "agem2019/perm_mnist",
}
ALIASES_REMOVED_IN = "0.3"
# the protocol names run directories recorded before conf/paper/ (config.yaml's `protocol.name`)
PROTOCOL_ALIASES = {
    "der_seq_mnist": "der2020/seq_mnist", "der_perm_mnist": "der2020/perm_mnist", "der_rot_mnist": "der2020/rot_mnist",
    "vandeven_split_mnist": "vandeven2019/split_mnist", "vandeven_perm_mnist": "vandeven2019/perm_mnist",
    "gem_mnist_perm": "gem2017/perm_mnist", "gem_mnist_rot": "gem2017/rot_mnist",
    "agem_perm_mnist": "agem2019/perm_mnist",
}
# the table a method's settings may depend on, and the run's value it is looked up by
TABLES = {"by_buffer": "buffer", "by_scenario": "scenario.name"}
UNTUNED = ("error", "defaults")
_ABSENT = object()


def rewrite_aliases(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``overrides`` with ``+experiment=NAME`` replaced by ``paper=...``, and one deprecation warning for each."""
    out, warnings = [], []
    for text in overrides:
        key, sep, value = text.partition("=")
        if key.lstrip("+") != "experiment" or not sep:
            out.append(text)
            continue
        if value not in EXPERIMENT_ALIASES:
            raise ConfigError(f"{text} is not a preset: the old preset names are "
                              f"{', '.join(sorted(EXPERIMENT_ALIASES))}; the presets are paper=<paper>/<preset> "
                              "(clrun --help lists them)")
        new = f"paper={EXPERIMENT_ALIASES[value]}"
        warnings.append(f"{text} is deprecated and goes in clrun {ALIASES_REMOVED_IN}: use {new}")
        out.append(new)
    return out, warnings


def selects_paper(overrides: list[str]) -> str | None:
    """The paper preset an override list picks (``paper=der2020/perm_mnist``), if any."""
    for text in overrides:
        key, sep, value = text.partition("=")
        if sep and key.lstrip("+") == "paper" and value not in ("", "null"):
            return value
    return None


def user_keys(overrides: list[str], groups: Mapping[str, Any]) -> set[str]:
    """The settings a command gives itself (``lr=0.05``, ``method.alpha=0.3``): a paper's settings leave them be.
    Config-group choices (``method=der``) and Hydra's own keys are not settings."""
    keys = set()
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if key in groups or key.startswith("hydra") or "/" in key:
            continue
        keys.add(key)
    return keys


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{method: {alpha: 1.0}, lr: 0.1}`` -> ``{"method.alpha": 1.0, "lr": 0.1}`` (dotted keys stay as they are)."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def method_settings(paper: Mapping[str, Any], method: str, run_values: Mapping[str, Any],
                    preset: str) -> dict[str, Any]:
    """The settings ``paper.methods`` gives ``method`` for this run (its buffer, its scenario), as dotted keys.
    A method the paper did not tune is refused, naming the ones it did, unless ``paper.untuned=defaults``."""
    methods = dict(paper.get("methods") or {})
    untuned = paper.get("untuned", "error")
    if untuned not in UNTUNED:
        raise ConfigError(f"paper.untuned={untuned!r} is not one of {', '.join(UNTUNED)}")
    if method not in methods:
        if untuned == "defaults":
            return {}
        raise ConfigError(f"method={method} has no settings in paper={preset} ({paper.get('source', preset)}); "
                          f"its tuning covers {', '.join(methods) or 'no method'}. Pick one of them, or add "
                          f"paper.untuned=defaults to run {method} with clrun's own defaults")
    entry = dict(methods[method] or {})
    tables = {name: entry.pop(name) for name in TABLES if name in entry}
    settings = _flatten(entry)
    for name, table in tables.items():
        value = run_values[TABLES[name]]
        rows = {str(k): v for k, v in (table or {}).items()}
        if str(value) not in rows:
            raise ConfigError(f"{TABLES[name]}={value} has no settings for method={method} in paper={preset}: its "
                              f"{name} table lists {', '.join(rows)}")
        settings.update(_flatten(rows[str(value)]))
    return settings


def apply(cfg: DictConfig, overrides: list[str], choices: Mapping[str, Any]) -> DictConfig:
    """Give ``cfg`` (composed from ``overrides``; ``choices`` its config-group choices) the settings its paper
    preset used for the run's method, except those the command sets itself. What was set is recorded as
    ``paper.applied`` (and the whole per-method table dropped), so config.yaml says what ran."""
    paper = cfg.get("paper")
    if not paper or "applied" in paper:
        return cfg
    container = OmegaConf.to_container(paper, resolve=True)
    preset = str(choices.get("paper") or paper.get("name"))
    if "methods" not in container:  # conf/paper/<paper>/common.yaml: what a paper's presets share
        raise ConfigError(f"paper={preset} is the part a paper's presets share, not a preset: pick one of the "
                          f"presets beside it (clrun --help lists them)")
    run_values = {"buffer": cfg.get("buffer"), "scenario.name": OmegaConf.select(cfg, "scenario.name")}
    settings = method_settings(container, str(choices.get("method")), run_values, preset)
    given = user_keys(overrides, choices)
    applied = {}
    with open_dict(cfg):
        for key, value in settings.items():
            if any(key == g or key.startswith(f"{g}.") for g in given) or _follows(cfg, key, given):
                continue  # the command line wins over the paper
            if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
                raise ConfigError(f"paper={preset} sets {key}={value} for method={choices.get('method')}, but the "
                                  f"composed config has no {key}: the preset and the method's config disagree")
            OmegaConf.update(cfg, key, value, merge=False)
            applied[key] = value
        cfg.paper.pop("methods", None)
        cfg.paper.applied = applied
    return cfg


def _follows(cfg: DictConfig, key: str, given: set[str]) -> bool:
    """Whether ``key`` is an interpolation of a setting the command gives (``method.lam: ${default:${lam},1}``
    with ``lam=100``): the user's top-level number wins over the paper's value for it."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    raw = OmegaConf.to_container(node, resolve=False).get(leaf) if OmegaConf.is_dict(node) else None
    return isinstance(raw, str) and any(f"${{{g}}}" in raw for g in given)


def check_applied(cfg: DictConfig) -> None:
    """A paper preset's config must come through :func:`apply` (the clrun command, :func:`clrun.app.compose`):
    hydra's compose alone would run the method without the paper's settings, silently."""
    paper = cfg.get("paper")
    if paper and "applied" not in paper:
        raise ConfigError(f"paper={paper.get('name')} was composed without its per-method settings: build the "
                          "config with clrun.app.compose(...) (or the clrun command), not hydra's compose alone")


def first_cell(sweep_params: Mapping[str, Any], given: set[str]) -> list[str]:
    """The first value of each key a preset sweeps that the command does not set: a preset run without ``-m``
    runs its first cell."""
    parser = OverridesParser.create()
    cell = []
    for key, value in sweep_params.items():
        if key in given:
            continue
        override = parser.parse_override(f"{key}={value}")
        first = next(iter(override.sweep_string_iterator())) if override.is_sweep_override() else str(value)
        cell.append(f"{key}={first}")
    return cell
