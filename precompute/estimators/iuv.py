"""``iuv``: precomputed DensePose output read from files.

Two sources:

- the original (Caffe2) DensePose release's ``<stem>_IUV.png`` (OpenCV channel order: B = I,
  G = U·255, R = V·255), beside each image or under ``iuv_dir`` mirroring the dataset tree, with an
  optional ``<stem>_INDS.png`` (per-pixel person index, 0 = background) when several people were
  found: the person that best covers the crop is kept (:func:`pick_person`), the others' pixels
  become background;
- detectron2's ``apply_net.py dump`` output (``dump=PATH``): a *pickle* holding a list of dicts
  ``{file_name, scores, pred_boxes_XYXY, pred_densepose: [DensePoseChartResult(labels [h, w],
  uv [2, h, w]) per box]}``.  Pickles can run code when loaded, so a dump is read only when the user
  names it explicitly, and the log says it is trusted.  Unpickling needs detectron2's DensePose
  package installed (the results are its classes).

:func:`persons_from_inds` cuts every person out of a whole-scene DensePose output (e.g. the DensePose
demo image) as re-ID-style crops with their own IUV maps.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from data.io import ImageReadError, read_iuv_png
from dsa.iuv import IUV

from .base import DETECTRON2_INSTALL, Estimator, EstimatorError, sibling_path

__all__ = ["IUVFileEstimator", "pick_person", "select_person", "persons_from_inds", "paste_box_results",
           "read_inds_png", "load_apply_net_dump"]

log = logging.getLogger(__name__)

#: the central region used to pick the person a crop was cut around: fractions of (height, width)
CENTRE_Y = (0.1, 0.9)
CENTRE_X = (0.25, 0.75)


# ------------------------------------------------------------------------------- several persons
def pick_person(inds: np.ndarray) -> int | None:
    """The person index (> 0) that best covers the crop: most pixels inside the central region
    (rows 10–90 %, columns 25–75 %: a detector centres its crop on the person), ties broken by the
    total pixel count, then the lower index.  ``None`` when ``inds`` has no person."""
    h, w = inds.shape
    ids, total = np.unique(inds[inds > 0], return_counts=True)
    if ids.size == 0:
        return None
    y0, y1 = int(h * CENTRE_Y[0]), max(int(np.ceil(h * CENTRE_Y[1])), int(h * CENTRE_Y[0]) + 1)
    x0, x1 = int(w * CENTRE_X[0]), max(int(np.ceil(w * CENTRE_X[1])), int(w * CENTRE_X[0]) + 1)
    centre = inds[y0:y1, x0:x1]
    central = np.array([(centre == i).sum() for i in ids])
    order = np.lexsort((ids, -total, -central))  # last key is primary
    return int(ids[order[0]])


def select_person(iuv: IUV, inds: np.ndarray, person: int | None = None) -> IUV | None:
    """Keep one person's pixels (``person`` or :func:`pick_person`); others become background."""
    if inds.shape != iuv.shape:
        raise ValueError(f"INDS map {inds.shape} does not match the IUV map {iuv.shape}")
    person = pick_person(inds) if person is None else person
    if person is None:
        return None
    keep = (inds == person) & (iuv.I > 0)
    if not keep.any():
        return None
    return IUV(I=np.where(keep, iuv.I, 0).astype(np.uint8),
               U=np.where(keep, iuv.U, 0).astype(np.float32),
               V=np.where(keep, iuv.V, 0).astype(np.float32))


def read_inds_png(path: str | Path) -> np.ndarray:
    """A DensePose ``*_INDS.png`` (single channel person index) as a uint8 H×W array."""
    data = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else np.empty(0, np.uint8)
    inds = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if inds is None:
        raise ImageReadError(path, "missing, empty or not a PNG")
    if inds.ndim == 3:  # written as colour by some tools: all channels hold the index
        inds = inds[..., 0]
    return inds.astype(np.uint8)


def persons_from_inds(image: np.ndarray, iuv: IUV, inds: np.ndarray, margin: float = 0.1,
                      min_pixels: int = 200) -> list[tuple[np.ndarray, IUV, tuple[int, int, int, int]]]:
    """Every person of a whole-scene DensePose output as ``(crop_rgb, crop_iuv, box)``.

    ``box`` is ``(x0, y0, x1, y1)`` (exclusive end) of the person's INDS pixels enlarged by ``margin``
    of its size on each side and clipped to the image; in ``crop_iuv`` the other persons' pixels are
    background.  Persons with fewer than ``min_pixels`` body pixels are skipped; the list is sorted
    by body pixel count, largest first."""
    if image.shape[:2] != iuv.shape or inds.shape != iuv.shape:
        raise ValueError(f"image {image.shape[:2]}, IUV {iuv.shape} and INDS {inds.shape} must have one size")
    h, w = iuv.shape
    people = []
    for person in np.unique(inds[inds > 0]):
        mask = (inds == person) & (iuv.I > 0)
        count = int(mask.sum())
        if count < min_pixels:
            continue
        ys, xs = np.nonzero(mask)
        bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        my, mx = int(round(margin * bh)), int(round(margin * bw))
        box = (max(int(xs.min()) - mx, 0), max(int(ys.min()) - my, 0),
               min(int(xs.max()) + 1 + mx, w), min(int(ys.max()) + 1 + my, h))
        x0, y0, x1, y1 = box
        keep = mask[y0:y1, x0:x1]
        crop_iuv = IUV(I=np.where(keep, iuv.I[y0:y1, x0:x1], 0).astype(np.uint8),
                       U=np.where(keep, iuv.U[y0:y1, x0:x1], 0).astype(np.float32),
                       V=np.where(keep, iuv.V[y0:y1, x0:x1], 0).astype(np.float32))
        people.append((count, int(person), (image[y0:y1, x0:x1].copy(), crop_iuv, box)))
    people.sort(key=lambda p: (-p[0], p[1]))
    return [p[2] for p in people]


# --------------------------------------------------------------------------- box-local results
def paste_box_results(image_hw: tuple[int, int], boxes_xyxy: np.ndarray | Sequence[Sequence[float]],
                      labels: Iterable[np.ndarray], uvs: Iterable[np.ndarray]) -> tuple[IUV, np.ndarray]:
    """Box-local DensePose chart results → full-image I/U/V maps and a person-index map.

    ``labels[k]`` is [h, w] (0..24) and ``uvs[k]`` [2, h, w] for box ``k`` (x0, y0, x1, y1) in image
    pixels; as in detectron2, the result's top-left corner is the box corner truncated to integers.
    Later boxes overwrite earlier ones where both have body pixels.  The person map holds ``k + 1``."""
    h, w = image_hw
    I = np.zeros((h, w), dtype=np.uint8)
    U = np.zeros((h, w), dtype=np.float32)
    V = np.zeros((h, w), dtype=np.float32)
    inds = np.zeros((h, w), dtype=np.uint8)
    for k, (box, lab, uv) in enumerate(zip(np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4), labels, uvs)):
        lab = np.asarray(lab)
        uv = np.asarray(uv, dtype=np.float32)
        if uv.shape != (2,) + lab.shape:
            raise ValueError(f"box {k}: uv {uv.shape} must be [2, {lab.shape[0]}, {lab.shape[1]}]")
        x, y = int(np.floor(box[0])), int(np.floor(box[1]))
        # the part of the box inside the image
        sy0, sx0 = max(0, -y), max(0, -x)
        sy1, sx1 = min(lab.shape[0], h - y), min(lab.shape[1], w - x)
        if sy1 <= sy0 or sx1 <= sx0:
            continue
        local = lab[sy0:sy1, sx0:sx1]
        body = local > 0
        region = (slice(y + sy0, y + sy1), slice(x + sx0, x + sx1))
        I[region][body] = local[body]
        U[region][body] = np.clip(uv[0, sy0:sy1, sx0:sx1][body], 0, 1)
        V[region][body] = np.clip(uv[1, sy0:sy1, sx0:sx1][body], 0, 1)
        inds[region][body] = min(k + 1, 255)
    return IUV(I=I, U=U, V=V), inds


def load_apply_net_dump(path: str | Path) -> list[dict[str, Any]]:
    """Load a detectron2 ``apply_net.py dump`` file.  It is a pickle: only for files the user trusts."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EstimatorError(f"the apply_net dump {path} does not exist")
    log.warning("loading %s with pickle (torch.load weights_only=False): trusted because you passed it as dump=", path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise EstimatorError(
            f"the apply_net dump {path} holds DensePose objects and needs the module {e.name!r} to load: install "
            f"detectron2 and its DensePose project with {DETECTRON2_INSTALL}"
        ) from None
    except Exception as e:  # noqa: BLE001 - not a pickle / torch file at all (truncated, text, an image...)
        raise EstimatorError(f"{path} is not a readable apply_net dump ({type(e).__name__}: {e})") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) and "file_name" in d for d in data):
        raise EstimatorError(f"{path} is not an apply_net dump (a list of dicts with file_name)")
    for entry in data:  # every result must be a chart (IUV) result: checked here, before any image
        for result in entry.get("pred_densepose") or []:
            if not (hasattr(result, "labels") and hasattr(result, "uv")):
                kind = "CSE (continuous surface embedding) results" if hasattr(result, "embedding") else \
                    f"{type(result).__name__} results"
                raise EstimatorError(
                    f"the apply_net dump {path} holds {kind}, not chart-based I/U/V ones: dump with a "
                    "densepose_rcnn_* config from projects/DensePose/configs/ (not configs/cse/)")
    return data


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def dump_entry_to_maps(entry: dict[str, Any], image_hw: tuple[int, int]) -> tuple[IUV, np.ndarray]:
    """One apply_net dump entry → full-image (IUV, person-index map); boxes in score order, best last."""
    boxes = _to_numpy(entry.get("pred_boxes_XYXY", np.zeros((0, 4)))).reshape(-1, 4)
    results = list(entry.get("pred_densepose") or [])
    if len(results) != len(boxes):
        raise EstimatorError(f"dump entry {entry.get('file_name')}: {len(boxes)} boxes but {len(results)} DensePose results")
    scores = entry.get("scores")
    order = np.argsort(_to_numpy(scores), kind="stable") if scores is not None else np.arange(len(boxes))
    return paste_box_results(image_hw, boxes[order], [_to_numpy(results[i].labels) for i in order],
                             [_to_numpy(results[i].uv) for i in order])


# ------------------------------------------------------------------------------------ estimator
class IUVFileEstimator(Estimator):
    """Reads precomputed DensePose output (``<stem>_IUV.png`` [+ ``_INDS.png``], or an apply_net dump)."""

    name = "iuv"
    batch_size = 64

    def __init__(self, dataset_root: str | Path, iuv_dir: str = "", dump: str = "", missing: str = "error",
                 min_pixels: int = 1) -> None:
        super().__init__(dataset_root)
        if missing not in ("error", "not-found"):
            raise EstimatorError(f"estimator 'iuv': missing must be 'error' or 'not-found', not {missing!r}")
        if iuv_dir and dump:
            raise EstimatorError("estimator 'iuv': give either iuv_dir= (PNG files) or dump= (apply_net dump), not both")
        self.iuv_dir = Path(iuv_dir).expanduser() if iuv_dir else None
        if self.iuv_dir is not None and not self.iuv_dir.is_dir():
            raise EstimatorError(f"estimator 'iuv': iuv_dir {self.iuv_dir} is not a folder")
        self.dump_path = Path(dump).expanduser() if dump else None
        self.missing = missing
        self.min_pixels = int(min_pixels)
        self._dump: dict[str, dict[str, Any]] | None = None
        if self.dump_path is not None:
            self._index_dump(load_apply_net_dump(self.dump_path))

    def _index_dump(self, entries: list[dict[str, Any]]) -> None:
        index: dict[str, dict[str, Any]] = {}
        for entry in entries:
            name = Path(str(entry["file_name"]))
            index[name.as_posix()] = entry
            if name.is_absolute():
                index[name.resolve().as_posix()] = entry
        self._dump = index
        self._dump_names = sorted(index)

    def settings(self) -> dict[str, Any]:
        source = f"apply_net dump {self.dump_path}" if self.dump_path else (
            f"<stem>_IUV.png under {self.iuv_dir}" if self.iuv_dir else "<stem>_IUV.png beside each image")
        return {"source": source, "missing": self.missing, "min_pixels": self.min_pixels,
                "person_pick": "most pixels in the central region (rows 10-90%, cols 25-75%)"}

    def _dump_entry(self, path: Path, key: str) -> dict[str, Any] | None:
        assert self._dump is not None
        for candidate in (path.resolve().as_posix(), path.as_posix()):
            if candidate in self._dump:
                return self._dump[candidate]
        matches = [n for n in self._dump_names if n == key or n.endswith("/" + key)]
        if len(matches) == 1:
            return self._dump[matches[0]]
        return None

    def _read(self, image: np.ndarray, path: Path, key: str) -> tuple[IUV, np.ndarray | None] | None:
        hw = image.shape[:2]
        if self._dump is not None:
            entry = self._dump_entry(path, key)
            return None if entry is None else dump_entry_to_maps(entry, hw)
        iuv_path = sibling_path(path, "_IUV.png", key, self.iuv_dir)
        if not iuv_path.is_file():
            return None
        iuv = read_iuv_png(iuv_path)
        inds_path = sibling_path(path, "_INDS.png", key, self.iuv_dir)
        inds = read_inds_png(inds_path) if inds_path.is_file() else None
        if iuv.shape != hw:  # e.g. DensePose run on a rescaled copy: nearest keeps labels intact
            log.debug("resizing %s from %s to %s", iuv_path, iuv.shape, hw)
            size = (hw[1], hw[0])
            iuv = IUV(I=cv2.resize(iuv.I, size, interpolation=cv2.INTER_NEAREST),
                      U=cv2.resize(iuv.U, size, interpolation=cv2.INTER_NEAREST),
                      V=cv2.resize(iuv.V, size, interpolation=cv2.INTER_NEAREST))
            if inds is not None:
                inds = cv2.resize(inds, size, interpolation=cv2.INTER_NEAREST)
        return iuv, inds

    def estimate(self, images: Sequence[np.ndarray], paths: Sequence[str | Path],
                 keys: Sequence[str]) -> list[IUV | None]:
        out: list[IUV | None] = []
        for image, path, key in zip(images, paths, keys):
            found = self._read(image, Path(path), key)
            if found is None:
                if self.missing == "error":
                    where = f"in the dump {self.dump_path}" if self.dump_path else \
                        f"at {sibling_path(path, '_IUV.png', key, self.iuv_dir)}"
                    raise EstimatorError(f"no DensePose output for {key} {where} (pass missing=not-found to "
                                         "count such images as not found)")
                out.append(None)
                continue
            iuv, inds = found
            if inds is not None and inds.any():
                iuv = select_person(iuv, inds)
            out.append(iuv if iuv is not None and int((iuv.I > 0).sum()) >= max(self.min_pixels, 1) else None)
        return out
