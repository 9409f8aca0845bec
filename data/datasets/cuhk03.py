"""CUHK03 (Li et al., CVPR 2014), new protocol (Zhong et al., CVPR 2017): 767 train / 700 test ids.

Layout (as torchreid expects it)::

    ROOT/cuhk03/cuhk03_release/cuhk-03.mat                  MATLAB v7.3 (HDF5) with the images
    ROOT/cuhk03/cuhk03_new_protocol_config_labeled.mat      split files (old MATLAB format)
    ROOT/cuhk03/cuhk03_new_protocol_config_detected.mat

``cuhk-03.mat`` holds cells ``labeled`` / ``detected``: one cell per camera pair (5), each an
ids × 10 cell of H×W×3 images (views: images 1–5 camera 1, 6–10 camera 2; empty cells for missing
images). HDF5 stores MATLAB arrays transposed, so every array is read back with ``.T``. The images are
extracted once to ``images_<kind>/`` as PNGs named like the split files' ``filelist``
(``<pair>_<id:03d>_<view>_<index:02d>.png``), each written atomically; a ``.complete`` marker makes
later runs skip extraction. The split files give 1-based ``train_idx``/``query_idx``/``gallery_idx`` into
``filelist``/``labels``/``camId``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from tqdm import tqdm

from ..io import atomic_write_bytes, atomic_write_text, encode_image
from .base import DatasetError, ReidDataset, Triple, find_dataset_dir

__all__ = ["CUHK03", "CUHK03Labeled", "CUHK03Detected", "extract_cuhk03_images"]

log = logging.getLogger(__name__)

_MAT = "cuhk03_release/cuhk-03.mat"
_MARKER = ".complete"


def cuhk03_image_name(pair: int, pid: int, index: int) -> str:
    """The torchreid/new-protocol file name of image ``index`` (0..9) of id ``pid`` in camera pair ``pair`` (0-based)."""
    view = 1 if index < 5 else 2
    return f"{pair + 1}_{pid + 1:03d}_{view}_{index + 1:02d}.png"


def extract_cuhk03_images(mat_path: Path, kind: str, out_dir: Path) -> int:
    """Extract the ``kind`` (``labeled``/``detected``) images of ``cuhk-03.mat`` to ``out_dir`` as PNGs.

    Existing files are kept (an interrupted run resumes); a ``.complete`` marker is written last.
    Returns the number of images in the file.
    """
    try:
        mat = h5py.File(mat_path, "r")
    except OSError as e:
        raise DatasetError(f"{mat_path} is not a readable MATLAB v7.3 (HDF5) file ({e}).") from None
    with mat:
        if kind not in mat:
            raise DatasetError(f"{mat_path} has no '{kind}' cell (found: {', '.join(sorted(mat.keys()))}).")
        pairs = [mat[ref][()].T for ref in np.asarray(mat[kind][()]).ravel()]
        jobs = [(p, i, j, ref) for p, cell in enumerate(pairs) for i in range(cell.shape[0]) for j, ref in enumerate(cell[i])]
        out_dir.mkdir(parents=True, exist_ok=True)
        count = 0
        for p, i, j, ref in tqdm(jobs, desc=f"extract cuhk03 {kind}", unit="img", leave=False):
            img = mat[ref][()]
            if img.ndim != 3:  # MATLAB writes an empty cell as a 2-element placeholder
                continue
            count += 1
            target = out_dir / cuhk03_image_name(p, i, j)
            if not target.exists():
                atomic_write_bytes(target, encode_image(np.ascontiguousarray(img.T.astype(np.uint8))))
    atomic_write_text(out_dir / _MARKER, f"{count}\n")
    log.info("extracted %d cuhk03 %s images to %s", count, kind, out_dir)
    return count


def _cell_str(x: object) -> str:
    """A MATLAB cell entry read by ``scipy.io.loadmat`` (nested 1-element arrays) → str."""
    while isinstance(x, np.ndarray):
        x = x.ravel()[0]
    return str(x)


class CUHK03(ReidDataset):
    """CUHK03 new protocol (767/700); ``kind`` is ``labeled`` (hand-drawn boxes) or ``detected`` (DPM)."""

    protocol = "cuhk03-new"
    kind = "labeled"

    def __init__(self, root: str | os.PathLike) -> None:
        split_name = f"cuhk03_new_protocol_config_{self.kind}.mat"
        folder = find_dataset_dir(
            Path(root), ("cuhk03", "CUHK03", ""), (_MAT, split_name), f"CUHK03 layout ({_MAT} and {split_name})"
        )
        try:
            cfg = scipy.io.loadmat(folder / split_name)
        except Exception as e:  # scipy raises several types for a broken file
            raise DatasetError(f"{folder / split_name} is not a readable MATLAB split file ({e}).") from None
        missing = [k for k in ("train_idx", "query_idx", "gallery_idx", "filelist", "labels") if k not in cfg]
        if missing:
            raise DatasetError(f"{folder / split_name} lacks the field(s) {', '.join(missing)}.")
        image_dir = f"images_{self.kind}"
        if not (folder / image_dir / _MARKER).is_file():
            try:
                extract_cuhk03_images(folder / _MAT, self.kind, folder / image_dir)
            except OSError as e:  # a read-only dataset folder, a full disk: say where the images should go
                raise DatasetError(
                    f"Cannot extract the CUHK03 {self.kind} images to {folder / image_dir} "
                    f"({e.strerror or e}); make that folder writable or extract them on a writable copy."
                ) from None
        filelist = [_cell_str(x) for x in np.asarray(cfg["filelist"], dtype=object).ravel()]
        labels = np.asarray(cfg["labels"]).ravel().astype(int)
        cams = np.asarray(cfg["camId"]).ravel().astype(int) - 1 if "camId" in cfg else None

        def subset(key: str) -> list[Triple]:
            idx = np.asarray(cfg[key]).ravel().astype(int) - 1
            if idx.size and (idx.min() < 0 or idx.max() >= len(filelist)):
                raise DatasetError(f"{folder / split_name}: {key} indexes outside the filelist of {len(filelist)}.")
            return [
                (f"{image_dir}/{filelist[i]}", labels[i], cams[i] if cams is not None else int(filelist[i].split("_")[2]) - 1)
                for i in idx
            ]

        train, query, gallery = subset("train_idx"), subset("query_idx"), subset("gallery_idx")
        absent = [p for p, _, _ in (*train, *query, *gallery) if not (folder / p).is_file()]
        if absent:
            raise DatasetError(
                f"{len(absent)} image(s) of {split_name} are missing from {folder / image_dir} (e.g. {', '.join(absent[:3])}); "
                f"delete {folder / image_dir / _MARKER} to extract them again."
            )
        super().__init__(folder, train, query, gallery)


class CUHK03Labeled(CUHK03):
    name = "cuhk03-labeled"
    kind = "labeled"


class CUHK03Detected(CUHK03):
    name = "cuhk03-detected"
    kind = "detected"
