"""Typed options for the registries (datasets, estimators) given as strings on the command line."""
from __future__ import annotations

import inspect
from typing import Any

TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string"}


def coerce_option(value: Any, default: Any) -> Any:
    """Convert a CLI-style ``value`` (a string, or an int for a float) to the type of ``default``.

    Options without a typed default (``None``, no default) are passed through; a value that does not
    fit raises ``ValueError`` so that each registry can word its own sentence.
    """
    if default is inspect.Parameter.empty or default is None or value is None:
        return value
    if isinstance(default, bool):
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if isinstance(value, bool):
        raise ValueError(value)
    try:
        if isinstance(default, float):
            return float(value)
        if isinstance(default, int):
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
    except TypeError:
        raise ValueError(value) from None
    if isinstance(default, str):
        return str(value)
    return value


def type_name(default: Any) -> str:
    """'integer', 'float', ... for a sentence about an option's expected type."""
    return TYPE_NAMES.get(type(default), type(default).__name__)
