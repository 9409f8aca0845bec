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
    """sha256 of the features, pids, camids and keys of the (query, gallery) splits, as stored."""
    h = hashlib.sha256()
    for x, pids, cams, keys in splits:
        for a in (np.asarray(x, np.float32), np.asarray(pids, np.int64), np.asarray(cams, np.int64)):
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
