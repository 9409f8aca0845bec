"""One small registry pattern for the interchangeable things: backbones, datasets, estimators.

A :class:`Registry` maps a name to an object (a class or a builder function).  Entries can be given
lazily as ``"module:attribute"`` strings, so that listing the names never imports a heavy backend
(detectron2, MediaPipe) and a backend is imported only when it is chosen.  Code outside this
repository adds its own entries in two ways:

- call ``REGISTRY.register("name", obj)`` (or use ``@REGISTRY.register("name")`` as a decorator)
  in a module that is imported before the lookup, e.g. your own script that then calls the product's
  Python API;
- for the command-line programs, name that module in the environment variable ``DSA_PLUGINS``
  (comma-separated module names, importable from the current directory or ``PYTHONPATH``), or
  declare it as an entry point of the group ``dsa_reid.plugins`` in your package's metadata.  The
  plugins are imported once: by every command-line program when it starts (``data.console``), so that
  one that cannot be imported is said before any work, and by the Python API the first time a name is
  looked up that the registry does not know.

An unknown name is a :class:`RegistryError` (a ``UserError``) listing the names there are.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .env import env_value
from .errors import UserError

T = TypeVar("T")

#: environment variable naming plugin modules to import (comma-separated)
PLUGINS_ENV = "DSA_PLUGINS"
#: entry-point group of installed plugins
PLUGINS_GROUP = "dsa_reid.plugins"

_plugins_loaded = False


class RegistryError(UserError, KeyError):
    """An unknown or clashing registry name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the sentence
        return str(self.args[0]) if self.args else ""


def load_plugins() -> list[str]:
    """Import the modules named in ``$DSA_PLUGINS`` and the ``dsa_reid.plugins`` entry points, once.
    Returns the names imported; a module that cannot be imported is a sentence naming it."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    names = env_value(PLUGINS_ENV) or []  # not a list of module names: an EnvError sentence
    _plugins_loaded = True
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise RegistryError(f"the plugin module {name!r} named in ${PLUGINS_ENV} cannot be imported ({e}); "
                                f"check the name and that its folder is on PYTHONPATH") from None
        except Exception as e:  # noqa: BLE001 - the user's own module failed: where, in one sentence
            raise RegistryError(f"the plugin module {name!r} named in ${PLUGINS_ENV} failed while it was imported "
                                f"({type(e).__name__}: {e}, at {_where(e)}); fix it or remove it from "
                                f"${PLUGINS_ENV}") from None
        loaded.append(name)
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGINS_GROUP):
        ep.load()
        loaded.append(ep.value)
    return loaded


def _where(error: BaseException) -> str:
    """file:line where ``error`` was raised (a SyntaxError: where the bad line is)."""
    if isinstance(error, SyntaxError):
        return f"{error.filename} line {error.lineno}"
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename} line {frames[-1].lineno}" if frames else "its import"


class Registry(Generic[T]):
    """Names → objects of one kind (``kind`` words the sentences: "dataset", "backbone", ...)."""

    def __init__(self, kind: str, entries: dict[str, T | str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = dict(entries or {})

    def register(self, name: str, obj: T | str | None = None, *, replace: bool = False) -> Any:
        """Add ``obj`` under ``name``; without ``obj`` a decorator.  A name that is taken is refused
        unless ``replace`` (re-registering the same object is a no-op)."""
        if obj is None:
            def decorator(o: T) -> T:
                self.register(name, o, replace=replace)
                return o
            return decorator
        if not name or not isinstance(name, str):
            raise RegistryError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        old = self._entries.get(name)
        if old is not None and old is not obj and not replace:
            raise RegistryError(f"the {self.kind} name {name!r} is already registered; choose another name "
                                f"or pass replace=True")
        self._entries[name] = obj
        return obj

    def names(self) -> list[str]:
        return list(self._entries)

    def known_names(self) -> list[str]:
        """The names, the plugin modules' included (they are imported first, once per process): what a
        configuration field that names an entry may be."""
        load_plugins()
        return self.names()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def unknown(self, name: str) -> RegistryError:
        return RegistryError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}")

    def get(self, name: str) -> T:
        """The object registered as ``name`` (a lazy entry is imported now); plugins are loaded when
        the name is unknown, then an unknown name is a RegistryError listing the known ones."""
        if name not in self._entries:
            load_plugins()
        if name not in self._entries:
            raise self.unknown(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def is_loaded(self, name: str) -> bool:
        """Is ``name``'s entry already imported (not a lazy string)?"""
        return name in self._entries and not isinstance(self._entries[name], str)

    def lazy_target(self, name: str) -> str | None:
        """The ``"module:attribute"`` of a lazy entry not imported yet, else None."""
        entry = self._entries.get(name)
        return entry if isinstance(entry, str) else None


Builder = Callable[..., Any]
