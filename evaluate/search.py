"""Search a folder of unlabeled crops: rank every gallery image for each query image, no pids, no cameras.

    python -m evaluate search --run R --query IMG_OR_DIR --gallery DIR [--top 10] [--out DIR]

The gallery's features are cached per gallery folder (``<run>/search-cache/``): the cache is keyed on the
checkpoint's sha256, the feature set, the flip setting and the gallery's file list with each file's size
and modification time, so a changed model or a changed folder recomputes it and an unchanged one is
reused.  Outputs (``--out``): ``ranking.csv`` (query, rank, gallery file, distance), ``ranking.json`` (the
same with the settings) and ``pictures/<NNN>-<query>.png`` (the query, then its top-k with distances).
A query that is itself in the gallery folder is left out of its own ranking.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from data.datasets.base import IMAGE_EXTS
from data.io import atomic_output, atomic_write_json, atomic_write_text, file_sha256
from evaluate.api import ReidModel
from evaluate.features import EvaluationError, now_iso
from evaluate.metrics import pairwise_distance
from evaluate.plots import ranked_list

log = logging.getLogger(__name__)

CACHE_DIR = "search-cache"
CACHE_VERSION = 1
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


def _read_cache(path: Path, key: str) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("key") != key:
                return None
            return f["features"][()].astype(np.float32)
    except (OSError, KeyError):
        return None  # a damaged cache is recomputed


def gallery_features(model: ReidModel, folder: Path, names: list[str], *, checkpoint_sha256: str,
                     cache_dir: Path | None, flip: bool = False, batch_size: int = 64,
                     progress: bool = True) -> tuple[np.ndarray, bool]:
    """(features [G, D], whether they came from the cache)."""
    key = gallery_key(checkpoint_sha256, model.feature_set, flip, folder, names)
    path = cache_path(cache_dir, folder) if cache_dir is not None else None
    if path is not None:
        cached = _read_cache(path, key)
        if cached is not None and len(cached) == len(names):
            log.info("gallery features of %s from the cache %s", folder, path)
            return cached, True
    feats = model.extract(names, root=folder, batch_size=batch_size, flip=flip, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=feats)
            f.create_dataset("names", data=names, dtype=h5py.string_dtype("utf-8"))
            f.attrs.update(key=key, folder=str(folder.resolve()), checkpoint_sha256=checkpoint_sha256,
                           feature_set=model.feature_set, flip=int(flip), created=now_iso())
    return feats, False


def search(
    model: ReidModel | str | os.PathLike,
    query: str | os.PathLike,
    gallery: str | os.PathLike,
    *,
    top: int = 10,
    out: str | os.PathLike | None = None,
    distance: str = "cosine",
    flip: bool = False,
    runs_dir: str | os.PathLike = "runs",
    device: str = "auto",
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = "auto",
    pictures: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Rank ``gallery`` (a folder) for every image of ``query`` (an image or a folder) with ``model`` (a
    :class:`ReidModel`, or a run name / folder / checkpoint to load one from).  Returns the ranking record
    (also written as ranking.json / ranking.csv / pictures under ``out`` when given).  ``cache_dir``:
    ``"auto"`` = the run folder's ``search-cache/``, None = no cache."""
    if top < 1:
        raise EvaluationError(f"--top must be at least 1, not {top}.")
    if not isinstance(model, ReidModel):
        model = ReidModel.from_run(model, device=device, runs_dir=runs_dir)
    if model.checkpoint is None:
        raise EvaluationError("search needs a ReidModel loaded with ReidModel.from_run (its checkpoint keys the cache).")
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
    dist = pairwise_distance(q_feats, g_feats, distance).numpy().astype(np.float64)
    g_index = {str((g_dir / n).resolve()): j for j, n in enumerate(g_names)}
    queries = []
    for i, qn in enumerate(q_names):
        row = dist[i].copy()
        own = g_index.get(str((q_dir / qn).resolve()))
        if own is not None:  # the query itself is no answer
            row[own] = np.inf
        order = np.argsort(row, kind="stable")[: min(top, len(g_names) - (own is not None))]
        queries.append({"query": str(q_dir / qn),
                        "results": [{"rank": r + 1, "file": g_names[j], "distance": float(row[j])}
                                    for r, j in enumerate(order)]})
    record = {"checkpoint": str(ckpt), "checkpoint_sha256": sha, "feature_set": model.feature_set,
              "flip": bool(flip), "distance": distance, "gallery": str(g_dir), "num_gallery": len(g_names),
              "gallery_cached": cached, "top": top, "created": now_iso(), "queries": queries}
    if out is not None:
        write_outputs(record, Path(out), g_dir, pictures=pictures)
    return record


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
