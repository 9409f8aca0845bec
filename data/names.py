"""Names that become folder names (run names, store tags, dataset specs): names, never paths.

Kept free of heavy imports (no torch, no h5py): the store, the runs and every CLI check names with it.
"""
from __future__ import annotations

import hashlib
import re

from dsa.config import NAME_PATTERN
from dsa.errors import UserError

#: what a run name may be: a name, never a path
RUN_NAME = re.compile(NAME_PATTERN)


class RunError(UserError):
    """A run folder or checkpoint problem the user can fix (missing, unreadable, another format)."""


def check_name(name: str, what: str = "run name") -> str:
    """``name`` when it is a plain name (letters, digits, ``._+-``, not starting with a dot); a RunError
    otherwise: run names and store tags become folder names and must never point outside their folder."""
    if not isinstance(name, str) or not RUN_NAME.match(name) or len(name) > 200:
        raise RunError(f"the {what} {name!r} is not a plain name: use letters, digits and . _ + - "
                       f"(starting with a letter or digit, no / or ..)")
    return name


def derived_name(text: str) -> str:
    """The name of an output derived from ``text`` (a folder's name, the run names a plot compares): ``text``
    itself when it is a plain name, else its plain characters and a digest of it (``my crops`` ->
    ``my-crops+1a2b3c4d``), checked by :func:`check_name`: a derived output path never leaves its folder."""
    if isinstance(text, str) and RUN_NAME.match(text) and len(text) <= 200:
        return text
    raw = str(text).encode("utf-8", "surrogateescape")
    plain = re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)))[:60].rstrip(".-")
    return check_name(f"{plain or 'name'}+{hashlib.sha256(raw).hexdigest()[:8]}", "derived name")


#: dataset options that only choose a split of the same images (``data.datasets.holdout_split``): a store
#: computed for the dataset serves every such split, so they are left out of the store's folder name
SPLIT_OPTIONS = ("val_ids", "val_seed")


def without_split_options(spec: str) -> str:
    """``spec`` without the options of :data:`SPLIT_OPTIONS` (``synthetic:val_ids=50`` -> ``synthetic``)."""
    name, sep, options = str(spec).partition(":")
    if not sep:
        return name
    kept = [p for p in options.split(",") if p.strip() and p.partition("=")[0].strip() not in SPLIT_OPTIONS]
    return f"{name}:{','.join(kept)}" if kept else name


def dataset_dirname(spec: str) -> str:
    """The folder name of a dataset spec (``name`` or ``name:key=value,...``) in a store path or a run's
    ``eval/``: the name itself, checked to be a name; with options, the name and a digest of them
    (``folder+3f2a9c1e``), so that an option value (a path) never becomes part of a path."""
    name, _, options = str(spec).partition(":")
    check_name(name, "dataset name")
    if not options:
        return name
    canonical = ",".join(sorted(p.strip() for p in options.split(",") if p.strip()))
    return f"{name}+{hashlib.sha256(canonical.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"




def union_dirname(specs: "list[str] | tuple[str, ...]") -> str:
    """The folder name of several dataset specs together (a run's evaluation on several sets): their
    :func:`dataset_dirname` joined by ``+`` (``market1501+cuhk01+3f2a9c1e``)."""
    return check_name("+".join(dataset_dirname(s) for s in specs), "folder name of the datasets")
