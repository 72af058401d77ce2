"""YAML configs with command-line overrides (``key.sub=value``)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from .paths import PACKAGE_DIR

CONFIG_DIR = PACKAGE_DIR / "configs"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path as given, or the name of a config shipped in ``maft/configs`` (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"config {str(name_or_path)!r} not found (shipped configs: {known})")


def load_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    path = resolve_config_path(name_or_path)
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping, got {type(config).__name__}")
    return apply_overrides(config, overrides)


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with ``a.b=value`` overrides applied (values parsed as YAML)."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.lr=1e-5)")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = config
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {key!r} is a value, not a section")
            node = child
        node[keys[-1]] = parse_value(raw)
    return config


def parse_value(raw: str) -> Any:
    """YAML scalar/list parsing, plus ``3e-4`` as a float (YAML 1.1 reads it as a string)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value
