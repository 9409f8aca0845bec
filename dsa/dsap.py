"""DSAP images: warp a person crop into 24 densely semantically aligned part images (paper §3.1).

Rule (DESIGN.md §4, docs/INTERFACES.md): for part ``i`` an S×S RGB image is initialised to the
per-channel mean of the source image (rounded half up); every body pixel with label ``I = i`` and
chart coordinates (u, v) writes its colour to row ``min(⌊u·S⌋, S−1)``, column ``min(⌊v·S⌋, S−1)``
after clamping u and v to [0, 1] (rows are U, columns are V).  Background (``I = 0``), labels above
24 and non-finite coordinates write nothing.  Several pixels landing in one cell are averaged with
exact integer arithmetic, ``(sum + count // 2) // count``, so that the NumPy path, the batched torch
path (CPU or CUDA) and the per-pixel reference agree bit for bit.  The cell index is computed in
float32 (``float32(u) * float32(S)``, then floor) on every path, for the same reason.

Besides the DSAP images every function returns ``written`` (bool [24, S, S]): which cells received
at least one pixel.  ``coverage`` turns it into per-part fractions.

The CSA ablation (paper Table 4) is :func:`crop_csa`: each part's bounding-box crop resized to S×S.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .parts import NUM_GROUPS, NUM_PARTS, PART_TO_GROUP

if TYPE_CHECKING:  # torch is imported lazily so that NumPy-only users do not pay for it
    import torch

DEFAULT_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "DEFAULT_SIZE", "IMAGENET_MEAN", "IMAGENET_STD",
    "warp_dsap", "warp_dsap_torch", "warp_dsap_reference", "crop_csa", "dsap_not_found",
    "image_mean", "normalise_dsap", "coverage", "merge_groups",
]


# ----------------------------------------------------------------------------------------- helpers
def _check_inputs(image: np.ndarray, I: np.ndarray, U: np.ndarray | None = None,
                  V: np.ndarray | None = None, size: int = DEFAULT_SIZE) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 H×W×3 RGB, got {image.dtype} {image.shape}")
    maps = [m for m in (I, U, V) if m is not None]
    if any(m.shape != image.shape[:2] for m in maps):
        raise ValueError(f"I/U/V maps {[m.shape for m in maps]} must match the image size {image.shape[:2]}")
    if size < 1:
        raise ValueError(f"DSAP size must be positive, got {size}")


def _planes(image: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 → contiguous [3, H·W] (one row per channel: fast reductions and gathers)."""
    return np.ascontiguousarray(image.reshape(-1, 3).T)


def _mean_of_planes(planes: np.ndarray) -> np.ndarray:
    n = planes.shape[1]
    if n == 0:
        return np.zeros(3, dtype=np.uint8)
    return ((2 * planes.sum(axis=1, dtype=np.int64) + n) // (2 * n)).astype(np.uint8)


def image_mean(image: np.ndarray) -> np.ndarray:
    """Per-channel mean of a uint8 H×W×3 image, rounded half up with integer arithmetic (uint8 [3])."""
    return _mean_of_planes(_planes(image))


def dsap_not_found(image: np.ndarray, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Mean-filled DSAP ([24, 3, S, S] uint8) and an all-False mask, for a crop with no person."""
    dsap = np.empty((NUM_PARTS, 3, size, size), dtype=np.uint8)
    dsap[...] = image_mean(image)[None, :, None, None]
    return dsap, np.zeros((NUM_PARTS, size, size), dtype=bool)


# -------------------------------------------------------------------------------------- NumPy warp
def warp_dsap(image: np.ndarray, I: np.ndarray, U: np.ndarray, V: np.ndarray,
              size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Warp one RGB crop to its 24 DSAP images (vectorised with ``np.bincount``).

    Returns ``dsap`` uint8 [24, 3, S, S] (RGB, channel-first) and ``written`` bool [24, S, S].
    """
    _check_inputs(image, I, U, V, size)
    ss = size * size
    n_cells = NUM_PARTS * ss
    planes = _planes(image)
    mean = _mean_of_planes(planes)
    labels = I.reshape(-1)
    body = (labels > 0) & (labels <= NUM_PARTS)
    s = np.float32(size)
    u = U.reshape(-1)[body].astype(np.float32, copy=False)
    v = V.reshape(-1)[body].astype(np.float32, copy=False)
    with np.errstate(invalid="ignore"):  # NaN coordinates are dropped below
        row = np.minimum(np.floor(np.clip(u, 0, 1) * s), size - 1)
        col = np.minimum(np.floor(np.clip(v, 0, 1) * s), size - 1)
        pos = row * s + col  # exact: integers below 2**24
    finite = np.isfinite(pos)
    all_finite = bool(finite.all())
    cell = pos.astype(np.int64) if all_finite else pos[finite].astype(np.int64)
    cell += ((labels[body] if all_finite else labels[body][finite]).astype(np.int64) - 1) * ss

    count = np.bincount(cell, minlength=n_cells)
    written = (count > 0).reshape(NUM_PARTS, ss)
    half = count // 2
    divisor = np.maximum(count, 1).astype(np.float64)
    dsap = np.empty((NUM_PARTS, 3, ss), dtype=np.uint8)
    for ch in range(3):
        values = planes[ch][body] if all_finite else planes[ch][body][finite]
        total = np.bincount(cell, weights=values, minlength=n_cells)  # exact integer sums in float64
        # floor((sum + count//2) / count) in float64 equals the integer division: a non-integer
        # quotient is at least 1/count away from the next integer, far above the rounding error
        avg = np.floor((total + half) / divisor).reshape(NUM_PARTS, ss)
        dsap[:, ch] = np.where(written, avg, mean[ch])
    return dsap.reshape(NUM_PARTS, 3, size, size), written.reshape(NUM_PARTS, size, size)


def warp_dsap_reference(image: np.ndarray, I: np.ndarray, U: np.ndarray, V: np.ndarray,
                        size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The same warp as a plain per-pixel Python loop: slow, obviously correct, for tests and benchmarks."""
    _check_inputs(image, I, U, V, size)
    h, w = I.shape
    n = h * w
    mean = [0, 0, 0]
    for y in range(h):
        for x in range(w):
            for ch in range(3):
                mean[ch] += int(image[y, x, ch])
    mean = [(2 * m + n) // (2 * n) if n else 0 for m in mean]
    sums: dict[tuple[int, int, int], list[int]] = {}
    s32 = np.float32(size)
    for y in range(h):
        for x in range(w):
            part = int(I[y, x])
            if part == 0 or part > NUM_PARTS:
                continue
            u, v = np.float32(U[y, x]), np.float32(V[y, x])
            if not (math.isfinite(u) and math.isfinite(v)):
                continue
            u = min(max(u, np.float32(0)), np.float32(1))
            v = min(max(v, np.float32(0)), np.float32(1))
            row = min(math.floor(np.float32(u * s32)), size - 1)
            col = min(math.floor(np.float32(v * s32)), size - 1)
            acc = sums.setdefault((part - 1, row, col), [0, 0, 0, 0])
            for ch in range(3):
                acc[ch] += int(image[y, x, ch])
            acc[3] += 1
    dsap = np.empty((NUM_PARTS, 3, size, size), dtype=np.uint8)
    for ch in range(3):
        dsap[:, ch] = mean[ch]
    written = np.zeros((NUM_PARTS, size, size), dtype=bool)
    for (p, row, col), (r, g, b, c) in sums.items():
        for ch, total in enumerate((r, g, b)):
            dsap[p, ch, row, col] = (total + c // 2) // c
        written[p, row, col] = True
    return dsap, written


# -------------------------------------------------------------------------------------- torch warp
def warp_dsap_torch(images: "torch.Tensor", I: "torch.Tensor", U: "torch.Tensor", V: "torch.Tensor",
                    size: int = DEFAULT_SIZE) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Batched warp on the inputs' device: ``images`` uint8 [B, 3, H, W] RGB, ``I`` [B, H, W] (0..24),
    ``U``, ``V`` [B, H, W] float.  Returns uint8 [B, 24, 3, S, S] and bool [B, 24, S, S], equal to
    :func:`warp_dsap` per image (integer sums with ``index_add_``, so CUDA agrees bit for bit)."""
    import torch

    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    b, _, h, w = images.shape
    for name, m in (("I", I), ("U", U), ("V", V)):
        if tuple(m.shape) != (b, h, w):
            raise ValueError(f"{name} must be [B, H, W] = {(b, h, w)}, got {tuple(m.shape)}")
    device = images.device
    n = h * w
    cells = NUM_PARTS * size * size

    rgb = images.reshape(b, 3, n).to(torch.int64)
    if n:
        mean = (2 * rgb.sum(dim=2) + n) // (2 * n)  # [B, 3], rounded half up
    else:
        mean = torch.zeros(b, 3, dtype=torch.int64, device=device)

    labels = I.reshape(b * n).to(torch.int64)
    u = U.reshape(b * n).to(torch.float32)
    v = V.reshape(b * n).to(torch.float32)
    keep = (labels > 0) & (labels <= NUM_PARTS) & torch.isfinite(u) & torch.isfinite(v)
    pix = keep.nonzero().squeeze(1)
    s = torch.tensor(size, dtype=torch.float32, device=device)
    row = torch.floor(u[pix].clamp(0, 1) * s).to(torch.int64).clamp_(max=size - 1)
    col = torch.floor(v[pix].clamp(0, 1) * s).to(torch.int64).clamp_(max=size - 1)
    batch = torch.div(pix, n, rounding_mode="floor")
    cell = batch * cells + (labels[pix] - 1) * (size * size) + row * size + col

    count = torch.zeros(b * cells, dtype=torch.int64, device=device)
    count.index_add_(0, cell, torch.ones_like(cell))
    # pixel colours in (batch, pixel) order: [B·N, 3]
    colours = rgb.permute(0, 2, 1).reshape(b * n, 3)[pix]
    total = torch.zeros(b * cells, 3, dtype=torch.int64, device=device)
    total.index_add_(0, cell, colours)

    written = count > 0
    safe = count.clamp(min=1).unsqueeze(1)
    avg = (total + count.unsqueeze(1) // 2) // safe  # [B·cells, 3]
    filled = mean.repeat_interleave(cells, dim=0)  # [B·cells, 3]
    out = torch.where(written.unsqueeze(1), avg, filled)
    dsap = out.reshape(b, NUM_PARTS, size, size, 3).permute(0, 1, 4, 2, 3).to(torch.uint8).contiguous()
    return dsap, written.reshape(b, NUM_PARTS, size, size)


# ------------------------------------------------------------------------------------ CSA ablation
def crop_csa(image: np.ndarray, I: np.ndarray, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Coarsely aligned parts (paper Table 4): each part's bounding-box crop of the image resized to
    S×S (cv2 INTER_LINEAR).  Absent parts stay mean-filled with an all-False mask; present parts are
    all True.  Same shapes as :func:`warp_dsap`."""
    _check_inputs(image, I, size=size)
    dsap, written = dsap_not_found(image, size)
    labels = I.astype(np.int64, copy=False)
    present = np.unique(labels)
    for part in present[(present > 0) & (present <= NUM_PARTS)]:
        ys, xs = np.nonzero(labels == part)
        crop = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        resized = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_LINEAR)
        dsap[part - 1] = resized.transpose(2, 0, 1)
        written[part - 1] = True
    return dsap, written


# ------------------------------------------------------------------------------- after the warp
def normalise_dsap(dsap: "torch.Tensor") -> "torch.Tensor":
    """uint8 DSAP [..., 3, S, S] → float32 scaled to [0, 1] then ImageNet mean/std per channel.

    Returns a new tensor; the input is never modified."""
    import torch

    if dsap.ndim < 3 or dsap.shape[-3] != 3:
        raise ValueError(f"DSAP must be [..., 3, S, S], got {tuple(dsap.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=dsap.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=dsap.device).view(3, 1, 1)
    return (dsap.to(torch.float32) / 255.0 - mean) / std


def coverage(written: np.ndarray) -> np.ndarray:
    """Fraction of cells written per part: bool [..., 24, S, S] → float32 [..., 24]."""
    written = np.asarray(written)
    return written.reshape(written.shape[:-2] + (-1,)).mean(axis=-1, dtype=np.float64).astype(np.float32)


def merge_groups(dsap: np.ndarray, written: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge the 24 DSAP images into the 8 groups of ``dsa.parts`` for display (montages).

    Each group cell is the rounded average of its member parts' *written* cells (front/back and
    left/right faces overlaid, as the DSAG-Stream's element-wise merge does with features); cells no
    member wrote keep the mean fill.  Returns uint8 [8, 3, S, S] and bool [8, S, S] (union)."""
    dsap = np.asarray(dsap)
    written = np.asarray(written, dtype=bool)
    size = dsap.shape[-1]
    out = np.empty((NUM_GROUPS, 3, size, size), dtype=np.uint8)
    union = np.zeros((NUM_GROUPS, size, size), dtype=bool)
    for g in range(NUM_GROUPS):
        members = np.flatnonzero(PART_TO_GROUP == g)
        w = written[members]  # [m, S, S]
        c = w.sum(axis=0).astype(np.int64)
        total = (dsap[members].astype(np.int64) * w[:, None]).sum(axis=0)  # [3, S, S]
        avg = (total + c // 2) // np.maximum(c, 1)
        out[g] = np.where(c > 0, avg, dsap[members[0]]).astype(np.uint8)
        union[g] = c > 0
    return out, union

