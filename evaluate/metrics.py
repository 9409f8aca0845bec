"""Re-ID metrics: distances, CMC, mAP (standard and Market "trapezoid"), mINP.

The vectorised path never sorts a whole gallery row.  For each query it computes the rank of
every *positive* (same pid, not junk) among the *valid* gallery items (everything except junk)
by counting how many valid items come before it:

* every distance is turned into an exact integer sort key ``key = bits(d) * G + j`` where
  ``bits`` is the order-preserving int32 image of the float32 distance and ``j`` the gallery
  index, so that ordering by key is ordering by ``(distance, gallery index)``: **ties are
  broken by gallery index**, exactly like a stable ``argsort`` of the row;
* the positives' keys (a handful per query) are sorted, and one batched ``searchsorted`` of
  every gallery key against them tells, for each gallery item, how many positives precede it;
* a per-query histogram of those counts and its cumulative sum give each positive's 0-based
  rank among the valid items.

From these ranks CMC, AP and INP follow in closed form.  ``evaluate_reference`` is the classic
per-query loop with a stable argsort; the tests hold both equal.

Protocols:

* ``market`` (Market-1501, DukeMTMC-reID, MSMT17) and ``cuhk03-new`` (CUHK03's new protocol, the
  same rule under its own name): gallery items with the same pid *and* the same camera as the query
  are junk and removed from its list; queries with no remaining positive are skipped and counted.
* ``cuhk01-single-shot``: the dataset adapter has already chosen one gallery image per identity
  (other camera) for the split; every gallery item is kept (nothing is junk).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from dsa.errors import UserError

log = logging.getLogger(__name__)

PROTOCOLS = ("market", "cuhk03-new", "cuhk01-single-shot")
#: protocols that drop same-pid same-camera gallery items as junk (the Market-1501 rule)
SAME_CAMERA_JUNK = ("market", "cuhk03-new")
AP_DEFINITIONS = ("standard", "market")
DISTANCES = ("cosine", "euclidean")
CMC_RANKS = (1, 5, 10, 20)
AP_NAMES = {
    "standard": "non-interpolated AP (mean of precision at each hit, toolbox definition)",
    "market": "Market-1501 official AP (trapezoid rule over precision/recall)",
}


class MetricsError(UserError, ValueError):
    """Inputs that cannot be evaluated (shapes, NaNs, unknown options); the message is a sentence."""


@dataclass
class Metrics:
    """Result of an evaluation: figures in [0, 1] plus what was evaluated and how."""

    cmc: dict[int, float]
    mAP: float
    mINP: float
    num_queries: int
    num_evaluated: int
    num_skipped: int
    protocol: str
    ap: str
    max_rank: int
    cmc_curve: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """JSON-able dict (CMC ranks as ``rank1`` ... keys)."""
        out = asdict(self)
        out["cmc"] = {f"rank{k}": v for k, v in self.cmc.items()}
        out["ap_definition"] = AP_NAMES[self.ap]
        return out


# --------------------------------------------------------------------------------------------
# distances


def _as_tensor(x, device=None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.to(device=device, dtype=torch.float32)


def prepare_features(x, metric: str = "cosine", device: str | None = None) -> torch.Tensor:
    """Float32 copy of features ready for :func:`distance_block` (L2-normalised for cosine)."""
    if metric not in DISTANCES:
        raise MetricsError(f"Unknown distance {metric!r}; choose one of {', '.join(DISTANCES)}.")
    t = _as_tensor(x, device)
    if t.ndim != 2:
        raise MetricsError(f"Features must be a 2-D array, got shape {tuple(t.shape)}.")
    return torch.nn.functional.normalize(t, dim=1) if metric == "cosine" else t


def distance_block(q: torch.Tensor, g: torch.Tensor, metric: str, g_sq=None) -> torch.Tensor:
    """Distances between prepared features ``q`` [a, D] and ``g`` [b, D] (one matmul).

    ``g_sq`` optionally passes the gallery's squared norms (euclidean) so chunks reuse them.
    """
    prod = q @ g.T
    if metric == "cosine":
        return prod.neg_().add_(1.0)
    g_sq = (g * g).sum(1) if g_sq is None else g_sq
    d2 = prod.mul_(-2.0).add_((q * q).sum(1, keepdim=True)).add_(g_sq[None])
    return d2.clamp_min_(0).sqrt_()


def pairwise_distance(
    qf, gf, metric: str = "cosine", chunk_size: int = 2048, device: str | None = None
) -> torch.Tensor:
    """Distance matrix [Q, G] float32 between query and gallery features (torch matmul, chunked).

    ``cosine`` is ``1 - cos`` (features are L2-normalised on a copy, never in place);
    ``euclidean`` is the true Euclidean distance (it ranks like the squared one).
    """
    q, g = prepare_features(qf, metric, device), prepare_features(gf, metric, device)
    if q.shape[1] != g.shape[1]:
        raise MetricsError(
            f"Query features have {q.shape[1]} dimensions but gallery features have {g.shape[1]}."
        )
    g_sq = (g * g).sum(1) if metric == "euclidean" else None
    out = torch.empty(q.shape[0], g.shape[0], dtype=torch.float32, device=q.device)
    for s in range(0, q.shape[0], chunk_size):
        out[s : s + chunk_size] = distance_block(q[s : s + chunk_size], g, metric, g_sq)
    return out


# --------------------------------------------------------------------------------------------
# the vectorised evaluation


def _order_bits(d: torch.Tensor) -> torch.Tensor:
    """Order-preserving int64 image of float32 values (-0.0 and +0.0 map to the same value)."""
    bits = (d.to(torch.float32) + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)


class _SamePid:
    """For each query, the gallery items with its pid (a padded index table, built once).

    Positives and junk are a few items per query, so they are gathered from this table instead of
    comparing every query with every gallery item.
    """

    def __init__(self, g_pids: torch.Tensor, g_camids: torch.Tensor):
        self.n = len(g_pids)
        order = torch.argsort(g_pids, stable=True)  # gallery indices grouped by pid, ascending
        self.uniq, counts = torch.unique_consecutive(g_pids[order], return_counts=True)
        width = int(counts.max()) if len(counts) else 0
        table = torch.full((len(self.uniq) + 1, max(width, 1)), self.n, dtype=torch.int64)
        col = torch.arange(len(order)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        row = torch.repeat_interleave(torch.arange(len(self.uniq)), counts)
        table[row, col] = order
        self.table = table.to(g_pids.device)
        self.cams = torch.cat([g_camids, g_camids.new_full((1,), -1)])

    def lookup(self, q_pids: torch.Tensor, q_camids: torch.Tensor, protocol: str):
        """Returns (index [q, M] clamped to the gallery, positive mask, junk mask)."""
        row = torch.searchsorted(self.uniq, q_pids).clamp_max(max(len(self.uniq) - 1, 0))
        found = self.uniq[row] == q_pids if len(self.uniq) else torch.zeros_like(q_pids, dtype=torch.bool)
        row = torch.where(found, row, torch.full_like(row, len(self.uniq)))
        idx = self.table[row]
        has = idx < self.n
        if protocol in SAME_CAMERA_JUNK:
            junk = has & (self.cams[idx] == q_camids[:, None])
        else:
            junk = torch.zeros_like(has)
        return idx.clamp_max(self.n - 1), has & ~junk, junk


def _ranks_searchsorted(d, idx, pos, junk) -> torch.Tensor:
    """Exact ranks with int64 keys (distance bits, gallery index) and one batched searchsorted.

    The fallback path (any distances: infinities, all-equal rows, heavy ties).  Returns ranks
    [q, M] aligned with ``idx`` (entries that are not positives are meaningless).
    """
    q, n = d.shape
    keys = torch.add(torch.arange(n, device=d.device), _order_bits(d), alpha=n)
    big = torch.iinfo(torch.int64).max
    skeys = torch.gather(keys, 1, idx)
    pkeys = torch.sort(skeys.masked_fill(~pos, big), dim=1).values
    before = torch.searchsorted(pkeys, keys)  # positives with a smaller key, per gallery item
    m = idx.shape[1]
    hist = torch.zeros(q, m + 1, dtype=torch.int64, device=d.device)
    hist.scatter_add_(1, before, torch.ones(1, dtype=torch.int64, device=d.device).expand_as(before))
    jb = torch.gather(before, 1, idx).masked_fill(~junk, m)  # junk items are not in the list
    hist.scatter_add_(1, jb, torch.full_like(jb, -1))
    # item g precedes sorted positive i (or is it) iff before[g] <= i
    sorted_ranks = hist[:, :m].cumsum(1) - 1
    # back to idx order: position of each positive's key in pkeys
    where = torch.searchsorted(pkeys, skeys).clamp_max(m - 1)
    return torch.gather(sorted_ranks, 1, where)


def _ranks_buckets(d, idx, pos, junk, num_buckets: int, max_candidates: int):
    """Exact ranks by a per-row histogram of quantised distances plus exact compares in the
    positives' own buckets.  Returns ranks [q, M] aligned with ``idx``, or None when the row
    distribution does not suit it (then the caller uses ``_ranks_searchsorted``).

    The bucket of a distance is trunc((d - lo) * scale): two correctly rounded IEEE operations,
    hence monotone in d and the same for equal d wherever they sit.  A different bucket therefore
    decides the order; the same bucket is resolved with the exact (distance, index) keys.
    """
    q, n = d.shape
    lo, hi = torch.aminmax(d, dim=1)
    span = hi - lo
    if bool(torch.isnan(span).any()):  # aminmax propagates NaN: the check costs nothing extra
        raise MetricsError("The distance matrix contains NaN values; check the features.")
    if not bool(torch.isfinite(span).all()) or bool((span < 1e-30).any()):
        return None
    scale = (num_buckets - 1) / span
    bucket = torch.sub(d, lo[:, None]).mul_(scale[:, None]).to(torch.int64)
    hist = torch.zeros(q, num_buckets, dtype=torch.int64, device=d.device)
    hist.scatter_add_(1, bucket, torch.ones(1, dtype=torch.int64, device=d.device).expand_as(bucket))
    lower = hist.cumsum(1) - hist  # items in strictly lower buckets
    sb = torch.gather(bucket, 1, idx)  # buckets of the same-pid items
    ranks = torch.gather(lower, 1, sb)
    # junk items in lower buckets do not count
    ranks -= ((sb[:, None, :] < sb[:, :, None]) & junk[:, None, :]).sum(2)
    # candidates: every item sitting in a bucket that holds a positive of its row
    mark = torch.zeros(q, num_buckets + 1, dtype=torch.bool, device=d.device)
    mark.scatter_(1, sb.masked_fill(~pos, num_buckets), True)
    cand = torch.gather(mark, 1, bucket).view(-1).nonzero().squeeze(1)
    if cand.numel() > max_candidates:
        return None
    r = torch.div(cand, n, rounding_mode="floor")
    g = cand - r * n
    ck = _order_bits(d.reshape(-1)[cand]) * n + g
    skeys = _order_bits(torch.gather(d, 1, idx)) * n + idx
    cvalid = ~(junk[r] & (idx[r] == g[:, None])).any(1)
    before = (bucket.view(-1)[cand][:, None] == sb[r]) & (ck[:, None] < skeys[r]) & cvalid[:, None]
    ranks.index_add_(0, r, before.to(torch.int64))
    return ranks


def _positive_ranks(d, idx, pos, junk, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted 0-based ranks of each query's positives among its valid gallery items.

    Returns ``ranks`` int64 [q, P] (ascending, padded with a huge value) and ``npos`` [q].
    ``method``: ``auto`` (buckets, falling back to searchsorted), ``buckets`` or ``searchsorted``.
    """
    q, n = d.shape
    ranks = None
    if method == "searchsorted" and bool(torch.isnan(d).any()):
        raise MetricsError("The distance matrix contains NaN values; check the features.")
    if method in ("auto", "buckets"):
        nb = max(16, min(1 << 16, n // 4))
        ranks = _ranks_buckets(d, idx, pos, junk, nb, max_candidates=max(8 * n, 64 * q * idx.shape[1]))
        if ranks is None and method == "buckets":
            log.debug("bucket path declined this chunk; using searchsorted")
    if ranks is None:
        ranks = _ranks_searchsorted(d, idx, pos, junk)
    npos = pos.sum(1)
    big = torch.iinfo(torch.int64).max
    pmax = int(npos.max()) if q else 0
    ranks = torch.sort(ranks.masked_fill(~pos, big), dim=1).values[:, :pmax]
    return ranks, npos


def _validate(dist, q_pids, g_pids, q_camids, g_camids, protocol, ap, max_rank):
    if protocol not in PROTOCOLS:
        raise MetricsError(f"Unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
    if ap not in AP_DEFINITIONS:
        raise MetricsError(f"Unknown AP definition {ap!r}; choose one of {', '.join(AP_DEFINITIONS)}.")
    if dist.ndim != 2:
        raise MetricsError(f"The distance matrix must be 2-D, got shape {tuple(dist.shape)}.")
    q, n = dist.shape
    if n == 0:
        raise MetricsError("The gallery is empty: there is nothing to rank.")
    if len(q_pids) != q or len(q_camids) != q or len(g_pids) != n or len(g_camids) != n:
        raise MetricsError(
            f"Labels do not match the distance matrix {q}x{n}: {len(q_pids)} query pids, "
            f"{len(q_camids)} query cameras, {len(g_pids)} gallery pids, {len(g_camids)} gallery cameras."
        )
    if max_rank < 1:
        raise MetricsError("max_rank must be at least 1.")


def _labels(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.int64, device=device)


def evaluate_distances(
    dist, q_pids, g_pids, q_camids, g_camids, *,
    protocol: str = "market",
    ap: str = "standard",
    max_rank: int = 20,
    chunk_size: int = 128,
    method: str = "auto",
) -> Metrics:
    """CMC (1..max_rank), mAP and mINP from a [Q, G] distance matrix (numpy or torch, any device).

    Queries are processed in chunks of ``chunk_size`` rows so memory stays bounded
    (about 20 bytes per matrix entry of a chunk).  Ties: (distance, gallery index) order, as a
    stable argsort of each row.  ``method`` picks the rank counter (``auto`` is the fast one;
    the others exist for the tests).
    """
    dist = dist if isinstance(dist, torch.Tensor) else torch.from_numpy(np.asarray(dist))
    _validate(dist, q_pids, g_pids, q_camids, g_camids, protocol, ap, max_rank)
    dev = dist.device
    qp, gp = _labels(q_pids, dev), _labels(g_pids, dev)
    qc, gc = _labels(q_camids, dev), _labels(g_camids, dev)
    same_pid = _SamePid(gp, gc)
    q = dist.shape[0]
    cmc_hits = torch.zeros(max_rank, dtype=torch.float64, device=dev)
    ap_sum = torch.zeros((), dtype=torch.float64, device=dev)
    inp_sum = torch.zeros((), dtype=torch.float64, device=dev)
    evaluated = 0
    for s in range(0, q, chunk_size):
        d = dist[s : s + chunk_size].to(torch.float32).contiguous()
        idx, pos, junk = same_pid.lookup(qp[s : s + chunk_size], qc[s : s + chunk_size], protocol)
        ranks, npos = _positive_ranks(d, idx, pos, junk, method)
        keep = npos > 0
        if not bool(keep.any()):
            continue
        ranks, npos = ranks[keep], npos[keep].to(torch.float64)
        evaluated += int(keep.sum())
        first = ranks[:, 0]
        cmc_hits += torch.bincount(first.clamp_max(max_rank), minlength=max_rank + 1)[:max_rank].to(
            torch.float64
        )
        hit = torch.arange(1, ranks.shape[1] + 1, device=dev, dtype=torch.float64)[None]
        real = hit <= npos[:, None]
        r = ranks.to(torch.float64).masked_fill(~real, 1.0)
        prec = hit / (r + 1.0)
        if ap == "standard":
            ap_q = (prec * real).sum(1) / npos
        else:  # Market-1501 compute_AP.m: trapezoid between the precision before and at each hit
            old = torch.where(r > 0, (hit - 1.0) / r.clamp_min(1.0), torch.ones_like(r))
            ap_q = ((old + prec) / 2.0 * real).sum(1) / npos
        ap_sum += ap_q.sum()
        last = ranks.masked_fill(~real, -1).max(1).values.to(torch.float64)
        inp_sum += (npos / (last + 1.0)).sum()
    return _finish(cmc_hits, ap_sum, inp_sum, q, evaluated, protocol, ap, max_rank)


def no_match_text(num_queries: int, protocol: str) -> str:
    """Why no query could be scored, and what to do: one sentence."""
    if protocol in SAME_CAMERA_JUNK:
        return (f"None of the {num_queries} queries has a matching gallery item under the {protocol!r} protocol, "
                f"which counts gallery images of the query's identity taken by the query's own camera as junk "
                f"(the Market-1501 rule): every query needs its identity in the gallery from another camera, so "
                f"data without camera ids (all camera 0) has no match; give the folder adapter names without "
                f"camera numbers (query and gallery then count as two cameras) or real camera ids, or rank "
                f"without labels with `evaluate search`")
    return (f"None of the {num_queries} queries has its identity in the gallery under the {protocol!r} protocol; "
            f"check that query and gallery share identities (pids), or rank without labels with `evaluate search`")


def _finish(cmc_hits, ap_sum, inp_sum, q, evaluated, protocol, ap, max_rank) -> Metrics:
    skipped = q - evaluated
    if skipped:
        log.info("%d of %d queries have no valid match in the gallery and were skipped", skipped, q)
    if evaluated == 0:
        raise MetricsError(no_match_text(q, protocol))
    curve = (torch.as_tensor(cmc_hits).cpu().double().cumsum(0) / evaluated).tolist()
    return Metrics(
        cmc={k: curve[k - 1] for k in CMC_RANKS if k <= max_rank},
        mAP=float(ap_sum) / evaluated,
        mINP=float(inp_sum) / evaluated,
        num_queries=q,
        num_evaluated=evaluated,
        num_skipped=skipped,
        protocol=protocol,
        ap=ap,
        max_rank=max_rank,
        cmc_curve=curve,
    )


def evaluate_features(
    qf, gf, q_pids, g_pids, q_camids, g_camids, *,
    metric: str = "cosine",
    protocol: str = "market",
    ap: str = "standard",
    max_rank: int = 20,
    chunk_size: int = 256,
    device: str | None = None,
) -> Metrics:
    """Evaluate features: the distance matrix (Q x G float32) then :func:`evaluate_distances`."""
    dist = pairwise_distance(qf, gf, metric, device=device)
    return evaluate_distances(
        dist, q_pids, g_pids, q_camids, g_camids,
        protocol=protocol, ap=ap, max_rank=max_rank, chunk_size=chunk_size,
    )


# --------------------------------------------------------------------------------------------
# the reference


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
