"""Test oracles: the plain, slow implementations the product's fast ones are held equal to.

Importable from the repository root as ``tests.oracles`` (the tests and the benchmarks); nothing in the
product imports it.

* :func:`evaluate_reference`: the classic per-query evaluation loop (stable argsort of each row);
* :func:`rerank_reference`: Zhong et al.'s dense k-reciprocal re-ranking (argsort made stable);
* :func:`encode_gather_all`: the previous all-at-once encoding step of ``evaluate.rerank``;
* :func:`warp_dsap_reference`: the DSAP warp as a per-pixel loop;
* :func:`part_branches_reference`: the MF-Stream's grouped part branches as 8 separate stages.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from dsa.backbone import bottleneck_stage, copy_branch
from dsa.dsap import check_warp_inputs
from dsa.mf_stream import MFStream
from dsa.parts import NUM_PARTS
from evaluate.metrics import SAME_CAMERA_JUNK, Metrics, _finish, _validate


def evaluate_reference(
    dist, q_pids, g_pids, q_camids, g_camids, *,
    protocol: str = "market",
    ap: str = "standard",
    max_rank: int = 20,
    queries=None,
) -> Metrics:
    """The classic per-query loop (stable argsort of each row), for tests and benchmarks.

    ``queries`` optionally restricts the evaluation to a subset of query indices.
    """
    dist = np.asarray(dist.cpu() if isinstance(dist, torch.Tensor) else dist, dtype=np.float32)
    _validate(dist, q_pids, g_pids, q_camids, g_camids, protocol, ap, max_rank)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    idx = range(dist.shape[0]) if queries is None else list(queries)
    cmc_hits = np.zeros(max_rank)
    ap_sum = inp_sum = 0.0
    evaluated = 0
    for i in idx:
        order = np.argsort(dist[i], kind="stable")
        if protocol in SAME_CAMERA_JUNK:
            keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        else:
            keep = np.ones(len(order), bool)
        match = (g_pids[order] == q_pids[i])[keep]
        if not match.any():
            continue
        evaluated += 1
        hits = np.flatnonzero(match)
        if hits[0] < max_rank:
            cmc_hits[hits[0]] += 1
        num = np.arange(1, len(hits) + 1)
        prec = num / (hits + 1.0)
        if ap == "standard":
            ap_sum += prec.mean()
        else:
            old = np.where(hits > 0, (num - 1) / np.maximum(hits, 1), 1.0)
            ap_sum += ((old + prec) / 2).mean()
        inp_sum += len(hits) / (hits[-1] + 1.0)
    return _finish(
        torch.from_numpy(cmc_hits), ap_sum, inp_sum, len(idx), evaluated, protocol, ap, max_rank
    )


def encode_gather_all(feats, metric, rows, cols, rowmax, n, chunk=1 << 20) -> sp.csr_matrix:
    """The previous ``_encode`` (both ends' full feature vectors gathered for up to 2^20 pairs at
    once: memory grows with the feature size); the reference of ``bench/bench_metrics.py`` and the tests."""
    w = torch.empty(rows.shape[0], dtype=torch.float32)
    for s in range(0, rows.shape[0], chunk):
        a, b = feats[rows[s : s + chunk]], feats[cols[s : s + chunk]]
        prod = (a * b).sum(1)
        if metric == "cosine":
            d = 1.0 - prod
        else:
            d = ((a * a).sum(1) + (b * b).sum(1) - 2.0 * prod).clamp_min(0).sqrt()
        w[s : s + chunk] = torch.exp(-(d * d) / rowmax[rows[s : s + chunk]]).cpu()
    r, c, wn = rows.numpy(), cols.numpy(), w.numpy()
    total = np.bincount(r, weights=wn, minlength=n)
    return sp.csr_matrix(((wn / total[r]).astype(np.float32), (r, c)), shape=(n, n))


def rerank_reference(q_g, q_q, g_g, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """The original dense implementation (Zhong et al.'s code, argsort made stable), for tests.

    Inputs are plain distance matrices; they are squared and normalised as in the original.
    """
    original_dist = np.concatenate(
        [np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0
    )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    query_num = q_g.shape[0]
    all_num = original_dist.shape[0]
    kh = int(np.around(k1 / 2.0))
    for i in range(all_num):
        forward = initial_rank[i, : k1 + 1]
        backward = initial_rank[forward, : k1 + 1]
        k_recip = forward[np.where(backward == i)[0]]
        expansion = k_recip
        for candidate in k_recip:
            c_forward = initial_rank[candidate, : kh + 1]
            c_backward = initial_rank[c_forward, : kh + 1]
            c_recip = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_recip, k_recip)) > 2.0 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        nonzero = np.where(V[i, :] != 0)[0]
        for j in nonzero:
            images = inv_index[j]
            temp_min[0, images] += np.minimum(V[i, j], V[images, j])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist * lambda_value
    return final[:query_num, query_num:]

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
