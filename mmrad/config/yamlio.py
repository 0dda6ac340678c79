"""Typed dataclasses from plain data: type checks, nested sections, ``key.path=value`` overrides and YAML reading.

Generic machinery with no knowledge of mmrad's settings (those are the dataclasses in :mod:`mmrad.config.schema`).
:func:`from_dict` checks types against the field annotations, turns nested dicts into sub-dataclasses, and rejects
unknown keys with an error naming the full key path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mmrad.errors import MMRadError

T = TypeVar("T")


class ConfigError(MMRadError, ValueError):
    """A configuration value or key is invalid; the message names the key."""


# ----------------------------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with type checks
# ----------------------------------------------------------------------------------------------------------------


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types; errors name the key path."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        keys = ", ".join(_join(path, k) for k in unknown)
        raise ConfigError(f"unknown config key(s): {keys} (known: {', '.join(fields)})")
    kwargs = {name: _check(hints[name], value, _join(path, name)) for name, value in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing config key(s): {', '.join(_join(path, n) for n in missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check(tp: Any, value: Any, path: str) -> Any:
    """Return ``value`` converted to type ``tp`` or raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(arg, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} does not match {_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [_check(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        if not args:
            return dict(value)
        return {_check(args[0], k, f"{path}.{k}"): _check(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{path}: unsupported type {_name(tp)}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce_nested(obj: Any) -> None:
    """Turn nested dicts of a directly constructed dataclass into sub-dataclasses (with the same checks)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            setattr(obj, f.name, from_dict(tp, value, f.name))


# ----------------------------------------------------------------------------------------------------------------
# YAML and overrides
# ----------------------------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``, the value read as a YAML scalar or flow collection, as in the config files: ``true``,
    ``1.0e-4``, ``[vision, text]``, ``null``, ``'quoted text'``; anything YAML cannot read stays the raw string.
    Python's ``None`` is accepted as null."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    raw = raw.strip()
    if raw == "None":
        return key.strip().split("."), None
    try:
        value = yaml.safe_load(raw) if raw else raw
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides to a nested dict (in place) and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: i + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data
