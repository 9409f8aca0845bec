"""The one validation layer: every value a user can set is declared once, beside its field, with its type
and range, and checked by the same code wherever it comes from.

- :func:`param` declares a field of a configuration dataclass (``dsa.config``: config files, ``--set``)
  with its bounds, choices, multiple or pattern; :func:`check_fields` checks a dataclass instance
  against the declarations; :func:`convert` turns text (YAML, ``--set``, an environment variable) into
  the field's type.
- ``dsa.env`` declares the environment variables with the same :func:`limits` and checks them with
  :func:`convert` and :func:`check_value`.
- Command-line options declare theirs with click's types (``data.console.IntRange`` adds multiples).

Every problem is a :class:`ConfigError` (a ``UserError``): one sentence naming the field, the value
and what is allowed.
"""
from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import field, fields, is_dataclass
from typing import Any

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration value or file a user can fix; the message names the field and what is allowed."""


#: what a name that becomes a folder name may be (run names, store tags, estimator and dataset names):
#: a name, never a path (``data.names.check_name`` checks with it too)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
#: a dataset spec: a plain name, then its options after ``:`` (the name becomes a folder name)
SPEC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*(:.*)?$"


def limits(*, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: Any = None, multiple_of: int | None = None, pattern: str | None = None,
           doc: str = "") -> dict[str, Any]:
    """The declaration of the allowed values (the metadata of a :func:`param` field, or of an environment
    variable): ``ge``/``gt``/``le``/``lt`` bounds for numbers (and for each element of a tuple), ``choices``
    (a sequence, or a callable returning the names, such as ``Registry.known_names``), ``multiple_of`` for
    integers, ``pattern`` (a regular expression the whole string must match).  Floats must also be finite."""
    return {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "multiple_of": multiple_of,
            "pattern": pattern}


def param(default: Any, doc: str = "", *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, choices: Any = None,
          multiple_of: int | None = None, pattern: str | None = None) -> Any:
    """A dataclass field with its allowed values declared beside it (see :func:`limits`)."""
    meta = limits(ge=ge, gt=gt, le=le, lt=lt, choices=choices, multiple_of=multiple_of, pattern=pattern, doc=doc)
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def allowed(meta: dict[str, Any]) -> str:
    """The bounds of ``meta`` in words (``≥ 0 and ≤ 1``); empty when it has none."""
    parts = []
    for key, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {_number(meta[key])}")
    if meta.get("multiple_of"):
        parts.append(f"a multiple of {meta['multiple_of']}")
    return " and ".join(parts)


def _choices(meta: dict[str, Any]) -> list[Any] | None:
    c = meta.get("choices")
    if c is None:
        return None
    if callable(c):  # e.g. a registry's known_names: the names plugin modules register count too
        return list(c())
    return list(c)


def check_value(where: str, value: Any, kind: Any, meta: dict[str, Any]) -> None:
    """One field's value against its declared type and range; a ConfigError sentence otherwise."""
    choices = _choices(meta)
    if value is None:
        if type(None) in typing.get_args(kind):
            return
        raise ConfigError(f"{where} must be set (it has no 'none' value)")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}={value!r} is not allowed; choose one of: {', '.join(map(str, choices))}")
    bad = [v for v in (value if isinstance(value, tuple) else (value,))  # a list field: each entry
           if meta.get("pattern") and isinstance(v, str) and not re.fullmatch(meta["pattern"], v)]
    if bad:
        what = "does not start with a plain name" if meta["pattern"] == SPEC_PATTERN else "is not a plain name"
        raise ConfigError(f"{where}={bad[0]!r} {what}: use letters, digits and . _ + - (starting with a letter or "
                          f"digit, no / or ..)")
    numbers = value if isinstance(value, tuple) else (value,)
    for x in numbers:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            continue
        if isinstance(x, float) and not math.isfinite(x):
            raise ConfigError(f"{where}={x} is not a finite number")
        ok = ((meta.get("ge") is None or x >= meta["ge"]) and (meta.get("gt") is None or x > meta["gt"])
              and (meta.get("le") is None or x <= meta["le"]) and (meta.get("lt") is None or x < meta["lt"])
              and (not meta.get("multiple_of") or x % meta["multiple_of"] == 0))
        if not ok:
            raise ConfigError(f"{where}={value!r} is out of range: it must be {allowed(meta)}")


def check_fields(obj: Any, section: str) -> None:
    """Every field of the dataclass ``obj`` against its declaration (``section`` prefixes the names)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        if is_dataclass(getattr(obj, f.name)):
            continue
        where = f"{section}.{f.name}" if section else f.name
        check_value(where, getattr(obj, f.name), hints[f.name], dict(f.metadata))


def convert(where: str, value: Any, kind: Any) -> Any:
    """``value`` (from YAML, JSON or a ``--set`` string) as a value of the field type ``kind``."""
    args = typing.get_args(kind)
    lists = [a for a in args if typing.get_origin(a) is tuple]
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and lists:  # one value or a list of them
        if isinstance(value, (list, tuple)):
            return convert(where, value, lists[0])
        rest = tuple(a for a in args if a not in lists)
        kind = rest[0] if len(rest) == 1 else typing.Union[rest]
        args = typing.get_args(kind)
    optional = (typing.get_origin(kind) in (typing.Union, types.UnionType)) and type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~", "")):
            return None
        kind = next(a for a in args if a is not type(None))
    origin = typing.get_origin(kind)
    try:
        if origin is tuple:
            items = value
            if isinstance(value, str):
                items = [x for x in value.strip().strip("[]()").replace(",", " ").split()]
            if not isinstance(items, (list, tuple)):
                raise ValueError(value)
            inner = typing.get_args(kind)[0]
            return tuple(convert(where, x, inner) for x in items)
        if kind is bool:
            if isinstance(value, bool):
                return value
            low = str(value).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            text = value.strip() if isinstance(value, str) else None
            number = (int(text) if text is not None and re.fullmatch(r"[+-]?\d+", text)
                      else float(text) if text is not None else value)
            if isinstance(number, float):
                if not number.is_integer():
                    raise ValueError(value)
                number = int(number)
            if not isinstance(number, int):
                raise ValueError(value)
            return number
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError, OverflowError):
        name = getattr(kind, "__name__", str(kind))
        article = "an" if name[:1] in "aeiou" else "a"
        raise ConfigError(f"{where} needs {article} {name} value, not {value!r}") from None
    return value
