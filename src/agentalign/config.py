"""Typed configs: stdlib dataclasses filled from TOML tables and `--set key=value` overrides.

    cfg = build_config(BCConfig, table={"lr": 3e-4, "model": {"width": 256}}, overrides=["steps=500"])

Every key is checked against the dataclass fields and every value against the field's type
before any work starts; a bad key or value is a `ConfigError` (a ValueError) naming it, with the
closest known key where it looks like a typo. Nested dataclass fields take nested tables or
dotted keys (`model.width=256`). `config_to_dict` gives the resolved config as plain data, saved
beside every output so a run says exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from agentalign.io import atomic_write_json

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and, for strings from the command line, parse) `value` as type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a valid {' or '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return build_config(tp, value, prefix=f"{key}.")
        raise ConfigError(f"{key}: expected a table of {tp.__name__} settings, got {value!r}")
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; known: {', '.join(sorted(known))}")


def _nest_overrides(overrides: list[str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = table
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a table")
        node[parts[-1]] = value.strip()
    return table


def merge_tables(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, table by table (a key `top` leaves out keeps `base`'s value)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge_tables(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def given_table(table: dict[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The keys a preset table and key=value overrides set, nested (overrides win): what the user
    gave, as opposed to the defaults."""
    return merge_tables(table or {}, _nest_overrides(overrides or []))


def build_config(cls: type[T], table: dict[str, Any] | None = None, overrides: list[str] | None = None,
                 *, base: T | None = None, prefix: str = "") -> T:  # fmt: skip
    """Build `cls` from defaults (or `base`), a TOML-like table and key=value overrides."""
    table = given_table(table, overrides)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise _unknown(prefix + key, list(fields))
        tp = hints[key]
        current = getattr(base, key) if base is not None else _field_default(fields[key])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            values[key] = build_config(tp, value, base=current, prefix=f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, tp, prefix + key)
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # the dataclass's own checks (__post_init__)
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _field_default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's product), so that overriding one key of a nested
    config keeps the field's own defaults (e.g. the preference BC preset), not its class's."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON/TOML-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_config(cfg: Any, path: str | Path) -> None:
    atomic_write_json(path, config_to_dict(cfg))


def config_keys(cfg: Any, prefix: str = "") -> list[tuple[str, str, Any]]:
    """Every key that `build_config(type(cfg), ...)` accepts, as (dotted key, type, value in `cfg`),
    nested dataclasses walked: what a user may set with `--set` or in a TOML table."""
    hints = typing.get_type_hints(type(cfg))
    rows = []
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        tp, value = hints[f.name], getattr(cfg, f.name)
        if dataclasses.is_dataclass(tp):
            rows += config_keys(value, f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, _describe(tp), value))
    return rows


def _describe(tp: Any) -> str:
    """A field's type as a user reads it: int, float | None, one of [...], list of str."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join("none" if a is type(None) else _describe(a) for a in args)
    if origin in (tuple, list):
        return f"list of {_describe(args[0]) if args else 'any'}"
    return _type_name(tp)
