"""An optional FAISS index over a gallery's features, for searching large galleries.

FAISS (``pip install faiss-cpu``, or the ``index`` extra of this package) is imported only when an index
is built or read; without it :func:`require_faiss` raises one sentence naming the install command.

Kinds (:data:`INDEX_KINDS`):

* ``flat``: exact search (every gallery vector compared, float32 in memory: G x D x 4 bytes);
* ``ivf``: approximate: an inverted file of ``nlist`` k-means cells (default sqrt(G), trained on a
  sample of 64 points per cell) with 8-bit scalar-quantised vectors (G x D bytes, a quarter of
  the float32 features); a query scans the ``nprobe`` nearest cells (default a quarter of them:
  :func:`default_nprobe`).  Its recall against the exact
  answer is measured by ``bench/bench_scale.py`` (docs/evaluation-at-scale.md).

Cosine distance is 1 - inner product of L2-normalised vectors; euclidean is the square root of FAISS's
squared L2.  Vectors are added block by block from an array or a :class:`evaluate.features.GalleryFile`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.io import atomic_output
from evaluate.features import EvaluationError, GalleryFile, gallery_blocks
from evaluate.metrics import DISTANCES, prepare_features

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf")
INSTALL = "pip install faiss-cpu"
#: training points per IVF cell (FAISS's advice is 39 to 256)
TRAIN_PER_CELL = 64


def require_faiss() -> Any:
    """The ``faiss`` module, or an :class:`EvaluationError` saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise EvaluationError(f"A gallery index needs FAISS, which is not installed: install it with "
                              f"`{INSTALL}` (or `pip install -e '.[index]'`), or search without --index.") from None
    return faiss


def _prepared(x, metric: str) -> np.ndarray:
    return np.ascontiguousarray(prepare_features(x, metric).numpy())


def default_nlist(num_gallery: int) -> int:
    """IVF cells for a gallery: sqrt(G) (1000 for a million: k-means training stays around a minute on
    two cores), at least 1, at most G / 39 (FAISS's minimum training points per cell)."""
    return max(1, min(int(math.sqrt(num_gallery)), num_gallery // 39))


def default_nprobe(nlist: int) -> int:
    """IVF cells scanned per query when not given: a quarter of them (recall@10 0.92 on the synthetic
    million-vector gallery of docs/evaluation-at-scale.md, where 16 cells gave 0.45)."""
    return max(1, nlist // 4)


class GalleryIndex:
    """A FAISS index over gallery features; :meth:`search` returns (indices, distances) nearest first."""

    def __init__(self, index: Any, kind: str, metric: str, nprobe: int | None = None):
        self.index, self.kind, self.metric = index, kind, metric
        self.nprobe = nprobe

    @classmethod
    def build(cls, gallery, kind: str = "ivf", metric: str = "cosine", *, nlist: int | None = None,
              nprobe: int | None = None, rows: int = 65536, seed: int = 0, progress: bool = False) -> "GalleryIndex":
        """Index ``gallery`` (float array [G, D] or a GalleryFile), read ``rows`` at a time."""
        faiss = require_faiss()
        if kind not in INDEX_KINDS:
            raise EvaluationError(f"Unknown index {kind!r}; choose one of {', '.join(INDEX_KINDS)}.")
        if metric not in DISTANCES:
            raise EvaluationError(f"Unknown distance {metric!r}; choose one of {', '.join(DISTANCES)}.")
        n, dim = len(gallery), (gallery.dim if isinstance(gallery, GalleryFile) else np.shape(gallery)[1])
        fmetric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        if kind == "flat":
            index = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
        else:
            nlist = nlist or default_nlist(n)
            quantizer = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, fmetric)
            index.cp.seed = seed
            index.train(_prepared(cls._sample(gallery, n, min(n, nlist * TRAIN_PER_CELL), rows, seed), metric))
        for _, block in tqdm(gallery_blocks(gallery, rows), total=-(-n // rows), desc=f"index ({kind})",
                             disable=not progress, leave=False):
            index.add(_prepared(block, metric))
        log.info("%s index of %d gallery vectors (%d-d, %s)", kind, n, dim, metric)
        return cls(index, kind, metric, nprobe)

    @staticmethod
    def _sample(gallery, n: int, size: int, rows: int, seed: int) -> np.ndarray:
        """``size`` gallery rows drawn at random without replacement, read block by block."""
        chosen = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        parts = []
        for s, block in gallery_blocks(gallery, rows):
            inside = chosen[(chosen >= s) & (chosen < s + len(block))]
            parts.append(block[inside - s])
        return np.concatenate(parts)

    def search(self, query, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Indices int64 [Q, k] and distances float32 [Q, k] of each query's k nearest (-1 where fewer)."""
        if self.kind == "ivf":
            self.index.nprobe = self.nprobe or default_nprobe(self.index.nlist)
        score, idx = self.index.search(_prepared(query, self.metric), k)
        dist = 1.0 - score if self.metric == "cosine" else np.sqrt(np.maximum(score, 0.0))
        return idx.astype(np.int64), dist.astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index atomically (FAISS's own format)."""
        faiss = require_faiss()
        with atomic_output(path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str, metric: str, nprobe: int | None = None) -> "GalleryIndex":
        faiss = require_faiss()
        try:
            return cls(faiss.read_index(str(Path(path))), kind, metric, nprobe)
        except RuntimeError as e:
            raise EvaluationError(f"Cannot read the index {path}: {str(e).splitlines()[0]}; delete it.") from None
