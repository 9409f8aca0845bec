"""k-reciprocal re-ranking: the memory-bounded version against the original dense code."""

import numpy as np
import pytest

from evaluate.metrics import MetricsError, evaluate_distances, pairwise_distance
from evaluate.rerank import k_reciprocal_rerank
from tests.oracles import encode_gather_all, rerank_reference


def _features(seed, q=24, g=70, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    qp, gp = rng.integers(0, 8, q), rng.integers(0, 8, g)
    qf = centres[qp] + 0.8 * rng.normal(size=(q, dim))
    gf = centres[gp] + 0.8 * rng.normal(size=(g, dim))
    return qf.astype(np.float32), gf.astype(np.float32), qp, gp


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k1,k2", [(20, 6), (5, 1), (7, 3)])
def test_matches_dense_reference(seed, metric, k1, k2):
    qf, gf, _, _ = _features(seed)
    ours = k_reciprocal_rerank(qf, gf, k1=k1, k2=k2, metric=metric, chunk_size=13, progress=False)
    ref = rerank_reference(
        pairwise_distance(qf, gf, metric).numpy(),
        pairwise_distance(qf, qf, metric).numpy(),
        pairwise_distance(gf, gf, metric).numpy(),
        k1=k1, k2=k2,
    )
    assert ours.shape == (len(qf), len(gf)) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_rerank_changes_and_helps_clustered_data():
    qf, gf, qp, gp = _features(5, q=30, g=120)
    base = pairwise_distance(qf, gf, "euclidean").numpy()
    rr = k_reciprocal_rerank(qf, gf, progress=False)
    assert not np.allclose(rr, base)
    cams_q, cams_g = np.zeros(len(qp)), np.ones(len(gp))
    before = evaluate_distances(base, qp, gp, cams_q, cams_g).mAP
    after = evaluate_distances(rr, qp, gp, cams_q, cams_g).mAP
    assert after >= before - 0.02  # re-ranking must not wreck a well-clustered problem


def test_bad_parameters():
    qf, gf, _, _ = _features(0)
    with pytest.raises(MetricsError):
        k_reciprocal_rerank(qf, gf, k1=0, progress=False)
    with pytest.raises(MetricsError, match="dimensions"):
        k_reciprocal_rerank(qf, gf[:, :4], progress=False)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_blocked_encoding_equals_the_previous_one(metric):
    """_encode in small blocks (forced here) gives the weights of the previous all-at-once gather."""
    import torch

    from evaluate import rerank as rr
    from evaluate.metrics import prepare_features

    qf, gf, _, _ = _features(3, q=20, g=60, dim=40)
    feats = torch.cat([prepare_features(qf, metric), prepare_features(gf, metric)])
    rank, rowmax, _ = rr._neighbours(feats, metric, 20, 21, 16, False)
    rows, cols = rr._expansion_sets(rank, 20)
    new = rr._encode(feats, metric, rows, cols, rowmax, 80, block_bytes=40 * 4 * 7)  # 7 pairs per block
    old = encode_gather_all(feats, metric, rows, cols, rowmax, 80)
    assert new.nnz == old.nnz > 0
    np.testing.assert_allclose(new.toarray(), old.toarray(), atol=1e-6)


def test_refuses_with_the_memory_it_needs_where_it_does_not_fit():
    from evaluate.rerank import check_fits, memory_needed

    qf, gf, _, _ = _features(0)
    need = memory_needed(len(qf), len(gf), qf.shape[1])
    out = k_reciprocal_rerank(qf, gf, max_memory=need, progress=False)  # fits exactly: exact result
    assert out.shape == (len(qf), len(gf))
    with pytest.raises(MetricsError, match=r"needs about 0\.\d GiB of memory but 0\.\d GiB is allowed"):
        k_reciprocal_rerank(qf, gf, max_memory=need - 1, progress=False)
    # MSMT17 size fits a 24 GB machine; a million-crop gallery with 10,000 queries does not
    assert memory_needed(11659, 82161, 512) < 12 * 2**30
    with pytest.raises(MetricsError, match=r"10,000 queries against 1,000,000 gallery items \(512-d\) needs about "
                                           r"\d+\.\d GiB"):
        check_fits(10_000, 1_000_000, 512, max_memory=24 * 2**30)
