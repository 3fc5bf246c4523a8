"""The allowed range of every numeric setting, declared beside the field, and the one check of them.

A field is declared ``max_steps: int = ranged(100, ">= 1")``; the spec is one of ``">= a"``,
``"> a"``, ``"<= b"``, an interval ``"[a, b]"`` / ``"(a, b]"`` / ``"[a, b)"`` / ``"(a, b)"``,
``"any"`` (any finite number), or ``"one of a, b"``. ``None`` is allowed exactly when the field's
type is ``Optional``; a list of numbers has its range checked per element. ``validate_config``
walks a config's dataclass tree and raises ``ConfigError`` with one line naming the key, the value
and what is allowed; every float must be finite.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

RANGE = "range"  # the field-metadata key


class ConfigError(ValueError):
    """A recipe, override or setting is invalid; the message says which key and why."""


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is excluded
    high_open: bool = False
    choices: tuple[float, ...] | None = None
    spec: str = "any"

    @classmethod
    def parse(cls, spec: str) -> "Range":
        text = spec.strip()
        if text == "any":
            return cls(spec=text)
        if text.startswith("one of "):
            return cls(choices=tuple(float(v) for v in text[len("one of "):].split(",")), spec=text)
        if m := re.fullmatch(r"(>=|>|<=|<)\s*(\S+)", text):
            op, bound = m.group(1), float(m.group(2))
            if op.startswith(">"):
                return cls(low=bound, low_open=op == ">", spec=text)
            return cls(high=bound, high_open=op == "<", spec=text)
        if m := re.fullmatch(r"([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])", text):
            return cls(low=float(m.group(2)), high=float(m.group(3)), low_open=m.group(1) == "(",
                       high_open=m.group(4) == ")", spec=text)
        raise ValueError(f"not a range spec: {spec!r}")

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.choices is not None:
            return value in self.choices
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a finite number"
        if self.choices is not None:
            return f"one of {', '.join(_number(c) for c in self.choices)}"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_number(self.high)}"
        return kind


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def ranged(default: Any = dataclasses.MISSING, spec: str = "any", *, default_factory: Any = dataclasses.MISSING):
    """A dataclass field whose numeric value must lie in ``spec`` (see the module docstring)."""
    return field(default=default, default_factory=default_factory, metadata={RANGE: Range.parse(spec)})


def numeric_kind(hint: Any) -> tuple[type | None, bool, bool]:
    """``(int or float or None, optional, is_list)`` for a field's type hint; bool is not a number."""
    optional = False
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else hint
    if typing.get_origin(hint) in (list, typing.List):
        (item,) = typing.get_args(hint) or (None,)
        return (item if item in (int, float) else None), optional, True
    return (hint if hint in (int, float) else None), optional, False


def numeric_fields(cls: type, prefix: str = ""):
    """``(dotted key, field, number type, optional, is_list)`` for every numeric field under ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from numeric_fields(hint, f"{prefix}{f.name}.")
            continue
        number, optional, is_list = numeric_kind(hint)
        if number is not None:
            yield f"{prefix}{f.name}", f, number, optional, is_list


def validate_config(config: Any) -> None:
    """Every numeric setting of ``config`` (a dataclass tree) within its declared range, finite, and
    None only where the field is Optional; raises ``ConfigError`` naming the key, value and range."""
    for key, f, number, optional, is_list in numeric_fields(type(config)):
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        allowed: Range = f.metadata.get(RANGE, Range())
        integer = number is int
        what = allowed.describe(integer) + (" (or null)" if optional else "")
        if value is None:
            if optional:
                continue
            raise ConfigError(f"{key}=null is not allowed: it must be {what}")
        for item in (value if is_list else [value]):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not allowed.allows(float(item)):
                shown = item if not is_list else f"{value} (the entry {item})"
                raise ConfigError(f"{key}={shown} is not allowed: it must be {what}")
