"""Feature extraction with the MF-Stream (the paper's inference) and the features file.

A features file (HDF5) holds everything the metrics need, so evaluation runs offline from it:

    /query/features    float32 [Q, D]      /gallery/features  float32 [G, D]
    /query/pids        int64   [Q]         /gallery/pids      int64   [G]
    /query/camids      int64   [Q]         /gallery/camids    int64   [G]
    /query/keys        UTF-8   [Q]         /gallery/keys      UTF-8   [G]
    attributes: checkpoint, checkpoint_sha256, step, epoch, complete, feature_set, flip, dataset, protocol,
                height, width, created (ISO 8601, UTC), format_version, content_sha256

``content_sha256`` is the sha256 of the arrays (:func:`content_digest`): reading a file checks it, so a
file whose bits flipped is refused instead of changing the metrics silently.

A *gallery* features file (``splits = "gallery"``: what search at scale writes) has the ``/gallery``
group only, its features stored as float32 or float16 (``storage``), and is written and read by blocks
of rows: :class:`GalleryWriter` fills it chunk by chunk under ``<name>.partial`` (resumable: a rerun with
the same ``resume_key`` continues after the last chunk written), then writes its checksum and renames it;
:class:`GalleryFile` reads it a block at a time (float32 blocks), never the whole array.  Its
``content_sha256`` is :func:`content_digest` of the gallery split alone (features as float32 blocks);
pids and camids are -1 for unlabelled crops.

Feature sets: ``mf`` (f_G ⊕ f_L, default), ``global`` (f_G), ``local`` (f_L), and two that need the
DSAG-Stream and the run's DSAP store: ``fused`` (z_G ⊕ z_L with z = f + d; the paper's ablation) and
``dsag`` (d_G ⊕ d_L, the guiding stream alone: a diagnostic of what the DSAP images carry).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.io import atomic_write_bytes, image_error_text, read_image
from data.runs import Checkpoint
from data.runtime import resolve_device, worker_threads
from data.transforms import build_test_transform
from dsa.dsap import normalise_dsap
from dsa.errors import UserError
from dsa.model import InferenceModel, build_dsanet
from dsa.transforms import normalise

log = logging.getLogger(__name__)

FEATURE_SETS = ("mf", "global", "local", "fused", "dsag")
#: the feature sets computed from images and DSAP images (training-time streams, for diagnostics)
DSAP_FEATURE_SETS = ("fused", "dsag")
FORMAT_VERSION = 1


class EvaluationError(UserError):
    """A problem the user can fix (missing checkpoint, bad features file...): one sentence."""


# --------------------------------------------------------------------------------------------
# models


class StreamFeatures(nn.Module):
    """From a full DSANet (images and DSAP images): z_G ⊕ flatten(z_L) (``fused``, the paper's ablation)
    or d_G ⊕ flatten(d_L) (``dsag``, the guiding stream alone)."""

    def __init__(self, net: nn.Module, feature_set: str = "fused"):
        super().__init__()
        if getattr(net, "dsag", None) is None:
            raise EvaluationError(f"The {feature_set!r} feature set needs a DSAG-Stream; this checkpoint's variant has none.")
        self.net, self.feature_set = net, feature_set
        self.keys = ("z_G", "z_L") if feature_set == "fused" else ("d_G", "d_L")

    def forward(self, images: torch.Tensor, dsap: torch.Tensor) -> torch.Tensor:
        out = self.net(images, dsap)
        parts = [out[k].flatten(1) for k in self.keys if k in out]
        return torch.cat(parts, 1)


def build_model(ckpt: Checkpoint, feature_set: str = "mf") -> tuple[nn.Module, tuple[int, int]]:
    """The evaluation network for ``feature_set`` (eval mode, CPU) and its input size (H, W)."""
    if feature_set not in FEATURE_SETS:
        raise EvaluationError(f"Unknown feature set {feature_set!r}; choose one of {', '.join(FEATURE_SETS)}.")
    info = ckpt.info
    net = build_dsanet(info.model, info.num_classes, info.variant, ckpt.model_state)
    model = StreamFeatures(net, feature_set) if feature_set in DSAP_FEATURE_SETS else InferenceModel(net, feature_set)
    return model.eval(), info.input_size


# --------------------------------------------------------------------------------------------
# extraction


class ImageList(Dataset):
    """Images (paths relative to ``root``, absolute paths or HxWx3 uint8 RGB arrays) -> uint8
    tensors resized to the model's input, plus their DSAP images when a store is given."""

    def __init__(self, images: Sequence[Any], size: tuple[int, int], root: str | os.PathLike | None = None,
                 store: Any = None, keys: Sequence[str] | None = None):
        self.images, self.root, self.store = list(images), Path(root) if root else None, store
        self.keys = list(keys) if keys is not None else None
        self.transform = build_test_transform(*size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        if not isinstance(x, np.ndarray):
            x = read_image(self.root / x if self.root else x)
        elif x.ndim != 3 or x.shape[2] != 3 or x.dtype != np.uint8:
            raise EvaluationError(f"Image {i} must be an HxWx3 uint8 RGB array, got {x.dtype} {x.shape}.")
        image = self.transform(x)
        if self.store is None:
            return image, torch.empty(0, dtype=torch.uint8)
        return image, torch.from_numpy(self.store.get(self.keys[i]))


@torch.no_grad()
def extract(
    model: nn.Module,
    dataset: ImageList,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    flip: bool = False,
    workers: int = 0,
    desc: str = "features",
    progress: bool = True,
) -> np.ndarray:
    """Features [N, D] float32 of every image, in order; ``flip`` averages with the mirrored image.

    Normalisation happens here (``dsa.transforms.normalise``), outside the model.  For the fused
    set the mirrored image keeps its DSAP images (the level-1 merge sums left/right partners).
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    fused = isinstance(model, StreamFeatures)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        worker_init_fn=worker_threads)
    out: list[np.ndarray] = []
    try:
        for images, dsap in tqdm(loader, desc=desc, disable=not progress, leave=False):
            x = normalise(images.to(device))
            args = (normalise_dsap(dsap.to(device)),) if fused else ()
            f = model(x, *args)
            if flip:
                f = (f + model(torch.flip(x, dims=[3]), *args)) / 2
            out.append(f.float().cpu().numpy())
    except Exception as e:  # an unreadable image, here or in a DataLoader worker: one sentence
        text = image_error_text(e)
        if text is None and isinstance(e, RuntimeError) and "DataLoader worker (pid" in str(e):
            text = (f"{str(e).strip().splitlines()[0].rstrip('. ')}: a data-loading process died (out of memory, or "
                    f"killed); rerun (with fewer --workers if memory is short)")
        if text is None:
            raise
        raise EvaluationError(text) from None
    dim = out[0].shape[1] if out else 0
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


# --------------------------------------------------------------------------------------------
# the features file


@dataclass
class Features:
    """Query and gallery features with their labels and the provenance attributes."""

    query: np.ndarray
    gallery: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    q_keys: list[str]
    g_keys: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return str(self.attrs.get("protocol", "market"))


def now_iso() -> str:
    """UTC timestamp, ISO 8601, second precision."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def content_digest(splits: Sequence[tuple[Any, Any, Any, Sequence[str]]]) -> str:
    """sha256 of the features, pids, camids and keys of the (query, gallery) splits, as stored.

    A split's features may also be given as ``(shape, blocks)``: an iterator of float32 row blocks in
    order (the digest is the same as for the whole array)."""
    h = hashlib.sha256()
    for x, pids, cams, keys in splits:
        shape, blocks = x if isinstance(x, tuple) else (np.shape(x), (x,))
        h.update(str(tuple(shape)).encode())
        for block in blocks:
            h.update(np.ascontiguousarray(block, np.float32).tobytes())
        for a in (np.asarray(pids, np.int64), np.asarray(cams, np.int64)):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\n".join(keys).encode("utf-8"))
    return h.hexdigest()


def save_features(path: str | os.PathLike, feats: Features) -> None:
    """Write a features file atomically (built in memory, so that an HDF5 error is an exception, then
    written to a temporary name and renamed), with the checksum of its content."""
    splits = ((feats.query, feats.q_pids, feats.q_camids, list(feats.q_keys)),
              (feats.gallery, feats.g_pids, feats.g_camids, list(feats.g_keys)))
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for split, (x, pids, cams, keys) in zip(("query", "gallery"), splits):
            g = f.create_group(split)
            g.create_dataset("features", data=np.asarray(x, np.float32))
            g.create_dataset("pids", data=np.asarray(pids, np.int64))
            g.create_dataset("camids", data=np.asarray(cams, np.int64))
            g.create_dataset("keys", data=list(keys), dtype=h5py.string_dtype("utf-8"))
        f.attrs["format_version"] = FORMAT_VERSION
        for k, v in feats.attrs.items():
            f.attrs[k] = "" if v is None else v
        f.attrs["content_sha256"] = content_digest(splits)
    atomic_write_bytes(path, buffer.getvalue())


def _labels(path: Path, split: str, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as int64, or an EvaluationError when they are not integers that fit."""
    if values.dtype.kind not in "iu" or (values.dtype.kind == "u" and values.size
                                          and values.max() > np.iinfo(np.int64).max):
        raise EvaluationError(f"The features file {path} has {split}/{name} of type {values.dtype} "
                              f"(integers of at most 64 bits expected); it was not written by this program.")
    return values.astype(np.int64)


def load_features(path: str | os.PathLike) -> Features:
    """Read a features file, checking it can be evaluated (sentences for what is wrong)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"No features file at {path}.")
    try:
        with h5py.File(path, "r") as f:
            for split in ("query", "gallery"):
                if split not in f or "features" not in f[split] or len(f[split]["features"]) == 0:
                    raise EvaluationError(f"The features file {path} has no {split} features.")
            parts = {}
            for split in ("query", "gallery"):
                g = f[split]
                n = len(g["features"])
                for name in ("pids", "camids", "keys"):
                    if name not in g or len(g[name]) != n:
                        raise EvaluationError(
                            f"The features file {path} has {n} {split} features but no matching {split}/{name}."
                        )
                parts[split] = (g["features"][()].astype(np.float32),
                                _labels(path, split, "pids", g["pids"][()]),
                                _labels(path, split, "camids", g["camids"][()]),
                                list(g["keys"].asstr()[()]))
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except (OSError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise EvaluationError(f"Cannot read the features file {path}: {e}") from None
    expected = attrs.pop("content_sha256", None)
    if expected is not None and expected != content_digest((parts["query"], parts["gallery"])):
        raise EvaluationError(f"The features file {path} is damaged (its content differs from its checksum); "
                              f"extract the features again (`make eval`).")
    (qf, qp, qc, qk), (gf, gp, gc, gk) = parts["query"], parts["gallery"]
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise EvaluationError(
            f"The features file {path} has query features of shape {qf.shape} and gallery features of "
            f"shape {gf.shape}: their sizes do not match."
        )
    return Features(qf, gf, qp, gp, qc, gc, qk, gk, attrs)


# --------------------------------------------------------------------------------------------
# gallery features files, by blocks

STORAGE = ("float32", "float16")
#: rows per block when a gallery features file is read whole (hashing, building an index)
READ_ROWS = 16384


class GalleryWriter:
    """Write a gallery features file chunk by chunk, resumably, then atomically with its checksum.

    The rows go to ``<path>.partial`` (features pre-sized [N, D], contiguous, so a block is one write);
    after each :meth:`write` the number of rows done is stored and flushed.  A later writer with the same
    ``resume_key``, keys and dimension continues at :attr:`done`; anything else starts afresh.
    :meth:`finish` reads the rows back for the checksum and renames the file to ``path``."""

    def __init__(self, path: str | os.PathLike, keys: Sequence[str], dim: int, *, resume_key: str = "",
                 storage: str = "float32", attrs: dict[str, Any] | None = None):
        if storage not in STORAGE:
            raise EvaluationError(f"Unknown feature storage {storage!r}; choose one of {', '.join(STORAGE)}.")
        self.path, self.keys = Path(path), list(keys)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.file = self._reopen(resume_key, dim, storage)
        if self.file is None:
            self.file = h5py.File(self.partial, "w")
            g = self.file.create_group("gallery")
            g.create_dataset("features", shape=(len(self.keys), dim), dtype=storage)
            g.create_dataset("keys", data=self.keys, dtype=h5py.string_dtype("utf-8"))
            g.create_dataset("pids", data=np.full(len(self.keys), -1, np.int64))
            g.create_dataset("camids", data=np.full(len(self.keys), -1, np.int64))
            for k, v in (attrs or {}).items():
                self.file.attrs[k] = "" if v is None else v
            self.file.attrs.update(format_version=FORMAT_VERSION, splits="gallery", storage=storage,
                                   resume_key=resume_key, rows_done=0)
            self.file.flush()
        self.done = int(self.file.attrs["rows_done"])

    def _reopen(self, resume_key: str, dim: int, storage: str):
        if not self.partial.is_file():
            return None
        try:
            f = h5py.File(self.partial, "r+")
        except OSError:  # torn by a crash: start again
            return None
        g = f.get("gallery")
        if (f.attrs.get("resume_key") == resume_key and f.attrs.get("storage") == storage and g is not None
                and g["features"].shape == (len(self.keys), dim) and list(g["keys"].asstr()[()]) == self.keys):
            log.info("resuming %s after %d of %d rows", self.partial, int(f.attrs["rows_done"]), len(self.keys))
            return f
        f.close()
        return None

    def write(self, start: int, block: np.ndarray) -> None:
        """Rows ``start .. start + len(block)`` (in order: ``start`` must be :attr:`done`)."""
        if start != self.done:
            raise ValueError(f"rows must be written in order: {start} given, {self.done} expected")
        self.file["gallery/features"][start : start + len(block)] = block
        self.done = start + len(block)
        self.file.attrs["rows_done"] = self.done
        self.file.flush()

    def finish(self) -> Path:
        """Checksum, fsync and rename to ``path``; returns it."""
        if self.done != len(self.keys):
            raise ValueError(f"{self.done} of {len(self.keys)} rows written")
        g = self.file["gallery"]
        ds = g["features"]
        blocks = (ds[s : s + READ_ROWS] for s in range(0, len(ds), READ_ROWS))
        self.file.attrs["content_sha256"] = content_digest(
            [((ds.shape, blocks), g["pids"][()], g["camids"][()], self.keys)])
        self.file.attrs["complete_rows"] = self.done
        self.file.close()
        with open(self.partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Leave the partial file as it is (for a later resume)."""
        if self.file:
            self.file.close()


class GalleryFile:
    """A gallery features file read by blocks of rows (float32), never the whole array at once.

    ``verify`` re-computes the checksum (one pass over the file) and refuses a damaged one."""

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise EvaluationError(f"No features file at {self.path}.")
        try:
            self.file = h5py.File(self.path, "r")
            g = self.file["gallery"]
            self.features = g["features"]
            self.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.file.attrs.items()}
        except (OSError, KeyError) as e:
            raise EvaluationError(f"Cannot read the gallery features file {self.path}: {e}") from None
        if self.features.ndim != 2 or "content_sha256" not in self.attrs:
            raise EvaluationError(f"The file {self.path} is not a complete gallery features file; extract again.")
        if verify and self.digest() != self.attrs["content_sha256"]:
            raise EvaluationError(f"The features file {self.path} is damaged (its content differs from its "
                                  f"checksum); delete it and extract the features again.")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def keys(self) -> list[str]:
        return list(self.file["gallery/keys"].asstr()[()])

    def blocks(self, rows: int = READ_ROWS):
        """(start, float32 array [b, D]) for consecutive blocks of ``rows`` rows."""
        for s in range(0, len(self), rows):
            yield s, self.features[s : s + rows].astype(np.float32, copy=False)

    def digest(self) -> str:
        g = self.file["gallery"]
        blocks = (b for _, b in self.blocks())
        return content_digest([((self.features.shape, blocks), g["pids"][()], g["camids"][()], self.keys)])

    def close(self) -> None:
        self.file.close()


def gallery_blocks(gallery, rows: int = READ_ROWS):
    """(start, block) over a gallery's features: an array [G, D] sliced, or a :class:`GalleryFile` read."""
    if isinstance(gallery, GalleryFile):
        yield from gallery.blocks(rows)
    else:
        for s in range(0, len(gallery), rows):
            yield s, gallery[s : s + rows]

