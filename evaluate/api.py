"""Python API: load a trained model, extract features, rank a gallery.

    from evaluate.api import ReidModel, rank
    model = ReidModel.from_run("runs/synthetic-synthetic-small")   # device="auto": CUDA when available
    q = model.extract(["query/0001_c1s1_000001_00.jpg"], root="datasets/synthetic")
    g = model.extract(gallery_arrays)            # HxWx3 uint8 RGB arrays work too
    idx, dist = rank(q, g, top_k=10)

    # a folder of unlabeled crops (features cached per gallery folder; ranking.csv/json + pictures in out)
    result = model.search("crops/query.jpg", "crops/gallery", top=10, out="search-out")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from data.runs import open_checkpoint
from data.runtime import apply_threads, resolve_device
from evaluate.features import ImageList, build_model, extract
from evaluate.search import search
from evaluate.search import top_k as _top_k


class ReidModel:
    """The MF-Stream of a trained run as a feature extractor (normalisation included)."""

    def __init__(self, model: torch.nn.Module, size: tuple[int, int], device: str = "auto",
                 feature_set: str = "mf", checkpoint: str | None = None, threads: int | None = None):
        apply_threads(threads)  # the thread policy (data.runtime): available cores unless ``threads``
        self.device = resolve_device(device)
        self.model, self.size = model.to(self.device).eval(), size
        self.feature_set, self.checkpoint = feature_set, checkpoint

    @classmethod
    def from_run(cls, run_or_checkpoint: str | os.PathLike, device: str = "auto", feature_set: str = "mf",
                 runs_dir: str | os.PathLike = "runs", threads: int | None = None) -> "ReidModel":
        """From a run folder, a run name under ``runs_dir`` or a checkpoint.pt path; ``device`` ``auto`` is
        CUDA when PyTorch sees one, else the CPU."""
        if feature_set in ("fused", "dsag"):
            raise ValueError(f"ReidModel extracts MF-Stream features; {feature_set!r} needs DSAP images (use `evaluate run`).")
        ckpt = open_checkpoint(run_or_checkpoint, runs_dir)
        model, size = build_model(ckpt, feature_set)
        return cls(model, size, device, feature_set, str(ckpt.path), threads)

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    def extract(self, images: Sequence[Any], *, root: str | os.PathLike | None = None, batch_size: int = 64,
                flip: bool = False, progress: bool = False) -> np.ndarray:
        """Features [N, D] float32 for image paths (relative to ``root`` if given) or RGB arrays."""
        data = ImageList(images, self.size, root=root)
        return extract(self.model, data, batch_size=batch_size, device=self.device, flip=flip, progress=progress)

    def search(self, query: str | os.PathLike, gallery: str | os.PathLike, *, top: int = 10,
               out: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
        """Rank the images of the folder ``gallery`` for each image of ``query`` (an image or a folder):
        ``evaluate.search.search`` with this model (options: distance, flip, batch_size, cache_dir, index,
        nprobe, max_memory, pictures)."""
        return search(self, query, gallery, top=top, out=out, **options)


def rank(query_feats, gallery_feats, top_k: int = 10, metric: str = "cosine", *,
         max_memory: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery indices [Q, k] and their distances [Q, k], nearest first (ties: lower index).

    ``gallery_feats``: an array, or an ``evaluate.features.GalleryFile`` streamed by blocks of at most
    ``max_memory`` bytes of distances (``evaluate.search.top_k``)."""
    return _top_k(query_feats, gallery_feats, top_k, metric, max_memory=max_memory)
