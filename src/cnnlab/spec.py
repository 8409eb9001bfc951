"""Typed settings declared once: default, valid values and documentation on the field.

Recipe sections and augmentation transforms are dataclasses whose fields are made with
`key(...)`. `build` turns a plain dict (from TOML, JSON or the command line) into such a
dataclass, refusing unknown keys, wrong types and out-of-range values with a one-line
error that names the key and its source; `to_dict` is the way back.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Range:
    """A number between `low` and `high` (either may be open-ended)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __call__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or value < self.high or not self.high_open and value == self.high

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '≥'} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '≤'} {_number(self.high)}"
        return (f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(value: float) -> str:
    """An int whole (a seed's bound), a float short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]

    def __call__(self, value: str) -> bool:
        return value in self.choices

    def __str__(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class Each:
    """Every element of a list satisfies `check`; optionally a fixed length."""

    check: Callable[[Any], bool]
    length: int | None = None

    def __call__(self, values: list) -> bool:
        return (self.length is None or len(values) == self.length) and all(map(self.check,
                                                                               values))

    def __str__(self) -> str:
        count = f"{self.length} numbers" if self.length else "numbers"
        return f"{count}, each {self.check}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)   # [0, 1)
PROBABILITY = Range(0, 1)


def key(default: Any, doc: str, check: Callable[[Any], bool] | None = None,
        flag: str | None = None, parse: Callable[[Any, str], Any] | None = None) -> Any:
    """A setting: its default, what it means, the values it accepts, the command-line flag
    that overrides it (if any), and for structured values the function that parses them."""
    return field(default_factory=lambda: copy.deepcopy(default),
                 metadata={"doc": doc, "check": check, "flag": flag, "parse": parse})


def default_of(f: Any) -> Any:
    return f.default_factory()


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict or tp is dict:
        return "table"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


class SpecError(CnnlabError):
    """A bad recipe value; `source` (file or flag) is prefixed by whoever knows it."""


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(inner[0], value, path)
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(tp)
    if ok is not None:
        if not ok:
            raise SpecError(f"{path} = {value!r}: expected {type_name(tp)}")
        if tp is float:
            value = float(value)
            if not math.isfinite(value):
                raise SpecError(f"{path} = {value!r}: expected a finite number")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(f"{path} = {value!r}: expected {type_name(tp)}")
        item = typing.get_args(tp)[0]
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{path} = {value!r}: expected a table")
        return dict(value)
    raise TypeError(f"unsupported setting type {tp!r}")  # a programming error, not a user's


def build(cls: type, data: Any, path: str = "") -> Any:
    """`cls` from a dict: missing keys take their defaults, anything else is checked."""
    where = path or "the recipe"
    if not isinstance(data, dict):
        raise SpecError(f"{where} must be a table (got {data!r})")
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        name = f"{path}.{unknown[0]}" if path else unknown[0]
        raise SpecError(f"{name}: unknown key; valid keys{' in ' + path if path else ''}: "
                        f"{', '.join(known)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        f = known[name]
        full = f"{path}.{name}" if path else name
        parse = f.metadata.get("parse")
        value = parse(value, full) if parse else _convert(hints[name], value, full)
        check = f.metadata.get("check")
        if value is not None and check is not None and not check(value):
            raise SpecError(f"{full} = {value!r}: must be {check}")
        values[name] = value
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain data for JSON and TOML; None values are left out (TOML has no null)."""
    if is_dataclass(obj):
        out = {"name": obj.NAME} if hasattr(obj, "NAME") else {}
        for f in fields(obj):
            value = to_dict(getattr(obj, f.name))
            if value is not None:
                out[f.name] = value
        return out
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class KeyDoc:
    """One documented key: what `cnnlab recipe keys`, the TOML comments and the command-line
    flags are made from."""

    name: str
    type: Any
    default: Any
    valid: str
    doc: str
    flag: str | None = None

    @property
    def value_type(self) -> Any:
        """The type without its `| None`."""
        return next((a for a in typing.get_args(self.type) if a is not type(None)), self.type)


def documented_keys(cls: type, prefix: str = "") -> list[KeyDoc]:
    """Every key of `cls`, its sections expanded into dotted names."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        name = f"{prefix}{f.name}"
        if is_dataclass(hints[f.name]):
            rows += documented_keys(hints[f.name], f"{name}.")
            continue
        check = f.metadata.get("check")
        rows.append(KeyDoc(name, hints[f.name], default_of(f), str(check) if check else "",
                           f.metadata["doc"], f.metadata.get("flag")))
    return rows
