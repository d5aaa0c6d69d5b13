"""Loading the settings: TOML plus environment overrides, into ``node.core.settings``.

``load_settings`` collects every problem it finds (unknown keys, wrong types, then the checks of
``node.core.settings_check``) and raises one :class:`~node.core.errors.ConfigError` with one
clear line per problem.

Environment overrides: ``DICOM_NODE__<SECTION>__<KEY>=value`` (double underscores), for example
``DICOM_NODE__NODE__PORT=11113``. The value is read as a TOML value when it parses as one
(numbers, booleans, ``["a", "b"]``) and as a plain string otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from node.core.errors import ConfigError
from node.core.settings import Settings
from node.core.settings_check import check

ENV_PREFIX = "DICOM_NODE__"


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (TOML) if given, apply environment overrides, validate, return Settings."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot be read ({exc.__class__.__name__})"]) from None
    _apply_env(raw, environ, problems)
    values = _build(Settings, raw, "", problems, skip={"source"})
    if problems:
        raise ConfigError(problems)
    settings = dataclasses.replace(typing.cast(Settings, values), source=source)
    problems.extend(check(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> None:
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(parts) < 2 or not all(parts):
            problems.append(f"{name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
            continue
        target = raw
        for part in parts[:-1]:
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                problems.append(f"{name}: [{part}] is not a table")
                break
            target = nxt
        else:
            target[parts[-1]] = _parse_env_value(text)


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _build(
    cls: type[Any],
    data: Any,
    where: str,
    problems: list[str],
    skip: frozenset[str] | set[str] = frozenset(),
) -> Any:
    label = where or "config"
    if not isinstance(data, dict):
        problems.append(f"{label}: expected a table")
        return cls() if _all_defaulted(cls) else None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - set(skip)
    for key in sorted(set(data) - known):
        problems.append(f"{_join(where, key)}: unknown key")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        key = _join(where, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{key}: required")
            continue
        value = _convert(hints[f.name], data[f.name], key, problems)
        if value is not _INVALID:
            kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError:
        return None


_INVALID = object()


def _convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        built = _build(typing.cast(type[Any], tp), value, key, problems)
        return _INVALID if built is None else built
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {_kind(value)}")
            return _INVALID
        items = [_convert(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if _INVALID not in items else _INVALID
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            problems.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
            return _INVALID
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported settings type at {key}")
    return _convert_scalar(tp, value, key, problems)


def _convert_scalar(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        problems.append(f"{key}: expected {_type_name(tp)}, got {_kind(value)}")
        return _INVALID
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _all_defaulted(cls: type[Any]) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


