"""Dense-semantics maps (I, U, V) and the legacy DensePose IUV PNG encoding.

DensePose's original release writes ``*_IUV.png`` with OpenCV, so the channel
order on disk is B = part index I (0..24), G = U·255, R = V·255.  These
functions convert between that BGR array and float maps; reading and writing
files is ``data``'s job.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .parts import NUM_PARTS


@dataclass
class IUV:
    """Per-pixel part label ``I`` (uint8, 0 = background, 1..24) and chart coordinates ``U``, ``V``
    (float32 in [0, 1]) of one image."""

    I: np.ndarray
    U: np.ndarray
    V: np.ndarray

    def __post_init__(self) -> None:
        if not (self.I.shape == self.U.shape == self.V.shape) or self.I.ndim != 2:
            raise ValueError(f"I, U, V must be H×W maps of one shape, got {self.I.shape}, {self.U.shape}, {self.V.shape}")
        if self.I.size and int(self.I.max()) > NUM_PARTS:
            raise ValueError(f"part labels must be 0..{NUM_PARTS}, found {int(self.I.max())}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.I.shape  # type: ignore[return-value]

    @property
    def body_fraction(self) -> float:
        return float((self.I > 0).mean()) if self.I.size else 0.0


def decode_iuv_png(bgr: np.ndarray) -> IUV:
    """Legacy DensePose IUV PNG (as read by ``cv2.imread``, BGR uint8) → :class:`IUV`."""
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"an IUV PNG has 3 channels, got shape {bgr.shape}")
    i = bgr[..., 0].astype(np.uint8)
    u = bgr[..., 1].astype(np.float32) / 255.0
    v = bgr[..., 2].astype(np.float32) / 255.0
    return IUV(I=i, U=u, V=v)


def encode_iuv_png(iuv: IUV) -> np.ndarray:
    """:class:`IUV` → BGR uint8 array for ``cv2.imwrite`` (U and V rounded to 1/255)."""
    out = np.empty(iuv.I.shape + (3,), dtype=np.uint8)
    out[..., 0] = iuv.I
    out[..., 1] = np.clip(np.rint(iuv.U * 255.0), 0, 255).astype(np.uint8)
    out[..., 2] = np.clip(np.rint(iuv.V * 255.0), 0, 255).astype(np.uint8)
    body = iuv.I > 0
    out[..., 1][~body] = 0
    out[..., 2][~body] = 0
    return out
