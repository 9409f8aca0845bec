"""Test oracles: slow, obviously correct implementations the product's fast code is held equal to.

Importable as ``tests.oracles`` from the repository root (the tests and the benchmarks use them).
"""
from __future__ import annotations

import math

import numpy as np
from torch import nn

from dsa.backbone import bottleneck_stage, copy_branch
from dsa.dsap import check_warp_inputs
from dsa.parts import NUM_PARTS
from dsa.mf_stream import MFStream


def warp_dsap_reference(image: np.ndarray, I: np.ndarray, U: np.ndarray, V: np.ndarray,
                        size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The same warp as a plain per-pixel Python loop: slow, obviously correct, for tests and benchmarks."""
    check_warp_inputs(image, I, U, V, size)
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


def part_branches_reference(mf: MFStream) -> nn.ModuleList:
    """The MF-Stream's part branches as 8 separate torchvision-Bottleneck stages with the same weights.

    Branch i maps F to the 4 * planes channels [i*part_dim, (i+1)*part_dim) of the batched output; the
    tests hold the grouped form equal to this per-branch form.
    """
    if mf.part_branch is None:
        raise ValueError("this MF-Stream has no part branches")
    cfg = mf.cfg
    ref = nn.ModuleList()
    for i in range(cfg.num_parts):
        stage = bottleneck_stage(mf.backbone.out_channels, cfg.part_dim // 4, cfg.part_blocks, cfg.last_stride)
        if stage[0].downsample is None:  # the batched form always projects a shared input
            raise ValueError("part branches with an identity shortcut have no per-branch form")
        copy_branch(stage, mf.part_branch, i, cfg.num_parts)
        ref.append(stage)
    return ref.to(next(mf.parameters()).device).train(mf.training)
