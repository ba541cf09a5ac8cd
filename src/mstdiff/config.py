"""Dataclass configs: load from YAML, override from the command line, save resolved.

Each component has a ``@dataclass`` config with a comment on every default. A run config is a
YAML mapping whose sections are those dataclasses; unknown keys are errors (they are almost
always typos), reported with the file and the key path.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

from mstdiff.errors import InputError

C = TypeVar("C")


class Check(NamedTuple):
    """A constraint on one config value: ``test(value)`` is true when allowed; ``allowed`` says what is."""

    test: Callable[[Any], bool]
    allowed: str


def gt(x: float) -> Check:
    return Check(lambda v: v > x, f"> {x}")


def ge(x: float) -> Check:
    return Check(lambda v: v >= x, f">= {x}")


def between(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> Check:
    def test(v: Any) -> bool:
        return (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)

    return Check(test, f"in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}")


def one_of(*options: Any) -> Check:
    return Check(lambda v: v in options, "one of " + ", ".join(map(str, options)))


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file and the line."""
    return load_yaml_located(path)[0]


def load_yaml_located(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """A YAML mapping and, for every key path (``"train.lr"``), where it is written (``file:LINE``)."""
    path = Path(path)
    if path.is_dir():
        raise InputError("config path is a directory, not a YAML file", where=str(path),
                         fix="pass the .yaml file")
    if not path.is_file():
        raise InputError("config file not found", where=str(path), fix="check the path")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise InputError("config file is not UTF-8 text", where=str(path),
                         fix="save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise InputError(f"invalid YAML ({getattr(exc, 'problem', exc)})", where=where) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise InputError("top level of a config must be a mapping", where=str(path))
    lines: dict[str, str] = {}

    def walk(n: Any, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines[key] = f"{path}:{k.start_mark.line + 1}"
                walk(v, key + ".")

    walk(node, "")
    return data, lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` → (["train", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise InputError(
            f"override {text!r} has no '='", where="--set", fix="write overrides as section.key=value"
        )
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise InputError(f"override {text!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)})",
                         where="--set", fix="quote strings, e.g. --set 'data.raw=\"my dir\"'") from None
    keys = key.strip().split(".")
    if any(not k for k in keys):
        raise InputError(f"override {text!r} has an empty key", where="--set",
                         fix="write overrides as section.key=value")
    return keys, parsed


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...],
                    origins: dict[str, str] | None = None) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` override applied (their origin, when
    ``origins`` is given, becomes ``--set``)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise InputError(f"cannot set {text!r}: {k} is not a section", where="--set")
        node[keys[-1]] = value
        if origins is not None:
            dotted = ".".join(keys)
            for key in [k for k in origins if k == dotted or k.startswith(dotted + ".")]:
                del origins[key]
            origins[dotted] = f"--set {text}"
    return out


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(tp: Any, value: Any, key: str, ctx: _Ctx) -> Any:
    """``value`` as type ``tp``, or :class:`_Mismatch` (reported by the caller with its location)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch(f"a section (mapping) of {getattr(tp, '__name__', tp)} keys")
        return _build(tp, value, key + ".", ctx)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch(_type_name(tp))
        for a in [a for a in args if a is not type(None)]:
            try:
                return _coerce(a, value, key, ctx)
            except _Mismatch:
                continue
        raise _Mismatch(_type_name(tp))
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch(_type_name(tp))
    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch(f"a list ({_type_name(tp)})")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key, ctx) for v in value)
        if args and len(args) != len(value):
            raise _Mismatch(f"a list of {len(args)} values")
        return tuple(_coerce(a, v, key, ctx) for a, v in zip(args, value)) if args else tuple(value)
    if origin is list or tp is list:
        if not isinstance(value, list | tuple):
            raise _Mismatch(f"a list ({_type_name(tp)})")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(arg, v, key, ctx) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch("a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if tp is int:
        if isinstance(value, str) and _NUMBER.match(value.strip()) and float(value).is_integer():
            value = float(value)  # 1e3 (YAML 1.1: a string)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch("an integer")
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _Mismatch("a finite number")
            return float(value)
        raise _Mismatch("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("a string")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _Mismatch(_type_name(tp))
    return value


class _Ctx(NamedTuple):
    where: str
    origins: dict[str, str]


def _locate(ctx: _Ctx, key: str) -> str:
    return locate(ctx.origins, key, ctx.where)


def locate(origins: dict[str, str], key: str, default: str = "config") -> str:
    """Where the value of ``key`` (or of the nearest section above it) was written."""
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0]
    return default


def check_kwargs(func: Callable[..., Any], data: dict[str, Any], prefix: str, *,
                 origins: dict[str, str] | None = None, where: str = "config",
                 exclude: tuple[str, ...] = (), checks: dict[str, Check] | None = None) -> None:
    """Check a config mapping that is passed on as keyword arguments of ``func``: unknown keys,
    types (from ``func``'s annotations) and ranges (``checks``), with the same messages as
    :func:`from_dict`."""
    import inspect

    ctx = _Ctx(where, origins or {})
    params = {n: p for n, p in inspect.signature(func).parameters.items()
              if p.kind is p.KEYWORD_ONLY and n not in exclude}
    hints = typing.get_type_hints(func)
    unknown = sorted(set(data) - set(params))
    if unknown:
        raise InputError(f"unknown key(s) {[prefix + k for k in unknown]}",
                         where=_locate(ctx, prefix + unknown[0]),
                         fix=f"valid keys are: {', '.join(sorted(params))}")
    for k, v in data.items():
        _checked(hints.get(k, Any), v, prefix + k, (checks or {}).get(k), ctx)


def _checked(tp: Any, v: Any, key: str, check: Check | None, ctx: _Ctx) -> Any:
    """``v`` coerced to ``tp`` and within ``check``, else an :class:`InputError` located by ``ctx``."""
    try:
        value = _coerce(tp, v, key, ctx)
    except _Mismatch as exc:
        raise InputError(f"{key} = {v!r} is not {exc}", where=_locate(ctx, key),
                         fix=f"give {key} {exc}") from None
    if check is not None and not _apply_check(check, value):
        raise InputError(f"{key} = {v!r} is out of range", where=_locate(ctx, key),
                         fix=f"{key} must be {check.allowed}")
    return value


def _checks_of(cls: type) -> dict[str, Check]:
    out: dict[str, Check] = {}
    for klass in reversed(cls.__mro__):
        out.update(getattr(klass, "CHECKS", None) or {})
    return out


def _apply_check(check: Check, value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, tuple | list):
        return all(_apply_check(check, v) for v in value)
    try:
        return bool(check.test(value))
    except TypeError:
        return False


def _build(cls: type[C], data: dict[str, Any], prefix: str, ctx: _Ctx) -> C:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(
            f"unknown key(s) {[prefix + k for k in unknown]} for {cls.__name__}",
            where=_locate(ctx, prefix + unknown[0]),
            fix=f"valid keys are: {', '.join(sorted(fields))}",
        )
    hints = typing.get_type_hints(cls)
    checks = _checks_of(cls)
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _checked(hints.get(k, Any), v, prefix + k, checks.get(k), ctx)
    try:
        return cls(**kwargs)
    except InputError as exc:
        section = prefix.rstrip(".") or cls.__name__
        raise InputError(f"{section}: {exc.what}", where=_locate(ctx, section) if prefix else ctx.where,
                         fix=exc.fix) from None


def from_dict(cls: type[C], data: dict[str, Any] | None, *, where: str = "config",
              origins: dict[str, str] | None = None, prefix: str = "") -> C:
    """Build dataclass ``cls`` from a mapping, checking every value's type and range.

    Unknown keys, values of the wrong type (``train.lr: "fast"``) and values outside a field's range
    (the class's ``CHECKS``) raise :class:`InputError` naming the key, the value, what is allowed and
    where the value came from (``origins``: key path → ``file.yaml:LINE`` or ``--set ...``;
    otherwise ``where``). ``prefix`` is the key path of ``data`` itself (``"kg.build."``).
    """
    if data is not None and not isinstance(data, dict):
        raise InputError(f"expected a mapping of {cls.__name__} keys, got {type(data).__name__}", where=where)
    return _build(cls, dict(data or {}), prefix, _Ctx(where, origins or {}))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; where both hold a dict, merged recursively."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) → plain dict suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
