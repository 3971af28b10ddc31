"""Resolve an `ExperimentConfig`: defaults -> YAML files -> `--set` overrides.

Resolution order (fixed, as the Model Garden's `parse_configuration`):

1. dataclass defaults in `configs/schema.py`;
2. each `--config` YAML file, in the order given (later files win);
3. each `--set section.key=value` override, in order;
4. `validate()` for cross-field checks.

Strict throughout: an unknown section or key, or a value of the wrong type,
is a `ConfigError` naming it. `dump_config` writes the resolved config
(`config.yaml`) next to every output, so a directory says how it was made.
"""

from __future__ import annotations

import dataclasses
import os
import typing

import yaml

from configs import fileio
from configs.schema import ConfigError, ExperimentConfig

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
RESOLVED_CONFIG_FILE = "config.yaml"


def load_config(
    paths: typing.Sequence[str] = (),
    overrides: typing.Sequence[str] = (),
    base: ExperimentConfig | None = None,
) -> ExperimentConfig:
    """Returns the validated config for `paths` then `overrides` on `base`.

    Args:
        paths: YAML files. A bare name such as `pretrain/bert_tiny.yaml` is
            also looked up inside the installed `configs` package. A YAML
            file may list `base: [other.yaml, ...]` (relative to itself),
            loaded first.
        overrides: `section.key=value` strings; values parse as YAML.
        base: start from this config instead of the defaults.
    """
    cfg = base or ExperimentConfig()
    for path in paths:
        cfg = _apply_yaml(cfg, resolve_path(path), seen=())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        if "." not in key:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        section, name = key.strip().split(".", 1)
        cfg = merge(cfg, {section: {name: yaml.safe_load(value)}}, item)
    return cfg.validate()


def resolve_path(path: str) -> str:
    """Finds `path` as given, else inside the `configs` package."""
    if os.path.exists(path):
        return path
    packaged = os.path.join(CONFIG_DIR, path)
    if os.path.exists(packaged):
        return packaged
    raise ConfigError(f"config file not found: {path}")


def merge(cfg: ExperimentConfig, tree: dict, source: str) -> ExperimentConfig:
    """Returns `cfg` with the nested dict `tree` applied, strictly typed."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections")
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    updates = {}
    for section, values in tree.items():
        if section not in sections:
            raise ConfigError(
                f"{source}: unknown section {section!r} "
                f"(known: {', '.join(sections)})"
            )
        current = getattr(cfg, section)
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        fields = {f.name: f for f in dataclasses.fields(current)}
        changes = {}
        for name, value in values.items():
            if name not in fields:
                raise ConfigError(
                    f"{source}: unknown key {section}.{name} "
                    f"(known: {', '.join(fields)})"
                )
            changes[name] = _coerce(
                value, type(getattr(current, name)), f"{section}.{name}", source
            )
        updates[section] = dataclasses.replace(current, **changes)
    return dataclasses.replace(cfg, **updates)


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON."""

    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {
        section: {k: plain(v) for k, v in dataclasses.asdict(sub).items()}
        for section, sub in dataclasses.asdict(cfg).items()
        for sub in [getattr(cfg, section)]
    }


def dump_config(cfg: ExperimentConfig, directory: str) -> str:
    """Writes the resolved config as `directory/config.yaml`; returns its path."""
    path = os.path.join(directory, RESOLVED_CONFIG_FILE)
    fileio.makedirs(directory)
    return fileio.write_atomic(
        path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    )


def load_resolved(directory: str) -> ExperimentConfig:
    """Reads back `directory/config.yaml` written by `dump_config`."""
    path = os.path.join(directory, RESOLVED_CONFIG_FILE)
    if not fileio.exists(path):
        raise ConfigError(f"no {RESOLVED_CONFIG_FILE} in {directory}")
    tree = yaml.safe_load(fileio.read_text(path))
    return merge(ExperimentConfig(), tree, path).validate()


def _apply_yaml(cfg, path, seen):
    if path in seen:
        raise ConfigError(f"config {path} includes itself")
    with open(path, encoding="utf-8") as f:
        try:
            tree = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    bases = tree.pop("base", [])
    for b in [bases] if isinstance(bases, str) else bases:
        cfg = _apply_yaml(
            cfg, resolve_path(os.path.join(os.path.dirname(path), b)), seen + (path,)
        )
    return merge(cfg, tree, path)


def _coerce(value, target_type, key, source):
    """Checks/converts a YAML value to the field's type; ints widen to float."""
    if target_type is bool:
        if isinstance(value, bool):
            return value
    elif target_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif target_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "5e-5" (no dot) as a string; accept it as a float.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif target_type is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif target_type is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(str(v) for v in value)
        if isinstance(value, str):
            return tuple(v for v in value.split(",") if v)
    raise ConfigError(f"{source}: {key} expects {target_type.__name__}, got {value!r}")
