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

From these ranks CMC, AP and INP follow in closed form.  The classic per-query loop with a stable
argsort (``tests/oracles.py``) is the tests' oracle.

Streaming: the query x gallery matrix is never needed whole.  :func:`evaluate_features` computes the
distances by blocks of query rows and ranks each block as it comes, so memory is bounded by the block
(:func:`block_rows`: from ``block_size``, ``max_memory`` or the memory available), not by Q x G.  The
result does not depend on the blocks, bit for bit: ranks are exact integers whatever the block, the
distance products are always computed on the same tiles of query rows (:func:`distance_tile`, a
function of the gallery size only, the tiles of :func:`pairwise_distance` too), and CMC/AP/INP are
summed over fixed chunks of ``chunk_size`` queries whatever the blocks inside them.

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
from tqdm import tqdm

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


#: bytes one tile of distances may take (the tile rows follow the gallery size: :func:`distance_tile`)
TILE_BYTES = 256 << 20
MIN_TILE, MAX_TILE = 64, 2048
#: working memory per distance entry while a block is ranked (the distance, its int64 sort key or
#: bucket, masks and temporaries), measured with ``bench/bench_scale.py``, rounded up
RANK_BYTES_PER_ENTRY = 40
#: the default budget for a block when none is given: a quarter of the memory available, within these
MIN_BUDGET, MAX_BUDGET = 64 << 20, 512 << 20


def distance_tile(num_gallery: int) -> int:
    """Query rows of one distance product: the largest power of two in [64, 2048] whose tile of
    distances fits :data:`TILE_BYTES`.  It depends on the gallery size only, so every path (one-shot
    or streamed, any block) multiplies the same tiles and gets the same bits."""
    rows = TILE_BYTES // (4 * max(1, num_gallery))
    tile = MIN_TILE
    while tile * 2 <= min(rows, MAX_TILE):
        tile *= 2
    return tile


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_budget(max_memory: int | None = None) -> int:
    """Bytes a block of work may take: ``max_memory`` when given, else a quarter of the memory available,
    between 64 MiB and 512 MiB (512 MiB where the available memory is unknown)."""
    if max_memory is not None:
        if max_memory <= 0:
            raise MetricsError(f"The memory budget must be positive, not {max_memory} bytes.")
        return int(max_memory)
    avail = available_memory()
    return MAX_BUDGET if avail is None else max(MIN_BUDGET, min(MAX_BUDGET, avail // 4))


def block_rows(num_gallery: int, *, block_size: int | None = None, max_memory: int | None = None) -> int:
    """Query rows ranked at once against ``num_gallery`` items: ``block_size`` when given, else as many
    as the budget (:func:`memory_budget`) holds once one tile of distances is set aside (at least 1)."""
    if block_size is not None:
        if block_size < 1:
            raise MetricsError(f"The block size must be at least 1 query, not {block_size}.")
        return int(block_size)
    n = max(1, num_gallery)
    spare = memory_budget(max_memory) - distance_tile(n) * n * 4
    return max(1, spare // (n * RANK_BYTES_PER_ENTRY))


def _check_dims(q: torch.Tensor, g: torch.Tensor) -> None:
    if q.shape[1] != g.shape[1]:
        raise MetricsError(
            f"Query features have {q.shape[1]} dimensions but gallery features have {g.shape[1]}."
        )


def _gallery_sq(g: torch.Tensor, metric: str):
    return (g * g).sum(1) if metric == "euclidean" else None


def _fill_rows(out: torch.Tensor, q, g, metric: str, g_sq, start: int, tile: int) -> torch.Tensor:
    """Distances of the query rows ``start .. start + len(out)`` (``start`` a multiple of ``tile``), one
    product per tile, written into ``out``."""
    for s in range(0, out.shape[0], tile):
        out[s : s + tile] = distance_block(q[start + s : start + s + tile], g, metric, g_sq)
    return out


def pairwise_distance(
    qf, gf, metric: str = "cosine", chunk_size: int | None = None, device: str | None = None
) -> torch.Tensor:
    """Distance matrix [Q, G] float32 between query and gallery features (torch matmul, by tiles of
    query rows: ``chunk_size``, default :func:`distance_tile`).

    ``cosine`` is ``1 - cos`` (features are L2-normalised on a copy, never in place);
    ``euclidean`` is the true Euclidean distance (it ranks like the squared one).
    """
    q, g = prepare_features(qf, metric, device), prepare_features(gf, metric, device)
    _check_dims(q, g)
    out = torch.empty(q.shape[0], g.shape[0], dtype=torch.float32, device=q.device)
    return _fill_rows(out, q, g, metric, _gallery_sq(g, metric), 0, chunk_size or distance_tile(g.shape[0]))


def distance_rows(qf, gf, rows, metric: str = "cosine", device: str | None = None) -> list[np.ndarray]:
    """The distance rows [G] of the queries ``rows`` (indices), equal to those rows of
    :func:`pairwise_distance`: each is cut from its own tile (one tile in memory at a time)."""
    q, g = prepare_features(qf, metric, device), prepare_features(gf, metric, device)
    _check_dims(q, g)
    tile, g_sq, out = distance_tile(g.shape[0]), _gallery_sq(g, metric), []
    for r in rows:
        start = int(r) // tile * tile
        block = distance_block(q[start : start + tile], g, metric, g_sq)
        out.append(block[int(r) - start].cpu().numpy().copy())
    return out


class _MatrixRows:
    """Rows of a given distance matrix (float32, contiguous), for :func:`_evaluate_rows`."""

    def __init__(self, dist: torch.Tensor):
        self.dist = dist

    def end(self, a: int) -> int:
        return self.dist.shape[0]

    def rows(self, a: int, b: int) -> torch.Tensor:
        return self.dist[a:b].to(torch.float32).contiguous()


class _DistanceRows:
    """Distance rows computed on demand from prepared features, a block of whole tiles at a time.

    The blocks are the rows ``k * length .. (k + 1) * length``, ``length`` being ``block`` rounded down to
    whole tiles (one tile at least); ``rows(a, b)`` returns rows a..b within one block (``b <= end(a)``)."""

    def __init__(self, q, g, metric: str, block: int):
        self.q, self.g, self.metric, self.g_sq = q, g, metric, _gallery_sq(g, metric)
        self.tile = distance_tile(g.shape[0])
        self.length = max(self.tile, block // self.tile * self.tile)
        self.start, self.block = 0, None

    def end(self, a: int) -> int:
        """The end of the block that holds row ``a``."""
        return (a // self.length + 1) * self.length

    def rows(self, a: int, b: int) -> torch.Tensor:
        if self.block is None or not (self.start <= a and b <= self.start + self.block.shape[0]):
            self.block = None  # free the previous block before the next one is made
            self.start = a // self.length * self.length
            n = min(self.length, self.q.shape[0] - self.start)
            out = torch.empty(n, self.g.shape[0], dtype=torch.float32, device=self.q.device)
            self.block = _fill_rows(out, self.q, self.g, self.metric, self.g_sq, self.start, self.tile)
        return self.block[a - self.start : b - self.start]


# --------------------------------------------------------------------------------------------
# the vectorised evaluation


def _order_bits(d: torch.Tensor) -> torch.Tensor:
    """Order-preserving int64 image of float32 values (-0.0 and +0.0 map to the same value)."""
    bits = (d.to(torch.float32) + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)


def sort_keys(d: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """Exact int64 sort keys of a block of distances [q, b] whose columns are gallery items
    ``start .. start + b`` of ``n``: ``bits(d) * n + j``, so that ordering keys orders by (distance,
    gallery index), ties broken by index like a stable argsort of the row."""
    j = torch.arange(start, start + d.shape[1], device=d.device)
    return torch.add(j, _order_bits(d), alpha=n)


def key_distances(keys: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gallery index int64, distance float32) of keys made by :func:`sort_keys` (the exact distance back)."""
    bits = torch.div(keys, n, rounding_mode="floor")
    index = keys - bits * n
    bits = bits.to(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # the map of _order_bits is its own inverse
    return index, bits.view(torch.float32)


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
    keys = sort_keys(d, 0, n)
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
    if dist.ndim != 2:
        raise MetricsError(f"The distance matrix must be 2-D, got shape {tuple(dist.shape)}.")
    _validate_shape(dist.shape, q_pids, g_pids, q_camids, g_camids, protocol, ap, max_rank)


def _validate_shape(shape, q_pids, g_pids, q_camids, g_camids, protocol, ap, max_rank):
    if protocol not in PROTOCOLS:
        raise MetricsError(f"Unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
    if ap not in AP_DEFINITIONS:
        raise MetricsError(f"Unknown AP definition {ap!r}; choose one of {', '.join(AP_DEFINITIONS)}.")
    q, n = shape
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


def _pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Sorted rank rows of several blocks as one [q, P] tensor, padded with the huge value like one block."""
    out = torch.full((sum(p.shape[0] for p in parts), max(p.shape[1] for p in parts)),
                     torch.iinfo(torch.int64).max, dtype=torch.int64, device=parts[0].device)
    row = 0
    for p in parts:
        out[row : row + p.shape[0], : p.shape[1]] = p
        row += p.shape[0]
    return out


def _evaluate_rows(rows, shape, q_pids, g_pids, q_camids, g_camids, *, protocol, ap, max_rank, chunk_size,
                   block, method, device, progress, desc="evaluate") -> Metrics:
    """The evaluation with distance rows from ``rows.rows(a, b)``: queries in fixed chunks of ``chunk_size``
    (the sums), each ranked in blocks of at most ``block`` rows (the memory) that end where the chunk or
    the rows' own block (``rows.end(a)``) ends."""
    _validate_shape(shape, q_pids, g_pids, q_camids, g_camids, protocol, ap, max_rank)
    if chunk_size < 1:
        raise MetricsError(f"The chunk size must be at least 1 query, not {chunk_size}.")
    dev = device
    qp, gp = _labels(q_pids, dev), _labels(g_pids, dev)
    qc, gc = _labels(q_camids, dev), _labels(g_camids, dev)
    same_pid = _SamePid(gp, gc)
    q = shape[0]
    cmc_hits = torch.zeros(max_rank, dtype=torch.float64, device=dev)
    ap_sum = torch.zeros((), dtype=torch.float64, device=dev)
    inp_sum = torch.zeros((), dtype=torch.float64, device=dev)
    evaluated = 0
    bar = tqdm(total=q, desc=desc, unit="query", disable=(not progress) or None, leave=False)  # None: a terminal only
    for s in range(0, q, chunk_size):
        e = min(q, s + chunk_size)
        parts, counts = [], []
        a = s
        while a < e:
            b = min(e, a + block, rows.end(a))
            idx, pos, junk = same_pid.lookup(qp[a:b], qc[a:b], protocol)
            r, n = _positive_ranks(rows.rows(a, b), idx, pos, junk, method)
            parts.append(r)
            counts.append(n)
            bar.update(b - a)
            a = b
        ranks, npos = (parts[0], counts[0]) if len(parts) == 1 else (_pad_cat(parts), torch.cat(counts))
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
    bar.close()
    return _finish(cmc_hits, ap_sum, inp_sum, q, evaluated, protocol, ap, max_rank)


def evaluate_distances(
    dist, q_pids, g_pids, q_camids, g_camids, *,
    protocol: str = "market",
    ap: str = "standard",
    max_rank: int = 20,
    chunk_size: int = 128,
    block_size: int | None = None,
    method: str = "auto",
    progress: bool = False,
) -> Metrics:
    """CMC (1..max_rank), mAP and mINP from a [Q, G] distance matrix (numpy or torch, any device).

    Queries are summed in chunks of ``chunk_size`` rows and ranked in blocks of ``block_size`` rows
    (default: the chunk), so the working memory stays bounded (about 40 bytes per matrix entry of a
    block).  Ties: (distance, gallery index) order, as a stable argsort of each row.  ``method`` picks
    the rank counter (``auto`` is the fast one; the others exist for the tests).
    """
    dist = dist if isinstance(dist, torch.Tensor) else torch.from_numpy(np.asarray(dist))
    if dist.ndim != 2:
        raise MetricsError(f"The distance matrix must be 2-D, got shape {tuple(dist.shape)}.")
    block = block_rows(dist.shape[1], block_size=block_size or chunk_size)
    return _evaluate_rows(_MatrixRows(dist), tuple(dist.shape),
                          q_pids, g_pids, q_camids, g_camids, protocol=protocol, ap=ap, max_rank=max_rank,
                          chunk_size=chunk_size, block=block, method=method, device=dist.device,
                          progress=progress)


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
    block_size: int | None = None,
    max_memory: int | None = None,
    device: str | None = None,
    method: str = "auto",
    progress: bool = False,
) -> Metrics:
    """Evaluate features without the whole distance matrix: distances by blocks of query rows, each
    ranked as it comes.

    The block holds ``block_size`` queries, or as many as ``max_memory`` bytes hold (default: a quarter
    of the memory available, at most 512 MiB; :func:`block_rows`).  Besides the block, memory holds a
    float32 copy of the features (normalised for cosine) and the labels.  The figures equal, bit for
    bit, those of :func:`evaluate_distances` on :func:`pairwise_distance` with the same ``chunk_size``.
    """
    q, g = prepare_features(qf, metric, device), prepare_features(gf, metric, device)
    _check_dims(q, g)
    block = block_rows(g.shape[0], block_size=block_size, max_memory=max_memory)
    rows = _DistanceRows(q, g, metric, block)
    log.debug("evaluation by blocks of %d queries (distance blocks of %d rows) against %d gallery items",
              min(block, chunk_size), rows.length, g.shape[0])
    return _evaluate_rows(rows, (q.shape[0], g.shape[0]), q_pids, g_pids, q_camids, g_camids,
                          protocol=protocol, ap=ap, max_rank=max_rank, chunk_size=chunk_size,
                          block=min(block, chunk_size), method=method, device=q.device, progress=progress)
