"""``synthetic``: the synthetic generator's exact ground truth, with optional simulated estimator errors.

The generator (``data.synthetic``) writes ``<stem>_IUV.png`` beside every image.  Real estimators
make mistakes, so four error kinds can be simulated at chosen rates, each seeded by (seed, effect,
key) so that the result for an image never depends on batch order, worker count or the other rates:

- ``miss``: probability that the whole person is not found (``None``);
- ``drop_part``: probability that each present part is removed (set to background);
- ``label_noise``: fraction of body pixels relabelled to a different random part;
- ``uv_jitter``: standard deviation of Gaussian noise added to U and V of body pixels (then clamped).

A crop left without body pixels is reported as not found.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.io import read_iuv_png
from dsa.iuv import IUV
from dsa.parts import NUM_PARTS

from .base import Estimator, EstimatorError, key_rng, sibling_path

__all__ = ["SyntheticEstimator", "simulate_errors"]


def _check_rate(name: str, value: float, upper: float = 1.0) -> float:
    if not 0.0 <= value <= upper:
        raise EstimatorError(f"estimator 'synthetic': {name} must be between 0 and {upper:g}, got {value}")
    return float(value)


def simulate_errors(iuv: IUV, key: str, *, miss: float = 0.0, drop_part: float = 0.0,
                    label_noise: float = 0.0, uv_jitter: float = 0.0, seed: int = 0) -> IUV | None:
    """Apply the simulated estimator errors to a copy of ``iuv`` (deterministic per ``seed`` and ``key``)."""
    if miss > 0 and key_rng(seed, f"miss:{key}").random() < miss:
        return None
    labels = iuv.I.copy()
    u, v = iuv.U.copy(), iuv.V.copy()
    if drop_part > 0:
        dropped = np.flatnonzero(key_rng(seed, f"drop_part:{key}").random(NUM_PARTS) < drop_part) + 1
        labels[np.isin(labels, dropped)] = 0
    body = labels > 0
    if label_noise > 0:
        rng = key_rng(seed, f"label_noise:{key}")
        flip = body & (rng.random(labels.shape) < label_noise)
        old = labels[flip].astype(np.int64)
        new = rng.integers(1, NUM_PARTS, size=old.size)  # 1..23, shifted past the old label: always different
        labels[flip] = (new + (new >= old)).astype(np.uint8)
    if uv_jitter > 0:
        rng = key_rng(seed, f"uv_jitter:{key}")
        noise = rng.normal(0.0, uv_jitter, size=(2,) + labels.shape).astype(np.float32)
        u[body] = np.clip(u[body] + noise[0][body], 0.0, 1.0)
        v[body] = np.clip(v[body] + noise[1][body], 0.0, 1.0)
    u[~body] = 0.0
    v[~body] = 0.0
    if not body.any():
        return None
    return IUV(I=labels, U=u, V=v)


class SyntheticEstimator(Estimator):
    """Reads ``<stem>_IUV.png`` beside each image (the generator's ground truth)."""

    name = "synthetic"
    batch_size = 64

    def __init__(self, dataset_root: str | Path, miss: float = 0.0, drop_part: float = 0.0,
                 label_noise: float = 0.0, uv_jitter: float = 0.0, seed: int = 0) -> None:
        super().__init__(dataset_root)
        self.miss = _check_rate("miss", miss)
        self.drop_part = _check_rate("drop_part", drop_part)
        self.label_noise = _check_rate("label_noise", label_noise)
        self.uv_jitter = _check_rate("uv_jitter", uv_jitter, upper=10.0)
        self.seed = int(seed)

    def settings(self) -> dict[str, Any]:
        return {"source": "ground-truth <stem>_IUV.png", "miss": self.miss, "drop_part": self.drop_part,
                "label_noise": self.label_noise, "uv_jitter": self.uv_jitter, "seed": self.seed}

    def estimate(self, images: Sequence[np.ndarray], paths: Sequence[str | Path],
                 keys: Sequence[str]) -> list[IUV | None]:
        out: list[IUV | None] = []
        for image, path, key in zip(images, paths, keys):
            iuv = read_iuv_png(sibling_path(path, "_IUV.png"))  # ImageReadError names the missing file
            if iuv.shape != image.shape[:2]:
                raise EstimatorError(f"{sibling_path(path, '_IUV.png')} is {iuv.shape[1]}×{iuv.shape[0]} "
                                     f"but its image is {image.shape[1]}×{image.shape[0]}")
            out.append(simulate_errors(iuv, key, miss=self.miss, drop_part=self.drop_part,
                                       label_noise=self.label_noise, uv_jitter=self.uv_jitter, seed=self.seed))
        return out
