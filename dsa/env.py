"""The environment variables the programs read: declared once, each beside its type and range.

The declarations use the validation layer of the configuration (:mod:`dsa.params`: the same
:func:`~dsa.params.limits`, parsed by :func:`~dsa.params.convert` and checked by
:func:`~dsa.params.check_value`), so an environment variable and a ``--set`` field are refused by the
same code.  Every command-line program checks them all before any work (``data.console``): a value that
does not fit is one sentence naming the variable, the value and what is allowed.  The code reads them
through :func:`env_value`, never ``os.environ`` directly, so the declaration here is the only one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .params import ConfigError, allowed, check_value, convert, limits

#: Python module names, comma-separated (spaces around the commas allowed)
_MODULE = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
MODULES_PATTERN = rf"\s*{_MODULE}(\s*,\s*{_MODULE})*\s*,?\s*"


class EnvError(ConfigError):
    """An environment variable whose value the programs cannot use (a ``ConfigError``, so a ``UserError``)."""


@dataclass(frozen=True)
class EnvVar:
    """One variable: ``kind`` is its type (``int``, or ``str`` for a path or a list of module names),
    ``meta`` its allowed values (:func:`dsa.params.limits`), ``says`` what a text value must be in words;
    ``default`` says in words what an unset (or empty) variable means."""

    name: str
    kind: type
    default: str
    doc: str
    meta: dict[str, Any] = field(default_factory=dict)
    says: str = "a folder path"

    def allowed(self) -> str:
        if self.kind is int:
            bounds = allowed(self.meta)
            return f"a whole number {bounds}" if bounds else "a whole number"
        return self.says

    def parse(self, raw: str) -> Any:
        """The value of ``raw`` (a non-empty string), or an EnvError sentence."""
        try:
            value = convert(self.name, raw.strip() if self.kind is not str else raw, self.kind)
            check_value(self.name, value, self.kind, self.meta)
        except ConfigError:
            raise self.error(raw) from None
        if self.meta.get("pattern") == MODULES_PATTERN:
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    def error(self, raw: str) -> EnvError:
        return EnvError(f"the environment variable {self.name}={raw!r} is not allowed: it must be {self.allowed()} "
                        f"(unset, it means {self.default}); fix or unset it")


ENV_VARS: dict[str, EnvVar] = {v.name: v for v in (
    EnvVar("DSA_ROOT", str, "datasets", "the data root every --root option defaults to"),
    EnvVar("DSA_THREADS", int, "0: the available cores minus the DataLoader workers",
           "intra-op CPU threads of every command that has no --threads (0: the thread policy)", limits(ge=0)),
    EnvVar("DSA_MAX_IMAGE_PIXELS", int, "40000000", "the largest image (in pixels) any stage decodes; larger ones "
           "are refused from their header", limits(ge=1)),
    EnvVar("DSA_PLUGINS", str, "no plugins", "modules imported at start that register datasets, estimators "
           "or backbones (dsa.registry)", limits(pattern=MODULES_PATTERN),
           says="comma-separated Python module names (e.g. mypackage.datasets,myplugin)"),
)}


def env_value(name: str, environ: dict[str, str] | None = None) -> Any:
    """The value of the declared variable ``name`` (None when unset or empty); an EnvError when it does not fit."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or not raw.strip():
        return None
    return ENV_VARS[name].parse(raw)


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Every declared variable that is set, checked (the first that does not fit is an EnvError)."""
    for name in ENV_VARS:
        env_value(name, environ)
