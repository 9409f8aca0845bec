"""MSMT17 (Wei et al., CVPR 2018): 1041 train / 3060 test ids, 15 cameras, split by list files.

V1: ``MSMT17_V1/{train,test}/`` and V2: ``MSMT17_V2/{mask_train_v2,mask_test_v2}/``, each with
``list_train.txt``, ``list_val.txt``, ``list_query.txt``, ``list_gallery.txt`` (lines ``<rel path> <pid>``,
paths relative to the train or test folder). Train = train + val lists (the val ids are train ids), as
torchreid and fast-reid do. The camera is the third ``_`` field of the file name (1-based).
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import DatasetError, ReidDataset, Triple

__all__ = ["MSMT17"]

_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}


class MSMT17(ReidDataset):
    """MSMT17 V1 or V2 under ``ROOT/msmt17/``, ``ROOT/MSMT17/``, ``ROOT/`` or ROOT pointing at the version."""

    name = "msmt17"

    def __init__(self, root: str | os.PathLike) -> None:
        folder, train_dir, test_dir = self.locate(Path(root).expanduser())
        train = self._read_list(folder, train_dir, "list_train.txt") + self._read_list(folder, train_dir, "list_val.txt")
        query = self._read_list(folder, test_dir, "list_query.txt")
        gallery = self._read_list(folder, test_dir, "list_gallery.txt")
        super().__init__(folder, train, query, gallery)

    @staticmethod
    def locate(root: Path) -> tuple[Path, str, str]:
        parents = (root / "msmt17", root / "MSMT17", root)
        folders = list(dict.fromkeys([p / v for p in parents for v in _VERSIONS] + list(parents)))
        for folder in folders:
            if not all((folder / f).is_file() for f in _LISTS):
                continue
            for train_dir, test_dir in _VERSIONS.values():
                if (folder / train_dir).is_dir() and (folder / test_dir).is_dir():
                    return folder, train_dir, test_dir
        if not root.exists():
            raise DatasetError(f"The data root {root} does not exist (expected MSMT17_V1/ or MSMT17_V2/ under it).")
        raise DatasetError(
            "No MSMT17 layout found (MSMT17_V1 with train/, test/ or MSMT17_V2 with mask_train_v2/, mask_test_v2/, "
            f"plus {', '.join(_LISTS)}): looked in {', '.join(str(p) for p in folders)}."
        )

    @staticmethod
    def _read_list(folder: Path, image_dir: str, list_name: str) -> list[Triple]:
        path = folder / list_name
        triples: list[Triple] = []
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"The MSMT17 list {path} cannot be read as UTF-8 text ({e}).") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rel, pid_text = line.split()
                pid = int(pid_text)
                camid = int(Path(rel).name.split("_")[2]) - 1
            except (ValueError, IndexError):
                raise DatasetError(
                    f"{path} line {lineno} is not '<dir>/<pid>_<idx>_<cam>_....jpg <pid>': {line.strip()!r}."
                ) from None
            triples.append((f"{image_dir}/{rel}", pid, camid))
        return triples
