"""The environment variables the programs read: declared once, each beside its type and range.

Every command-line program checks them all before any work (``data.console``): a value that does not
fit is one sentence naming the variable, the value and what is allowed.  The code reads them through
:func:`env_value`, never ``os.environ`` directly, so the declaration here is the only one.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import UserError

#: a Python module name (dotted)
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class EnvError(UserError, ValueError):
    """An environment variable whose value the programs cannot use."""


@dataclass(frozen=True)
class EnvVar:
    """One variable: ``kind`` is ``int`` (a whole number ``>= ge``), ``path`` or ``modules`` (comma-separated
    Python module names); ``default`` says in words what an unset (or empty) variable means."""

    name: str
    kind: str
    default: str
    doc: str
    ge: int | None = None

    def allowed(self) -> str:
        if self.kind == "int":
            return f"a whole number >= {self.ge}"
        if self.kind == "modules":
            return "comma-separated Python module names (e.g. mypackage.datasets,myplugin)"
        return "a folder path"

    def parse(self, raw: str) -> Any:
        """The value of ``raw`` (a non-empty string), or an EnvError sentence."""
        text = raw.strip()
        if self.kind == "int":
            if not re.fullmatch(r"[+-]?\d+", text) or (self.ge is not None and int(text) < self.ge):
                raise self.error(raw)
            return int(text)
        if self.kind == "modules":
            names = [n.strip() for n in text.split(",") if n.strip()]
            if not all(_MODULE.match(n) for n in names):
                raise self.error(raw)
            return names
        return raw

    def error(self, raw: str) -> EnvError:
        return EnvError(f"the environment variable {self.name}={raw!r} is not allowed: it must be {self.allowed()} "
                        f"(unset, it means {self.default}); fix or unset it")


ENV_VARS: dict[str, EnvVar] = {v.name: v for v in (
    EnvVar("DSA_ROOT", "path", "datasets", "the data root every --root option defaults to"),
    EnvVar("DSA_THREADS", "int", "0: the available cores minus the DataLoader workers",
           "intra-op CPU threads of every command that has no --threads (0: the thread policy)", ge=0),
    EnvVar("DSA_MAX_IMAGE_PIXELS", "int", "40000000", "the largest image (in pixels) any stage decodes; larger ones "
           "are refused from their header", ge=1),
    EnvVar("DSA_PLUGINS", "modules", "no plugins", "modules imported at start that register datasets, estimators "
           "or backbones (dsa.registry)"),
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
