"""CUHK01 (Li et al., ACCV 2012): 971 ids × 4 images, two camera views, ``campus/NNNNKKK.png``.

Images ``KKK`` 001/002 are camera 0 and 003/004 camera 1. Protocol ``cuhk01-single-shot`` (485/486): the
identities are split at random (seeded) into 485 train and 486 test ids; train has all their images;
query = the camera-0 images of the test ids; gallery = one camera-1 image per test id, chosen with the
same seed. ``split`` picks one of several independent random splits (``seed`` and ``split`` together
seed the generator), so "10 splits" is ``split=0..9``.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..scan import list_files
from .base import DatasetError, ReidDataset, Triple, find_dataset_dir

__all__ = ["CUHK01"]

_NAME = re.compile(r"^(\d{4})(\d{3})\.png$", re.IGNORECASE)


class CUHK01(ReidDataset):
    """CUHK01 under ``ROOT/cuhk01/campus/`` (or ROOT pointing at ``cuhk01/``)."""

    name = "cuhk01"
    protocol = "cuhk01-single-shot"

    def __init__(self, root: str | os.PathLike, split: int | str = 0, seed: int | str = 0, num_train_ids: int | str = 485) -> None:
        folder = find_dataset_dir(Path(root), ("cuhk01", "CUHK01", ""), ("campus",), "CUHK01 layout (campus/NNNNKKK.png)")
        self.split, self.seed = int(split), int(seed)
        by_pid: dict[int, list[Triple]] = defaultdict(list)
        bad: list[str] = []
        for entry in list_files(folder / "campus", (".png",), recursive=False):
            m = _NAME.match(entry.name)
            if m is None:
                bad.append(entry.name)
                continue
            pid, k = int(m.group(1)), int(m.group(2))
            by_pid[pid].append((f"campus/{entry.name}", pid, 0 if k <= 2 else 1))
        if bad:
            raise DatasetError(f"{len(bad)} file name(s) in {folder / 'campus'} are not NNNNKKK.png (e.g. {', '.join(bad[:3])}).")
        pids = sorted(by_pid)
        n_train = int(num_train_ids)
        if len(pids) <= n_train:
            raise DatasetError(f"CUHK01 at {folder / 'campus'} has {len(pids)} ids; the protocol needs more than {n_train}.")
        rng = np.random.default_rng([self.seed, self.split])
        order = rng.permutation(len(pids))
        train_pids = sorted(pids[i] for i in order[:n_train])
        test_pids = sorted(pids[i] for i in order[n_train:])
        train = [t for p in train_pids for t in by_pid[p]]
        query: list[Triple] = []
        gallery: list[Triple] = []
        for p in test_pids:
            cam0 = [t for t in by_pid[p] if t[2] == 0]
            cam1 = [t for t in by_pid[p] if t[2] == 1]
            if not cam0 or not cam1:
                raise DatasetError(f"CUHK01 id {p:04d} in {folder / 'campus'} lacks images of both cameras.")
            query += cam0
            gallery.append(cam1[int(rng.integers(len(cam1)))])
        super().__init__(folder, train, query, gallery)
