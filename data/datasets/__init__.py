"""Dataset adapters: each lists (relative path, pid, camid) triples; :class:`ReidDataset` does the rest.

``build_dataset(name, root, **options)`` looks the adapter up in :data:`DATASETS` and builds it on the
data root ``root`` (each adapter finds its folder under it, or accepts ``root`` pointing straight at it).

Your own adapter: subclass :class:`ReidDataset`, list your triples, and register the class::

    from data.datasets import DATASETS, ReidDataset

    @DATASETS.register("mydata")
    class MyData(ReidDataset):
        def __init__(self, root, fold: int = 0):      # keyword options become ``mydata:fold=1``
            ...
            super().__init__(folder, train, query, gallery, name="mydata")

The command-line programs find it when its module is named in ``$DSA_PLUGINS`` (``dsa.registry``).

Every dataset also takes the options ``val_ids=N`` (and ``val_seed``): a validation split of its
*training* identities (:func:`holdout_split`), for choosing options without touching the test split.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from pathlib import Path

import numpy as np

from dsa.registry import Registry, load_plugins

from ..names import SPLIT_OPTIONS
from ..options import coerce_option, type_name
from .base import MARKET_PATTERN, DatasetError, Item, ReidDataset, find_dataset_dir, scan_images
from .union import TrainUnion, build_union, split_union, union_config

__all__ = [
    "Item",
    "ReidDataset",
    "DatasetError",
    "DATASETS",
    "build_dataset",
    "holdout_split",
    "parse_dataset_spec",
    "dataset_options",
    "find_dataset_dir",
    "scan_images",
    "MARKET_PATTERN",
    "split_union",
    "union_config",
    "build_union",
    "TrainUnion",
]

#: name → adapter class (the constructor takes ``root`` and the adapter's keyword options); the built-in
#: adapters are imported when first used
DATASETS: Registry = Registry("dataset", {
    "market1501": "data.datasets.market:Market1501",
    "dukemtmcreid": "data.datasets.market:DukeMTMCreID",
    "cuhk03-labeled": "data.datasets.cuhk03:CUHK03Labeled",
    "cuhk03-detected": "data.datasets.cuhk03:CUHK03Detected",
    "cuhk01": "data.datasets.cuhk01:CUHK01",
    "msmt17": "data.datasets.msmt17:MSMT17",
    "folder": "data.datasets.folder:FolderDataset",
    "synthetic": "data.datasets.market:Synthetic",
})


def _adapter(name: str) -> type[ReidDataset]:
    if name not in DATASETS:
        load_plugins()  # a plugin that cannot be imported is its own sentence
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASETS.names())}.")
    return DATASETS.get(name)


def dataset_options(name: str) -> dict[str, Any]:
    """The keyword options adapter ``name`` accepts, with their defaults."""
    params = list(inspect.signature(_adapter(name).__init__).parameters.values())[2:]  # skip self, root
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
    split = {k: options.pop(k) for k in SPLIT_OPTIONS if k in options}
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hint = f"it accepts: {', '.join([*accepted, *SPLIT_OPTIONS])}"
        raise DatasetError(f"Dataset {name!r} has no option {', '.join(unknown)}; {hint}.")
    for key, value in options.items():  # CLI values arrive as strings: convert to the default's type
        options[key] = _typed(name, key, value, accepted[key])
    dataset = _adapter(name)(Path(root).expanduser(), **options)  # adapters get the data root as a Path
    if "val_ids" in split:
        dataset = holdout_split(dataset, _typed(name, "val_ids", split["val_ids"], 0),
                                _typed(name, "val_seed", split.get("val_seed", 0), 0))
    elif split:
        raise DatasetError(f"Option val_seed of dataset {name!r} needs val_ids (the identities held out).")
    return dataset


def _typed(name: str, key: str, value: Any, default: Any) -> Any:
    try:
        return coerce_option(value, default)
    except ValueError:
        kind = type_name(default)
        article = "an" if kind[0] in "aeiou" else "a"
        raise DatasetError(f"Option {key} of dataset {name!r} must be {article} {kind}, got {value!r}.") from None


def holdout_split(dataset: ReidDataset, num_ids: int, seed: int = 0) -> ReidDataset:
    """A validation split of ``dataset``'s *training* identities: ``num_ids`` of them (chosen by a fixed
    permutation of ``seed``) are held out; the others are the training split (relabelled 0..N-1); of the
    held-out images, the first of each (identity, camera) in key order is a query, the rest the gallery
    (Market protocol).  The test split is not used at all."""
    pids = sorted({it.pid for it in dataset.train})
    if not 1 <= num_ids <= len(pids) - 2:
        raise DatasetError(f"val_ids={num_ids} must hold out between 1 and {len(pids) - 2} of the "
                           f"{len(pids)} training identities of {dataset.name}.")
    held = set(np.random.default_rng(seed).permutation(pids)[-num_ids:].tolist())
    train = [it for it in dataset.train if it.pid not in held]
    query, gallery, seen = [], [], set()
    for it in sorted((it for it in dataset.train if it.pid in held), key=lambda it: it.key):
        (gallery if (it.pid, it.camid) in seen else query).append(it)
        seen.add((it.pid, it.camid))
    if not gallery:
        raise DatasetError(f"val_ids={num_ids}: the held-out identities of {dataset.name} have one image per "
                           f"camera, so the validation gallery would be empty; hold out more identities.")
    return ReidDataset(dataset.root, train, query, gallery, name=f"{dataset.name}-val", protocol="market")
