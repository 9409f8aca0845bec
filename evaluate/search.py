"""Search a folder of unlabeled crops: rank every gallery image for each query image, no pids, no cameras.

    python -m evaluate search --run R --query IMG_OR_DIR --gallery DIR [--top 10] [--out DIR]
                              [--index flat|ivf] [--nprobe N] [--max-memory 512M]

The gallery's features are extracted in chunks into a gallery features file per gallery folder
(``<run>/search-cache/``, :class:`evaluate.features.GalleryWriter`: resumable, with its checksum): the file
is keyed on the checkpoint's sha256, the feature set, the flip setting and the gallery's file list with each
file's size and modification time, so a changed model or a changed folder recomputes it, an unchanged one
is reused and an interrupted extraction continues where it stopped.  Ranking streams the file by blocks
(:func:`top_k`: exact, ties broken by gallery index, memory bounded by ``max_memory``), or asks a FAISS
index built over it (``index``: ``flat`` exact, ``ivf`` approximate; :mod:`evaluate.index`), so a gallery of
millions of crops is never held in memory at once.  Outputs (``--out``): ``ranking.csv`` (query, rank,
gallery file, distance), ``ranking.json`` (the same with the settings) and ``pictures/<NNN>-<query>.png``
(the query, then its top-k with distances).  A query that is itself in the gallery folder is left out of its
own ranking.

The model is any object with ``extract(images, root=, batch_size=, flip=, progress=)``, ``feature_set`` and
``checkpoint`` (:class:`Extractor`; ``evaluate.api.ReidModel`` is one).
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from data.datasets.base import IMAGE_EXTS
from data.io import atomic_write_json, atomic_write_text, file_sha256
from evaluate.features import EvaluationError, GalleryFile, GalleryWriter, gallery_blocks, now_iso
from evaluate.metrics import (
    _check_dims,
    _gallery_sq,
    distance_block,
    key_distances,
    memory_budget,
    prepare_features,
    sort_keys,
)
from evaluate.plots import ranked_list

log = logging.getLogger(__name__)

CACHE_DIR = "search-cache"
CACHE_VERSION = 2
#: images whose features are extracted and written at a time
EXTRACT_CHUNK = 4096
#: queries compared with a gallery block at once (the gallery is read once per such block of queries)
QUERY_BLOCK = 4096


class Extractor(Protocol):
    """What search needs of a model: features of images, and what names them (the cache's key)."""

    feature_set: str
    checkpoint: str | None

    def extract(self, images: Sequence[Any], *, root: str | os.PathLike | None = None, batch_size: int = 64,
                flip: bool = False, progress: bool = False) -> np.ndarray: ...

_SIDE_FILES = ("_iuv.png", "_inds.png")


def list_images(path: str | os.PathLike, what: str = "gallery") -> tuple[Path, list[str]]:
    """(folder, sorted image paths relative to it) for a folder (searched recursively) or one image file."""
    p = Path(path).expanduser()
    if p.is_file():
        if not p.name.lower().endswith(IMAGE_EXTS):
            raise EvaluationError(f"The {what} {p} is not an image ({', '.join(IMAGE_EXTS)}).")
        return p.parent, [p.name]
    if not p.is_dir():
        raise EvaluationError(f"There is no {what} image or folder at {p}.")
    names = sorted(Path(dp, f).relative_to(p).as_posix() for dp, _, fs in os.walk(p, followlinks=True) for f in fs
                   if f.lower().endswith(IMAGE_EXTS) and not f.lower().endswith(_SIDE_FILES))
    if not names:
        raise EvaluationError(f"The {what} folder {p} holds no images ({', '.join(IMAGE_EXTS)}).")
    return p, names


def gallery_key(checkpoint_sha256: str, feature_set: str, flip: bool, folder: Path, names: list[str]) -> str:
    """What the cached features depend on, as one sha256: the model, the settings, every file's name,
    size and modification time."""
    h = hashlib.sha256(f"v{CACHE_VERSION}\n{checkpoint_sha256}\n{feature_set}\n{int(flip)}\n".encode())
    for n in names:
        st = (folder / n).stat()
        h.update(f"{n}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_path(cache_dir: Path, folder: Path) -> Path:
    """One cache file per gallery folder (named from its absolute path)."""
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return cache_dir / f"{folder.resolve().name or 'root'}-{tag}.h5"


def _open_cache(path: Path, key: str, count: int) -> GalleryFile | None:
    if not path.is_file():
        return None
    try:
        cached = GalleryFile(path)
    except EvaluationError as e:  # a damaged cache is recomputed
        log.warning("%s; extracting again", e)
        return None
    if cached.attrs.get("resume_key") == key and len(cached) == count:
        return cached
    cached.close()
    return None


def gallery_features(model: Extractor, folder: Path, names: list[str], *, checkpoint_sha256: str,
                     cache_dir: Path | None, flip: bool = False, batch_size: int = 64, chunk: int = EXTRACT_CHUNK,
                     progress: bool = True) -> tuple[GalleryFile | np.ndarray, bool]:
    """(features, whether they came from the cache).  With a ``cache_dir`` the features are extracted
    ``chunk`` images at a time into the folder's gallery features file (resumed where an earlier run
    stopped) and returned as a :class:`GalleryFile` read by blocks; without one, as an array."""
    key = gallery_key(checkpoint_sha256, model.feature_set, flip, folder, names)
    if cache_dir is None:
        return model.extract(names, root=folder, batch_size=batch_size, flip=flip, progress=progress), False
    path = cache_path(cache_dir, folder)
    cached = _open_cache(path, key, len(names))
    if cached is not None:
        log.info("gallery features of %s from the cache %s", folder, path)
        return cached, True
    first = model.extract(names[:1], root=folder, batch_size=1, flip=flip, progress=False)
    writer = GalleryWriter(path, names, first.shape[1], resume_key=key,
                           attrs={"folder": str(folder.resolve()), "checkpoint_sha256": checkpoint_sha256,
                                  "feature_set": model.feature_set, "flip": int(flip), "created": now_iso()})
    try:
        bar = tqdm(total=len(names), initial=writer.done, desc="gallery features", unit="img",
                   disable=not progress, leave=False)
        for s in range(writer.done, len(names), chunk):
            block = model.extract(names[s : s + chunk], root=folder, batch_size=batch_size, flip=flip)
            writer.write(s, block)
            bar.update(len(block))
        bar.close()
        writer.finish()
    finally:
        writer.close()
    return GalleryFile(path, verify=False), False


def top_k(query, gallery, k: int = 10, metric: str = "cosine", *, exclude=None, max_memory: int | None = None,
          progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by streaming the gallery in blocks: indices int64 [Q, k] and distances float32 [Q, k],
    nearest first, ties broken by the lower gallery index (a stable sort of each row).

    ``gallery``: an array [G, D] or a :class:`GalleryFile` (read a block at a time).  ``exclude``: per query,
    a gallery index to leave out (-1: none); a row short of ``k`` answers is padded with index -1 and an
    infinite distance.  A block of distances takes at most ``max_memory`` bytes (:func:`memory_budget`)."""
    n = len(gallery)
    dim = gallery.dim if isinstance(gallery, GalleryFile) else np.shape(gallery)[1]
    q = prepare_features(query, metric)
    _check_dims(q, torch.empty(0, dim))
    k = max(0, min(k, n))
    nq = q.shape[0]
    exclude = torch.full((nq,), -1, dtype=torch.int64) if exclude is None else torch.as_tensor(
        np.asarray(exclude), dtype=torch.int64)
    qb = max(1, min(nq, QUERY_BLOCK))
    # per entry: the distance, its int64 key and the top-k temporaries; per row: the block's float32 copies
    rows = max(256, memory_budget(max_memory) // (qb * 24 + dim * 4 * 3))
    big = torch.iinfo(torch.int64).max
    best = torch.full((nq, k), big, dtype=torch.int64)
    bar = tqdm(total=nq * n, desc="search", unit="pair", unit_scale=True, disable=not progress, leave=False)
    for a in range(0, nq, qb):
        qa, ex = q[a : a + qb], exclude[a : a + qb]
        for s, block in gallery_blocks(gallery, rows):
            g = prepare_features(block, metric)
            keys = sort_keys(distance_block(qa, g, metric, _gallery_sq(g, metric)), s, n)
            inside = (ex >= s) & (ex < s + g.shape[0])
            keys[inside.nonzero().squeeze(1), (ex[inside] - s)] = big
            cand = torch.topk(keys, min(k, keys.shape[1]), dim=1, largest=False, sorted=False).values
            best[a : a + qb] = torch.topk(torch.cat([best[a : a + qb], cand], 1), k, dim=1, largest=False,
                                          sorted=True).values
            bar.update(qa.shape[0] * g.shape[0])
    bar.close()
    idx, dist = key_distances(best, n)
    missing = best == big
    return idx.masked_fill(missing, -1).numpy(), dist.masked_fill(missing, float("inf")).numpy()


def search(
    model: Extractor,
    query: str | os.PathLike,
    gallery: str | os.PathLike,
    *,
    top: int = 10,
    out: str | os.PathLike | None = None,
    distance: str = "cosine",
    flip: bool = False,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = "auto",
    index: str | None = None,
    nprobe: int | None = None,
    max_memory: int | None = None,
    pictures: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Rank ``gallery`` (a folder) for every image of ``query`` (an image or a folder) with ``model`` (an
    :class:`Extractor`, e.g. ``evaluate.api.ReidModel.from_run(run)``).  Returns the ranking record (also
    written as ranking.json / ranking.csv / pictures under ``out`` when given).  ``cache_dir``: ``"auto"`` =
    the run folder's ``search-cache/``, None = no cache (the gallery's features then stay in memory).
    ``index``: None = exact streamed ranking (:func:`top_k`), ``flat`` / ``ivf`` = a FAISS index
    (:mod:`evaluate.index`, saved beside the cached features), ``nprobe`` its cells scanned per query
    (default: a quarter of them)."""
    if top < 1:
        raise EvaluationError(f"--top must be at least 1, not {top}.")
    if not hasattr(model, "extract") or getattr(model, "checkpoint", None) is None:
        raise EvaluationError("search needs a model loaded from a run (evaluate.api.ReidModel.from_run): its "
                              "checkpoint keys the cache.")
    if index is not None:  # before any extraction: a missing FAISS is said at once
        from evaluate.index import INDEX_KINDS, require_faiss

        require_faiss()
        if index not in INDEX_KINDS:
            raise EvaluationError(f"Unknown index {index!r}; choose one of {', '.join(INDEX_KINDS)}.")
    ckpt = Path(model.checkpoint)
    sha = file_sha256(ckpt)
    if cache_dir == "auto":
        cache_dir = ckpt.parent / CACHE_DIR
    g_dir, g_names = list_images(gallery, "gallery")
    if not g_dir.is_dir() or Path(gallery).is_file():
        raise EvaluationError(f"The gallery must be a folder of images, not the file {gallery}.")
    q_dir, q_names = list_images(query, "query")
    g_feats, cached = gallery_features(model, g_dir, g_names, checkpoint_sha256=sha,
                                       cache_dir=Path(cache_dir) if cache_dir is not None else None,
                                       flip=flip, batch_size=batch_size, progress=progress)
    q_feats = model.extract(q_names, root=q_dir, batch_size=batch_size, flip=flip, progress=progress)
    g_index = {str((g_dir / n).resolve()): j for j, n in enumerate(g_names)}
    own = np.array([g_index.get(str((q_dir / qn).resolve()), -1) for qn in q_names], np.int64)
    if index is None:
        order, dist = top_k(q_feats, g_feats, top, distance, exclude=own, max_memory=max_memory, progress=progress)
    else:
        order, dist = _index_search(g_feats, q_feats, top, distance, index, nprobe, own, progress)
    queries = []
    for i, qn in enumerate(q_names):
        hits = [(j, d) for j, d in zip(order[i].tolist(), dist[i].tolist()) if j >= 0]
        queries.append({"query": str(q_dir / qn),
                        "results": [{"rank": r + 1, "file": g_names[j], "distance": float(d)}
                                    for r, (j, d) in enumerate(hits)]})
    record = {"checkpoint": str(ckpt), "checkpoint_sha256": sha, "feature_set": model.feature_set,
              "flip": bool(flip), "distance": distance, "gallery": str(g_dir), "num_gallery": len(g_names),
              "gallery_cached": cached, "index": index or "exact", "top": top, "created": now_iso(),
              "queries": queries}
    if index == "ivf":
        record["nprobe"] = nprobe or "a quarter of the cells"
    if out is not None:
        write_outputs(record, Path(out), g_dir, pictures=pictures)
    return record


def _index_search(g_feats, q_feats, top: int, distance: str, kind: str, nprobe: int | None, own: np.ndarray,
                  progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top`` from a FAISS index over the gallery (read from beside the cached features file when built
    before, else built and saved there), the query's own image left out."""
    from evaluate.index import GalleryIndex

    path = None
    if isinstance(g_feats, GalleryFile):
        path = g_feats.path.with_name(f"{g_feats.path.stem}-{kind}-{distance}-"
                                      f"{g_feats.attrs['content_sha256'][:16]}.faiss")
    if path is not None and path.is_file():
        idx = GalleryIndex.load(path, kind, distance, nprobe)
    else:
        idx = GalleryIndex.build(g_feats, kind, distance, nprobe=nprobe, progress=progress)
        if path is not None:
            idx.save(path)
    k = min(top + 1, len(g_feats))
    order, dist = idx.search(q_feats, k)
    keep = (order != own[:, None]) & (order >= 0)
    out_o = np.full((len(order), min(top, k)), -1, np.int64)
    out_d = np.full(out_o.shape, np.inf, np.float32)
    for i in range(len(order)):
        o, d = order[i][keep[i]][:top], dist[i][keep[i]][:top]
        out_o[i, : len(o)], out_d[i, : len(d)] = o, d
    return out_o, out_d


def write_outputs(record: dict[str, Any], out: Path, g_dir: Path, pictures: bool = True) -> None:
    """ranking.json, ranking.csv and (``pictures``) one ranked-list picture per query under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["query", "rank", "gallery", "distance"])
    for q in record["queries"]:
        for r in q["results"]:
            w.writerow([q["query"], r["rank"], r["file"], f"{r['distance']:.6f}"])
    atomic_write_text(out / "ranking.csv", buf.getvalue())
    if pictures:
        written = []
        for i, q in enumerate(record["queries"]):
            path = out / "pictures" / f"{i:03d}-{Path(q['query']).stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            ranked_list(q["query"], [g_dir / r["file"] for r in q["results"]], ["unlabelled"] * len(q["results"]),
                        [f"{r['rank']}: {r['distance']:.4g}" for r in q["results"]], path)
            written.append(str(path))
        record["pictures"] = written
    atomic_write_json(out / "ranking.json", record)
    log.info("search: %d queries ranked against %d gallery images -> %s", len(record["queries"]),
             record["num_gallery"], out)
