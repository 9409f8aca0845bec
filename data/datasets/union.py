"""Several datasets at once: the union of their training splits, identities and cameras kept apart.

A union is named by its datasets' specs: a list in a configuration file (``data.dataset: [a, b]``) or
``a+b`` on the command line (:func:`split_union`).  :func:`build_union` builds each dataset on the data
root and offsets its training identities and cameras past those of the datasets before it, so that no
two datasets share a label: dataset *i*'s identity *p* is ``pid_offset_i + p`` and its camera *c* is
``camid_offset_i + c``.  Every item keeps its key, relative to its own dataset's folder, and the index of
its dataset (:attr:`TrainUnion.member_of`), through which training reads it from its own folder and its
own DSAP store (``data.joint.Source``).  One dataset is the union of one: the same items as the dataset
alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsa.registry import load_plugins

from .base import DatasetError, Item, ReidDataset

__all__ = ["split_union", "union_config", "UnionMember", "TrainUnion", "build_union"]


def _names_a_dataset(piece: str, names: set[str]) -> bool:
    return piece.partition(":")[0].strip() in names


def split_union(spec: str | Sequence[str]) -> list[str]:
    """The dataset specs of a union: ``"market1501+cuhk01:split=3"`` -> ``["market1501", "cuhk01:split=3"]``.

    A ``+`` separates two specs only where the text after it starts with a registered dataset name (alone,
    or followed by ``:`` and its options), so a ``+`` inside an option value (the ``folder`` adapter's
    ``pattern=\\d+`` regex) stays part of its spec.  A list is split entry by entry."""
    from . import DATASETS

    if not isinstance(spec, str):
        return [s for entry in spec for s in split_union(entry)]
    if "+" not in spec:
        return [spec.strip()]
    load_plugins()  # plugin datasets count as names
    names = set(DATASETS.names())
    pieces = spec.split("+")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if _names_a_dataset(piece, names):
            out.append(piece)
        else:
            out[-1] += "+" + piece
    return [s.strip() for s in out]


def union_config(data: Any) -> Any:
    """``data`` (a ``dsa.config.DataConfig``) with a ``a+b`` dataset spec split into its union; its
    ``+``-joined estimators and tags then become per-dataset lists (checked to have one per dataset)."""
    specs = split_union(data.datasets)
    if tuple(specs) == tuple(data.datasets):
        return data
    return dataclasses.replace(data, dataset=tuple(specs))


@dataclass(frozen=True)
class UnionMember:
    """One dataset of a union: its spec, the dataset, whose DSAP store it reads, and its label offsets."""

    spec: str
    dataset: ReidDataset
    estimator: str
    tag: str | None
    pid_offset: int
    camid_offset: int

    @property
    def num_cameras(self) -> int:
        """Camera ids this dataset uses (0..n-1 over all its splits): the room it takes among the union's cameras."""
        return 1 + max(it.camid for it in (*self.dataset.train, *self.dataset.query, *self.dataset.gallery))

    def train_fingerprint(self) -> str:
        """sha256 of its training items (key, identity, camera): what its part of the training data is."""
        lines = sorted(f"{it.key}\t{it.pid}\t{it.camid}" for it in self.dataset.train)
        return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


class TrainUnion:
    """The training split of one or several datasets with their identities and cameras kept apart.

    ``train`` holds every dataset's training items in order, relabelled (identity ``pid_offset + pid``,
    camera ``camid_offset + camid``), each key still relative to its own dataset's folder;
    ``member_of[i]`` is the index of item ``i``'s dataset in ``members``."""

    def __init__(self, members: Sequence[UnionMember]) -> None:
        self.members = list(members)
        self.train: list[Item] = []
        self.member_of: list[int] = []
        for m, member in enumerate(self.members):
            self.train += [Item(it.key, it.pid + member.pid_offset, it.camid + member.camid_offset)
                           for it in member.dataset.train]
            self.member_of += [m] * len(member.dataset.train)
        self.num_train_pids = sum(m.dataset.num_train_pids for m in self.members)

    @property
    def name(self) -> str:
        return "+".join(m.spec for m in self.members)

    @property
    def is_union(self) -> bool:
        return len(self.members) > 1

    def provenance(self, stores: Sequence[Any]) -> list[dict[str, Any]]:
        """What each dataset and its store were when the run started (config.json's ``datasets``): spec,
        estimator and tag, offsets and counts, a fingerprint of its training items, and its store's folder,
        key-set fingerprint and content digest (``data.store.DSAPStore.digest``); None where no store is read."""
        out = []
        for m, store in zip(self.members, stores):
            out.append({
                "dataset": m.spec, "estimator": m.estimator, "tag": m.tag,
                "num_train_pids": m.dataset.num_train_pids, "num_train_images": len(m.dataset.train),
                "pid_offset": m.pid_offset, "camid_offset": m.camid_offset, "num_cameras": m.num_cameras,
                "train_fingerprint": m.train_fingerprint(),
                "store": str(store.folder) if store is not None else None,
                "store_fingerprint": store.manifest.get("fingerprint") if store is not None else None,
                "store_sha256": store.digest if store is not None else None,
                "store_settings": store.settings_record if store is not None else None,
            })
        return out


def build_union(data: Any, root: str | os.PathLike) -> TrainUnion:
    """The training union of ``data`` (a ``dsa.config.DataConfig``: its datasets, estimators and tags) on the
    data root ``root``; two datasets that share training images (the same image would be two people) are
    refused with a sentence."""
    from . import build_dataset

    data = union_config(data)
    members: list[UnionMember] = []
    pid_offset = camid_offset = 0
    for spec, estimator, tag in zip(data.datasets, data.estimators, data.tags):
        member = UnionMember(spec, build_dataset(spec, root), estimator, tag, pid_offset, camid_offset)
        members.append(member)
        pid_offset += member.dataset.num_train_pids
        camid_offset += member.num_cameras
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            if Path(a.dataset.root).resolve() != Path(b.dataset.root).resolve():
                continue
            shared = sorted({it.key for it in a.dataset.train} & {it.key for it in b.dataset.train})
            if shared:
                raise DatasetError(f"The datasets {a.spec} and {b.spec} of the union share {len(shared)} training "
                                   f"image(s) (e.g. {shared[0]}), which would make one person two identities; "
                                   f"train on one of them, or on disjoint parts (such as synthetic:ids=first and "
                                   f"synthetic:ids=second).")
    return TrainUnion(members)
