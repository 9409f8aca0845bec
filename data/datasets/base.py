"""The dataset base class and the helpers every adapter shares.

Adapters (torchreid style) only find their folder and list ``(relative path, pid, camid)`` triples for
train, query and gallery; :class:`ReidDataset` turns them into :class:`Item` lists, relabels the train
pids to 0..N−1, validates them and computes statistics.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from dsa.errors import UserError

from ..scan import is_utf8, list_files

__all__ = [
    "Item",
    "ReidDataset",
    "DatasetError",
    "Triple",
    "find_dataset_dir",
    "scan_images",
    "MARKET_PATTERN",
    "IMAGE_EXTS",
]

#: ``0002_c1s1_000451_03.jpg`` → pid 2, camera 1 (1-based in the name).
MARKET_PATTERN = r"(?P<pid>-?\d+)_c(?P<camid>\d+)"
#: Image extensions the folder-style adapters list (DensePose side files ``*_IUV.png`` are skipped).
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")

Triple = tuple[str, int, int]


class DatasetError(UserError):
    """A dataset problem a user can fix, phrased as one sentence (expected layout, path looked at)."""


@dataclass(frozen=True, order=True)
class Item:
    """One image: ``key``, its path relative to the dataset folder (POSIX; the same key names it in the
    DSAP store, the estimators and the features files), ``pid``, ``camid`` (0-based)."""

    key: str
    pid: int
    camid: int


def inside_folder(sub: str, what: str, folder: Path) -> str:
    """``sub`` when it names a folder inside ``folder`` (relative, and not climbing out with ``..``,
    judged on the name itself so that a symlinked sub-folder stays allowed); else a DatasetError."""
    norm = os.path.normpath(str(sub))
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise DatasetError(f"The {what} {sub!r} points outside the dataset folder {folder}; give a folder inside it "
                           f"(relative to it, without climbing out with '..').")
    return norm


def _split_stats(items: Sequence[Item]) -> dict[str, int]:
    return {
        "ids": len({it.pid for it in items}),
        "images": len(items),
        "cameras": len({it.camid for it in items}),
    }


class ReidDataset:
    """A re-ID dataset: train/query/gallery :class:`Item` lists relative to ``root``.

    Train pids are relabelled to 0..N−1 (sorted by original pid; ``train_pid_map`` keeps original → label);
    query and gallery keep the original pids. Adapters subclass this and call ``super().__init__`` with
    their raw triples; it can also be built directly from lists (tests, custom splits).
    """

    name: str = "dataset"
    protocol: str = "market"

    def __init__(
        self,
        root: str | os.PathLike,
        train: Iterable[Triple | Item],
        query: Iterable[Triple | Item],
        gallery: Iterable[Triple | Item],
        *,
        name: str | None = None,
        protocol: str | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        if protocol is not None:
            self.protocol = protocol
        self.root = Path(root)
        raw_train = [self._as_item(t) for t in train]
        self.query = [self._as_item(t) for t in query]
        self.gallery = [self._as_item(t) for t in gallery]
        self.train_pid_map = {pid: label for label, pid in enumerate(sorted({it.pid for it in raw_train}))}
        self.train = [Item(it.key, self.train_pid_map[it.pid], it.camid) for it in raw_train]
        self._validate()

    @staticmethod
    def _as_item(t: Triple | Item) -> Item:
        if isinstance(t, Item):
            return t
        path, pid, camid = t
        return Item(str(path), int(pid), int(camid))

    def _validate(self) -> None:
        for split in ("train", "query", "gallery"):
            items: list[Item] = getattr(self, split)
            if not items:
                raise DatasetError(f"The {self.name} dataset at {self.root} has no {split} images.")
            not_utf8 = [it.key for it in items if not is_utf8(it.key)]
            if not_utf8:
                raise DatasetError(
                    f"{len(not_utf8)} {split} file name(s) of the {self.name} dataset at {self.root} are not valid "
                    f"UTF-8 (e.g. {not_utf8[0].encode('utf-8', 'surrogateescape')!r}); rename them (stores and "
                    f"features files name images in UTF-8).")
            for it in items:
                if (it.key.startswith("/") or "\\" in it.key or ".." in it.key.split("/")
                        or it.key in ("", ".")):
                    raise DatasetError(f"{self.name}: item key {it.key!r} must be a POSIX path inside {self.root} "
                                       f"(relative, without '..').")
                if it.camid < 0:
                    raise DatasetError(f"{self.name}: {it.key} has a negative camera id {it.camid}.")

    @property
    def num_train_pids(self) -> int:
        return len(self.train_pid_map)

    def all_items(self) -> list[Item]:
        """Train + query + gallery, de-duplicated by path (first occurrence wins), sorted by path."""
        seen: dict[str, Item] = {}
        for it in (*self.train, *self.query, *self.gallery):
            seen.setdefault(it.key, it)
        return [seen[p] for p in sorted(seen)]

    def stats(self) -> dict:
        """Ids, images and cameras per split, plus the dataset name, protocol and folder."""
        return {
            "dataset": self.name,
            "protocol": self.protocol,
            "root": str(self.root),
            "splits": {
                "train": _split_stats(self.train),
                "query": _split_stats(self.query),
                "gallery": _split_stats(self.gallery),
            },
            "num_train_pids": self.num_train_pids,
            "num_images": len(self.all_items()),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, protocol={self.protocol!r}, "
            f"train={len(self.train)}, query={len(self.query)}, gallery={len(self.gallery)})"
        )


def find_dataset_dir(root: Path, candidates: Sequence[str], required: Sequence[str], layout: str) -> Path:
    """The first of ``root/<candidate>`` (``""`` = ``root`` itself) holding every ``required`` entry.

    Raises :class:`DatasetError` naming the layout expected and the folders looked at.
    """
    root = Path(root).expanduser()
    looked: list[Path] = []
    for cand in candidates:
        folder = root / cand if cand else root
        if folder in looked:
            continue
        looked.append(folder)
        if all((folder / r).exists() for r in required):
            return folder
    if not root.exists():
        raise DatasetError(f"The data root {root} does not exist (expected {layout} under it).")
    where = ", ".join(str(p) for p in looked)
    raise DatasetError(f"No {layout} found: looked in {where}.")


def scan_images(
    root: Path,
    folder: str,
    pattern: str | re.Pattern[str],
    *,
    exts: Sequence[str] = IMAGE_EXTS,
    recursive: bool = False,
    camid_base: int = 1,
) -> list[Triple]:
    """List ``root/folder``'s images as (path relative to ``root``, pid, 0-based camid) triples, sorted.

    ``pattern`` is searched in each file name and must have named groups ``pid`` and ``camid``; ``camid``
    in the name counts from ``camid_base``. A name that does not match is a :class:`DatasetError` naming
    the pattern and a few offending files (DensePose side files ``*_IUV.png`` / ``*_INDS.png`` are skipped).
    The folder is listed by :func:`data.scan.list_files` (loops and unreadable folders are sentences; a link
    that cannot be followed is listed, to be named as an unreadable image).
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    missing = {"pid", "camid"} - set(regex.groupindex)
    if missing:
        raise DatasetError(f"The file-name pattern '{regex.pattern}' lacks the named group(s) {', '.join(sorted(missing))}.")
    base = Path(root) / folder
    if not base.is_dir():
        raise DatasetError(f"Expected an image folder at {base}, but it is missing.")
    triples: list[Triple] = []
    bad: list[str] = []
    not_numbers: list[str] = []
    for f in list_files(base, exts, recursive=recursive):
        m = regex.search(f.name)
        if m is None:
            bad.append(f.name)
            continue
        try:
            pid, camid = int(m.group("pid")), int(m.group("camid"))
        except (TypeError, ValueError):  # a group matched text that is not a number, or did not take part
            not_numbers.append(f"{f.name} (pid {m.group('pid')!r}, camid {m.group('camid')!r})")
            continue
        rel = f.relative_to(root).as_posix()
        triples.append((rel, pid, camid - camid_base))
    if bad:
        examples = ", ".join(bad[:3])
        raise DatasetError(
            f"{len(bad)} file name(s) in {base} do not match the pattern '{regex.pattern}' (e.g. {examples})."
        )
    if not_numbers:
        raise DatasetError(
            f"The pattern '{regex.pattern}' gives pid or camid that are not integers for {len(not_numbers)} file(s) "
            f"in {base} (e.g. {', '.join(not_numbers[:3])})."
        )
    return triples
