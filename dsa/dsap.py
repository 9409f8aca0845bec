"""DSAP images: warp a person crop into 24 densely semantically aligned part images (paper §3.1).

Rule (docs/DESIGN.md §4, docs/INTERFACES.md): for part ``i`` an S×S RGB image is initialised to the
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

from typing import TYPE_CHECKING

import cv2
import numpy as np

from .parts import NUM_GROUPS, NUM_PARTS, PART_TO_GROUP

if TYPE_CHECKING:  # torch is imported lazily so that NumPy-only users do not pay for it
    import torch

DEFAULT_SIZE = 32

__all__ = [
    "DEFAULT_SIZE",
    "warp_dsap", "warp_dsap_torch", "crop_csa", "dsap_not_found",
    "image_mean", "normalise_dsap", "coverage", "merge_groups",
]


# ----------------------------------------------------------------------------------------- helpers
def check_warp_inputs(image: np.ndarray, I: np.ndarray, U: np.ndarray | None = None,
                  V: np.ndarray | None = None, size: int = DEFAULT_SIZE) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 H×W×3 RGB, got {image.dtype} {image.shape}")
    maps = [m for m in (I, U, V) if m is not None]
    if any(m.shape != image.shape[:2] for m in maps):
        raise ValueError(f"I/U/V maps {[m.shape for m in maps]} must match the image size {image.shape[:2]}")
    if size < 1:
        raise ValueError(f"DSAP size must be positive, got {size}")


def image_mean(image: np.ndarray) -> np.ndarray:
    """Per-channel mean of a uint8 H×W×3 image, rounded half up with integer arithmetic (uint8 [3])."""
    n = image.shape[0] * image.shape[1]
    if n == 0:
        return np.zeros(3, dtype=np.uint8)
    sums = cv2.sumElems(np.ascontiguousarray(image))  # float64 sums of uint8 values: exact integers
    return np.array([(2 * int(sums[ch]) + n) // (2 * n) for ch in range(3)], dtype=np.uint8)


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
    check_warp_inputs(image, I, U, V, size)
    ss = size * size
    n_cells = NUM_PARTS * ss
    mean = image_mean(image)
    labels = I.reshape(-1)
    body = np.flatnonzero((labels > 0) & (labels <= NUM_PARTS))
    s, top = np.float32(size), np.float32(size - 1)
    # clip(u·S, 0, S−1) then truncate == min(⌊clip(u, 0, 1)·S⌋, S−1): same float32 product inside [0, 1]
    row = np.clip(U.reshape(-1)[body].astype(np.float32, copy=False) * s, 0, top)
    col = np.clip(V.reshape(-1)[body].astype(np.float32, copy=False) * s, 0, top)
    if np.isnan(row.sum() + col.sum()):  # rare: drop pixels with NaN coordinates
        ok = ~(np.isnan(row) | np.isnan(col))
        body, row, col = body[ok], row[ok], col[ok]
    cell = labels[body].astype(np.int64)
    cell -= 1
    cell *= ss
    cell += row.astype(np.int64) * size
    cell += col.astype(np.int64)

    count = np.bincount(cell, minlength=n_cells)
    hit = np.flatnonzero(count)
    c = count[hit]
    half, divisor = c // 2, c.astype(np.float64)
    out = np.empty((3, n_cells), dtype=np.uint8)
    rgb = image.reshape(-1, 3)
    for ch in range(3):
        out[ch] = mean[ch]
        total = np.bincount(cell, weights=rgb[body, ch], minlength=n_cells)[hit]  # exact integer sums
        # floor((sum + count//2) / count) in float64 equals the integer division: a non-integer
        # quotient is at least 1/count away from the next integer, far above the rounding error
        out[ch, hit] = np.floor((total + half) / divisor)
    dsap = np.ascontiguousarray(out.reshape(3, NUM_PARTS, size, size).transpose(1, 0, 2, 3))
    written = np.zeros(n_cells, dtype=bool)
    written[hit] = True
    return dsap, written.reshape(NUM_PARTS, size, size)


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
    ss = size * size
    cells = NUM_PARTS * ss
    planes = images.reshape(b, 3, n)
    mean = (2 * planes.sum(dim=2, dtype=torch.int64) + n) // (2 * n) if n else \
        torch.zeros(b, 3, dtype=torch.int64, device=device)

    labels = I.reshape(b * n).to(torch.int64)
    u = U.reshape(b * n).to(torch.float32)
    v = V.reshape(b * n).to(torch.float32)
    keep = (labels > 0) & (labels <= NUM_PARTS) & ~torch.isnan(u) & ~torch.isnan(v)
    pix = keep.nonzero().squeeze(1)  # flat (batch, pixel) positions, ascending
    s = torch.tensor(size, dtype=torch.float32, device=device)
    # same float32 arithmetic as the NumPy path: clamp(u·S, 0, S−1), truncate
    row = (u[pix] * s).clamp_(0, size - 1).to(torch.int64)
    col = (v[pix] * s).clamp_(0, size - 1).to(torch.int64)
    batch = torch.div(pix, n, rounding_mode="floor")
    cell = batch * cells + (labels[pix] - 1) * ss + row * size + col

    count = torch.zeros(b * cells, dtype=torch.int64, device=device)
    count.index_add_(0, cell, torch.ones_like(cell))
    hit = count.nonzero().squeeze(1)
    c = count[hit]
    hit_batch = torch.div(hit, cells, rounding_mode="floor")
    hit_cell = hit - hit_batch * cells
    # [B, 3, cells] filled with the mean; written cells get the integer average
    out = mean.to(torch.uint8)[:, :, None].expand(b, 3, cells).contiguous()
    flat_out = out.view(-1)
    flat_in = planes.reshape(-1)
    src = batch * (3 * n) + (pix - batch * n)  # position of channel 0 of each pixel in images
    for ch in range(3):
        total = torch.zeros(b * cells, dtype=torch.int64, device=device)
        total.index_add_(0, cell, flat_in[src + ch * n].to(torch.int64))
        avg = (total[hit] + c // 2) // c
        flat_out[hit_batch * (3 * cells) + ch * cells + hit_cell] = avg.to(torch.uint8)
    dsap = out.view(b, 3, NUM_PARTS, size, size).permute(0, 2, 1, 3, 4).contiguous()
    written = (count > 0).view(b, NUM_PARTS, size, size)
    return dsap, written


# ------------------------------------------------------------------------------------ CSA ablation
def crop_csa(image: np.ndarray, I: np.ndarray, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Coarsely aligned parts (paper Table 4): each part's bounding-box crop of the image resized to
    S×S (cv2 INTER_LINEAR).  Absent parts stay mean-filled with an all-False mask; present parts are
    all True.  Same shapes as :func:`warp_dsap`."""
    check_warp_inputs(image, I, size=size)
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

    The same normalisation as the images (``dsa.transforms.normalise``); returns a new tensor, the
    input is never modified."""
    from .transforms import normalise

    if dsap.ndim < 3 or dsap.shape[-3] != 3:
        raise ValueError(f"DSAP must be [..., 3, S, S], got {tuple(dsap.shape)}")
    return normalise(dsap)


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

