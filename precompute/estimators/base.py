"""The estimator interface, its registry and helpers shared by the backends (docs/DESIGN.md §5).

An estimator turns a batch of person crops into per-image dense semantics (:class:`dsa.iuv.IUV`:
part labels I and chart coordinates U, V of the crop's size) or ``None`` when no person was found.
Backends are registered by name as ``"module:Class"`` strings and imported only when chosen, so that
optional dependencies (detectron2, MediaPipe) are never imported unless asked for.
"""
from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from data.options import coerce_option

from dsa.errors import UserError
from dsa.iuv import IUV
from dsa.registry import Registry, load_plugins

__all__ = ["Estimator", "EstimatorError", "ESTIMATORS", "DETECTRON2_INSTALL", "build_estimator", "estimator_options",
           "key_rng", "sibling_path"]


class EstimatorError(UserError, ValueError):
    """A problem the user can fix (unknown estimator, bad option, missing file or dependency): one sentence."""


#: How to install detectron2 and its DensePose project (not on PyPI): the README's commands, which the
#: ``densepose`` and ``iuv`` estimators print when the packages are missing.  detectron2's setup.py imports
#: torch, so pip's build isolation must be off; DensePose's own requirements would re-clone detectron2, so
#: it is installed without them and its one other runtime need (``av``) is named.
DETECTRON2_INSTALL = (
    "make install-densepose DETECTRON2=<checkout or git URL>, which runs pip install --no-build-isolation <detectron2>, "
    "then pip install --no-build-isolation --no-deps <detectron2>/projects/DensePose, then pip install av "
    "(<detectron2>: a local checkout of https://github.com/facebookresearch/detectron2)"
)


#: name → estimator class; the built-in ones are "module:Class" entries imported when chosen
#: (``dsa.registry``: register your own with ``ESTIMATORS.register("name", cls)``, or via ``$DSA_PLUGINS``).
ESTIMATORS: Registry = Registry("estimator", {
    "synthetic": "precompute.estimators.synthetic:SyntheticEstimator",
    "iuv": "precompute.estimators.iuv:IUVFileEstimator",
    "densepose": "precompute.estimators.densepose:DensePoseEstimator",
    "pose": "precompute.estimators.pose:PoseEstimator",
})


class Estimator(ABC):
    """Dense-semantics source.  Subclasses take their options as keyword arguments of ``__init__``
    (after ``dataset_root``) and validate them there with :class:`EstimatorError`."""

    name: ClassVar[str] = ""
    #: how many images :meth:`estimate` gets at once (the runner may override it)
    batch_size: int = 16
    #: the :meth:`settings` that identify the model itself (e.g. SHA-256s of its files): ``inspect`` refuses
    #: to draw a store's part-label maps with an estimator that differs from the store's in one of them
    model_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dataset_root: str | Path) -> None:
        self.dataset_root = Path(dataset_root)

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-able description of everything that changes the output (goes into the store and decides
        whether two stores are interchangeable): contents, never paths."""

    def provenance(self) -> dict[str, Any]:
        """JSON-able record of what is not a setting but a reader may want to know (where the model files were
        read from, library sources); stored with every shard, never compared."""
        return {}

    @abstractmethod
    def estimate(self, images: Sequence[np.ndarray], paths: Sequence[str | Path],
                 keys: Sequence[str]) -> list[IUV | None]:
        """One :class:`IUV` of each image's size per image (RGB uint8), or ``None``: no person found.

        ``paths`` are absolute file paths, ``keys`` the dataset-relative keys (used for seeding and
        for looking up precomputed files)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"


def _check_name(name: str) -> None:
    """An EstimatorError listing the estimators when ``name`` is none of them (plugins included)."""
    if name not in ESTIMATORS:
        load_plugins()
    if name not in ESTIMATORS:
        raise EstimatorError(f"unknown estimator {name!r}; choose one of: {', '.join(sorted(ESTIMATORS))}")


def _resolve(name: str) -> type[Estimator]:
    return ESTIMATORS.get(name)


def _coerce(name: str, option: str, value: Any, default: Any) -> Any:
    """Make CLI-style values (strings, ints for floats) fit the type of the option's default."""
    try:
        return coerce_option(value, default)
    except ValueError:
        raise EstimatorError(
            f"estimator {name!r}: option {option}={value!r} must be a {type(default).__name__} "
            f"(default {default!r})") from None


def _options_of(cls: type[Estimator]) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
            if k not in ("self", "dataset_root") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def estimator_options(name: str) -> dict[str, Any]:
    """The options estimator ``name`` takes, with their defaults (imports its module, not its dependencies)."""
    _check_name(name)
    return {k: p.default for k, p in _options_of(_resolve(name)).items()}


def build_estimator(name: str, dataset_root: str | Path, **options: Any) -> Estimator:
    """Build the estimator ``name`` for the dataset folder ``dataset_root`` with its ``options``.

    Unknown names and options raise :class:`EstimatorError` (a ``ValueError``) naming the valid ones."""
    _check_name(name)
    try:
        cls = _resolve(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("precompute.estimators"):
            raise EstimatorError(f"the estimator {name!r} is not available in this checkout ({e.name} is missing)") from None
        raise
    params = _options_of(cls)
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = ", ".join(f"{k}={p.default!r}" for k, p in params.items()) or "none"
        raise EstimatorError(f"estimator {name!r} has no option {', '.join(unknown)}; its options are: {valid}")
    coerced = {k: _coerce(name, k, v, params[k].default) for k, v in options.items()}
    return cls(dataset_root, **coerced)


# ----------------------------------------------------------------------------- helpers for backends
def key_rng(seed: int, key: str) -> np.random.Generator:
    """A random generator that depends only on (seed, key): results do not depend on batch order or worker."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def sibling_path(path: str | Path, suffix: str, key: str | None = None, folder: str | Path | None = None) -> Path:
    """``<stem><suffix>`` beside the image, or under ``folder`` mirroring the dataset tree (by ``key``).

    Example: ``sibling_path("/d/query/0001_c1.jpg", "_IUV.png")`` → ``/d/query/0001_c1_IUV.png``."""
    path = Path(path)
    if folder is None:
        return path.with_name(path.stem + suffix)
    rel = Path(key) if key is not None else Path(path.name)
    return Path(folder) / rel.parent / (rel.stem + suffix)
