"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), memory-bounded.

The original code builds dense N x N matrices (N = queries + gallery): the distances, the
argsort of every row and the encoding V.  For Market-1501 (N = 23100) that is 2 GB per float32
matrix and several of them.  This version keeps:

* the features (N x D) and, for the query rows only, the normalised query-gallery distances
  (Q x G float32, which is also the size of the output);
* the top-(k1+1) neighbour lists (N x (k1+1) int64) from one chunked pass over the rows;
* V as a scipy CSR matrix (a few hundred non-zeros per row).

Distances needed for the weights of the expanded k-reciprocal sets are recomputed from the
features in blocks of pairs (at most 32 MiB of gathered feature rows per end, whatever the feature
size).  The Jaccard term is computed per query chunk by joining the sparse rows of V on their common
columns.  Memory is therefore the features (input + one concatenated copy) + 2 x Q x G x 4 bytes +
bounded buffers: ``bench/bench_metrics.py --rerank`` measured a 2.1 GB peak RSS for the whole process
at Market size (23,100 items) with 4096-d features, and 1436 / 1543 / 1578 MiB at N = 10,000 with
512 / 2048 / 4096-d (torchreid's dense version: 2977 / 3067 / 3123 MiB).

Neighbour order: ``torch.topk`` on the distances; exact ties between neighbours may be ordered
differently from the original's ``np.argsort`` (they do not occur with real-valued features).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from evaluate.metrics import MetricsError, available_memory, distance_block, prepare_features

log = logging.getLogger(__name__)


def _neighbours(feats, metric, q, k, chunk_size, progress):
    """Pass over all rows: top-k neighbour lists, row maxima of the squared distance and the
    normalised query-gallery block."""
    n = feats.shape[0]
    g_sq = (feats * feats).sum(1) if metric == "euclidean" else None
    rank = torch.empty(n, k, dtype=torch.int64)
    rowmax = torch.empty(n, dtype=torch.float32)
    qg = torch.empty(q, n - q, dtype=torch.float32)
    for s in tqdm(range(0, n, chunk_size), desc="re-rank: neighbours", disable=not progress, leave=False):
        d = distance_block(feats[s : s + chunk_size], feats, metric, g_sq).square_()
        m = d.max(1).values.clamp_min_(1e-12)
        d /= m[:, None]
        rank[s : s + chunk_size] = torch.topk(d, k, dim=1, largest=False, sorted=True).indices.cpu()
        rowmax[s : s + chunk_size] = m.cpu()
        if s < q:
            e = min(s + chunk_size, q)
            qg[s:e] = d[: e - s, q:].cpu()
    return rank, rowmax, qg


def _reciprocal(rank: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """mask[i, a]: is rank[i, a] a reciprocal neighbour of i (i in rank[rank[i, a]])?"""
    out = torch.empty(rank.shape, dtype=torch.bool)
    for s in range(0, rank.shape[0], chunk_size):
        r = rank[s : s + chunk_size]
        me = torch.arange(s, s + r.shape[0])[:, None, None]
        out[s : s + chunk_size] = (rank[r] == me).any(2)
    return out


def _expansion_sets(rank: torch.Tensor, k1: int, chunk_size: int = 1024):
    """The k-reciprocal sets R*(i, k1) of every row as (row index, column index) pairs, deduplicated.

    R(i, k1) = reciprocal members of the top-(k1+1) list; a member c adds its own R(c, k1/2) when
    more than 2/3 of it lies in R(i, k1) (the original's expansion rule).
    """
    kh = int(np.around(k1 / 2.0))
    full, half = rank[:, : k1 + 1], rank[:, : kh + 1]
    rec, hrec = _reciprocal(full), _reciprocal(half)
    rows, cols = [], []
    for s in range(0, full.shape[0], chunk_size):
        f, fr = full[s : s + chunk_size], rec[s : s + chunk_size]
        cand = half[f]  # [c, k1+1, kh+1]: the half lists of each member
        cand_ok = hrec[f]
        inside = (cand[..., None] == f[:, None, None, :]) & fr[:, None, None, :]
        common = (inside.any(3) & cand_ok).sum(2)
        accept = fr & (common > 2.0 / 3.0 * cand_ok.sum(2))
        members = torch.where(fr, f, -1)
        extra = torch.where(accept[..., None] & cand_ok, cand, -1).flatten(1)
        allm = torch.sort(torch.cat([members, extra], 1), dim=1).values
        keep = allm >= 0
        keep[:, 1:] &= allm[:, 1:] != allm[:, :-1]
        r, c = keep.nonzero(as_tuple=True)
        rows.append(r + s)
        cols.append(allm[r, c])
    return torch.cat(rows), torch.cat(cols)


def _encode(feats, metric, rows, cols, rowmax, n, block_bytes: int = 1 << 25) -> sp.csr_matrix:
    """V[i, x] = exp(-d(i, x)) / sum over R*(i) (d: the row-normalised squared distance).

    The distances of the (i, x) pairs are recomputed from the features in blocks of pairs whose
    gathered feature rows take at most ``block_bytes`` (32 MiB) for each end, so the memory used
    here does not grow with the feature size (only the block's number of pairs shrinks).
    """
    w = torch.empty(rows.shape[0], dtype=torch.float32)
    sq = (feats * feats).sum(1) if metric == "euclidean" else None
    chunk = max(1, block_bytes // (4 * max(1, feats.shape[1])))
    for s in range(0, rows.shape[0], chunk):
        r, c = rows[s : s + chunk], cols[s : s + chunk]
        prod = torch.bmm(feats[r].unsqueeze(1), feats[c].unsqueeze(2)).view(-1)
        if metric == "cosine":
            d = 1.0 - prod
        else:
            d = (sq[r] + sq[c] - 2.0 * prod).clamp_min(0).sqrt()
        w[s : s + chunk] = torch.exp(-(d * d) / rowmax[r]).cpu()
    r, c, wn = rows.numpy(), cols.numpy(), w.numpy()
    total = np.bincount(r, weights=wn, minlength=n)
    return sp.csr_matrix(((wn / total[r]).astype(np.float32), (r, c)), shape=(n, n))


def memory_needed(num_query: int, num_gallery: int, dim: int, k1: int = 20, chunk_size: int = 512) -> int:
    """Bytes :func:`k_reciprocal_rerank` needs, estimated from its arrays: the features twice (input
    copy and concatenation), the query-gallery matrix twice (the output and the evaluation that reads
    it), a chunk of full distance rows with its temporaries, the neighbour lists, k-reciprocal sets and
    sparse encoding (about 400 int64 per item), the Jaccard blocks and the interpreter (256 MiB)."""
    n = num_query + num_gallery
    return (2 * n * dim * 4 + 2 * num_query * num_gallery * 4 + 3 * min(chunk_size, n) * n * 4
            + n * max(400, 20 * k1) * 8 + (256 << 20))


def check_fits(num_query: int, num_gallery: int, dim: int, k1: int = 20, chunk_size: int = 512,
               max_memory: int | None = None) -> None:
    """Raise a :class:`MetricsError` naming the memory re-ranking needs when it exceeds ``max_memory``
    (default: the memory available now)."""
    need = memory_needed(num_query, num_gallery, dim, k1, chunk_size)
    have = max_memory if max_memory is not None else available_memory()
    if have is not None and need > have:
        where = "allowed (--max-memory)" if max_memory is not None else "available"
        raise MetricsError(
            f"Re-ranking {num_query:,} queries against {num_gallery:,} gallery items ({dim}-d) needs about "
            f"{need / 2**30:.1f} GiB of memory but {have / 2**30:.1f} GiB is {where}: it builds the whole "
            f"query x gallery matrix, so evaluate without re-ranking (streamed, memory-bounded) or on a "
            f"machine with more memory.")


def _jaccard_rows(vq: sp.csr_matrix, vg_t: sp.csr_matrix, num_gallery: int) -> np.ndarray:
    """sum_k min(Vq[i, k], Vg[j, k]) for the rows of ``vq`` against every gallery item j.

    ``vg_t`` is the gallery part of V transposed (row k lists the gallery items using column k).
    """
    coo = vq.tocoo()
    lengths = np.diff(vg_t.indptr)[coo.col]
    total = int(lengths.sum())
    starts = np.repeat(vg_t.indptr[coo.col] - np.cumsum(lengths) + lengths, lengths)
    pos = starts + np.arange(total)
    mins = np.minimum(np.repeat(coo.data, lengths), vg_t.data[pos])
    flat = np.repeat(coo.row.astype(np.int64), lengths) * num_gallery + vg_t.indices[pos]
    out = np.bincount(flat, weights=mins, minlength=vq.shape[0] * num_gallery)
    return out.reshape(vq.shape[0], num_gallery)


def k_reciprocal_rerank(
    qf,
    gf,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: str = "euclidean",
    chunk_size: int = 512,
    device: str | None = None,
    max_memory: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Re-ranked query-gallery distances [Q, G] float32 (Zhong et al. 2017).

    final = (1 - lambda) * Jaccard(V) + lambda * d^2 / rowmax(d^2), with ``d`` the ``metric``
    distance over query + gallery, as in the original implementation.  Exact; it refuses with a
    sentence naming the memory it needs (:func:`memory_needed`) when that exceeds ``max_memory``
    (default: the memory available).
    """
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise MetricsError("Re-ranking needs k1 >= 1, k2 >= 1 and 0 <= lambda <= 1.")
    shape_q, shape_g = np.shape(qf), np.shape(gf)
    if len(shape_q) == 2 and len(shape_g) == 2:
        check_fits(shape_q[0], shape_g[0], shape_q[1], k1, chunk_size, max_memory)
    q_feats, g_feats = prepare_features(qf, metric, device), prepare_features(gf, metric, device)
    if q_feats.shape[1] != g_feats.shape[1]:
        raise MetricsError(
            f"Query features have {q_feats.shape[1]} dimensions but gallery features have "
            f"{g_feats.shape[1]}."
        )
    feats = torch.cat([q_feats, g_feats])
    q, n = q_feats.shape[0], feats.shape[0]
    del q_feats, g_feats  # the normalised copies (cosine) are not kept twice
    k = min(max(k1 + 1, k2), n)
    k1 = k - 1 if k1 + 1 > n else k1
    rank, rowmax, qg = _neighbours(feats, metric, q, k, chunk_size, progress)
    rows, cols = _expansion_sets(rank, k1)
    v = _encode(feats.cpu(), metric, rows, cols, rowmax, n)
    del feats
    if k2 != 1:  # query expansion: average V over the k2 nearest neighbours
        nb = rank[:, :k2].numpy()
        a = sp.csr_matrix(
            (np.full(nb.size, 1.0 / k2, np.float32), (np.repeat(np.arange(n), k2), nb.ravel())),
            shape=(n, n),
        )
        v = (a @ v).tocsr()
    vq, vg_t = v[:q], v[q:].T.tocsr()
    vg_t.sort_indices()
    final = qg.numpy()
    step = max(1, (1 << 22) // max(1, n - q))  # bounds the dense jaccard block and the join
    for s in tqdm(range(0, q, step), desc="re-rank: jaccard", disable=not progress, leave=False):
        tm = _jaccard_rows(vq[s : s + step], vg_t, n - q)
        jac = 1.0 - tm / (2.0 - tm)
        final[s : s + step] = (1.0 - lambda_value) * jac + lambda_value * final[s : s + step]
    log.info("re-ranked %d queries against %d gallery items (k1=%d, k2=%d, lambda=%.2f)",
             q, n - q, k1, k2, lambda_value)
    return final
