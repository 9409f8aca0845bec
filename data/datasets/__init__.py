"""Dataset adapters: each lists (relative path, pid, camid) triples; :class:`ReidDataset` does the rest.

``build_dataset(name, root, **options)`` looks the adapter up in :data:`DATASETS` and builds it on the
data root ``root`` (each adapter finds its folder under it, or accepts ``root`` pointing straight at it).
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from ..options import coerce_option, type_name
from .base import MARKET_PATTERN, DatasetError, Item, ReidDataset, find_dataset_dir, scan_images
from .cuhk01 import CUHK01
from .cuhk03 import CUHK03Detected, CUHK03Labeled
from .folder import FolderDataset
from .market import DukeMTMCreID, Market1501, Synthetic
from .msmt17 import MSMT17

__all__ = [
    "Item",
    "ReidDataset",
    "DatasetError",
    "DATASETS",
    "build_dataset",
    "parse_dataset_spec",
    "dataset_options",
    "find_dataset_dir",
    "scan_images",
    "MARKET_PATTERN",
]

#: name → adapter class (the constructor takes ``root`` and the adapter's keyword options)
DATASETS: dict[str, type[ReidDataset]] = {
    "market1501": Market1501,
    "dukemtmcreid": DukeMTMCreID,
    "cuhk03-labeled": CUHK03Labeled,
    "cuhk03-detected": CUHK03Detected,
    "cuhk01": CUHK01,
    "msmt17": MSMT17,
    "folder": FolderDataset,
    "synthetic": Synthetic,
}


def dataset_options(name: str) -> dict[str, Any]:
    """The keyword options adapter ``name`` accepts, with their defaults."""
    params = list(inspect.signature(DATASETS[name].__init__).parameters.values())[2:]  # skip self, root
    return {p.name: p.default for p in params}


def parse_dataset_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"cuhk01:split=3,seed=1"`` → ``("cuhk01", {"split": "3", "seed": "1"})``.

    Every stage takes a dataset by name; the ``name:key=value,...`` form carries adapter options
    (CUHK01's split, say) through ``make precompute/train/eval DATASET=...`` unchanged.
    """
    name, sep, rest = spec.partition(":")
    options: dict[str, str] = {}
    if sep:
        for pair in filter(None, rest.split(",")):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise DatasetError(f"Dataset option {pair!r} in {spec!r} is not of the form key=value.")
            options[key.strip()] = value.strip()
    return name, options


def build_dataset(name: str, root: str | os.PathLike, **options: Any) -> ReidDataset:
    """Build dataset ``name`` from the data root ``root``; unknown names/options raise :class:`DatasetError`.

    ``name`` may carry options as ``name:key=value,...`` (see :func:`parse_dataset_spec`); keyword
    options given as well take precedence.
    """
    name, spec_options = parse_dataset_spec(name)
    options = {**spec_options, **options}
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}.")
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hint = f"it accepts: {', '.join(accepted)}" if accepted else "it takes no options"
        raise DatasetError(f"Dataset {name!r} has no option {', '.join(unknown)}; {hint}.")
    for key, value in options.items():  # CLI values arrive as strings: convert to the default's type
        default = accepted[key]
        try:
            options[key] = coerce_option(value, default)
        except ValueError:
            kind = type_name(default)
            article = "an" if kind[0] in "aeiou" else "a"
            raise DatasetError(f"Option {key} of dataset {name!r} must be {article} {kind}, got {value!r}.") from None
    return DATASETS[name](root, **options)
