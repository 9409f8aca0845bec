"""A non-learned baseline: colour histograms of horizontal stripes (a floor any trained model must clear).

``colour_histogram(image)`` is the HSV histogram (8×4×4 bins) of each of 4 horizontal stripes, square-rooted
and L2-normalised; compare two with the cosine distance.  ``mask`` restricts it to some pixels (the body,
say, from a dense-semantics label map).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from data.io import read_image


def colour_histogram(image: np.ndarray, mask: np.ndarray | None = None, stripes: int = 4) -> np.ndarray:
    """The feature of one RGB uint8 H×W×3 image (float32, unit norm)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    feats = []
    for rows in np.array_split(np.arange(hsv.shape[0]), stripes):
        m = None if mask is None else np.ascontiguousarray(mask[rows].astype(np.uint8))
        h = cv2.calcHist([np.ascontiguousarray(hsv[rows])], [0, 1, 2], m, [8, 4, 4], [0, 180, 0, 256, 0, 256])
        feats.append(np.sqrt(h.ravel() / (h.sum() + 1e-9)))
    f = np.concatenate(feats)
    return (f / (np.linalg.norm(f) + 1e-9)).astype(np.float32)


def colour_histogram_features(root: str | os.PathLike, keys: Sequence[str]) -> np.ndarray:
    """[N, 512] features of the images ``root/key``."""
    return np.stack([colour_histogram(read_image(Path(root) / k)) for k in keys])
