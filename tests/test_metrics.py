"""Metrics: hand-made cases with known answers and agreement with the per-query reference."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from evaluate.metrics import (
    MetricsError,
    evaluate_distances,
    evaluate_features,
    pairwise_distance,
)
from tests.oracles import evaluate_reference

METHODS = ("auto", "buckets", "searchsorted")


def _hand_case():
    # query 0: pid 1 cam 0; query 1: pid 9 (absent from the gallery)
    g_pids = [1, 2, 1, 3, 1]
    g_cams = [0, 1, 1, 0, 2]
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]], np.float32)
    return dist, [1, 9], g_pids, [0, 0], g_cams


@pytest.mark.parametrize("method", METHODS)
def test_junk_removed_and_unmatched_query_skipped(method):
    dist, qp, gp, qc, gc = _hand_case()
    m = evaluate_distances(dist, qp, gp, qc, gc, method=method)
    # after removing the same-pid same-camera item: [pid2, pid1, pid3, pid1] -> hits at 1 and 3
    assert m.num_queries == 2 and m.num_evaluated == 1 and m.num_skipped == 1
    assert m.cmc[1] == 0.0 and m.cmc[5] == 1.0
    assert m.cmc_curve[:3] == [0.0, 1.0, 1.0]
    assert m.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m.mINP == pytest.approx(2 / 4)


@pytest.mark.parametrize("method", METHODS)
def test_market_trapezoid_ap(method):
    dist, qp, gp, qc, gc = _hand_case()
    m = evaluate_distances(dist, qp, gp, qc, gc, ap="market", method=method)
    # compute_AP.m: hit 1 at rank 2: (0 + 1/2)/2 * 1/2; hit 2 at rank 4: (1/3 + 2/4)/2 * 1/2
    assert m.mAP == pytest.approx(0.125 + (1 / 3 + 0.5) / 4)
    assert m.ap == "market" and "trapezoid" in m.to_dict()["ap_definition"]


@pytest.mark.parametrize("method", METHODS)
def test_ties_break_by_gallery_index(method):
    # a negative and a positive at the same distance: the lower gallery index ranks first
    dist = np.array([[0.5, 0.5, 0.9]], np.float32)
    first = evaluate_distances(dist, [1], [1, 2, 3], [0], [1, 1, 1], method=method)
    second = evaluate_distances(dist, [1], [2, 1, 3], [0], [1, 1, 1], method=method)
    assert first.cmc[1] == 1.0 and first.mAP == 1.0
    assert second.cmc[1] == 0.0 and second.mAP == 0.5
    # -0.0 and +0.0 are equal distances: index decides too
    dz = np.array([[0.0, -0.0, 1.0]], np.float32)
    z = evaluate_distances(dz, [1], [2, 1, 3], [0], [1, 1, 1], method=method)
    assert z.cmc[1] == 0.0


def test_cuhk01_single_shot_keeps_same_camera_items():
    dist = np.array([[0.1, 0.2]], np.float32)
    with pytest.raises(MetricsError):  # market: the only match is junk
        evaluate_distances(dist, [1], [1, 2], [0], [0, 1], protocol="market")
    m = evaluate_distances(dist, [1], [1, 2], [0], [0, 1], protocol="cuhk01-single-shot")
    assert m.cmc[1] == 1.0 and m.protocol == "cuhk01-single-shot" and m.num_skipped == 0


def test_every_dataset_protocol_is_known():
    """Each adapter's protocol is one the metrics evaluate (CUHK03's new protocol used to be refused)."""
    from data.datasets import DATASETS
    from evaluate.metrics import PROTOCOLS

    assert {name: DATASETS.get(name).protocol for name in DATASETS if DATASETS.get(name).protocol not in PROTOCOLS} == {}


@pytest.mark.parametrize("method", METHODS)
def test_cuhk03_new_protocol_removes_same_camera_junk_like_market(method):
    dist, qp, gp, qc, gc = _hand_case()
    market = evaluate_distances(dist, qp, gp, qc, gc, method=method)
    cuhk03 = evaluate_distances(dist, qp, gp, qc, gc, protocol="cuhk03-new", method=method)
    assert cuhk03.protocol == "cuhk03-new" and cuhk03.num_skipped == 1
    assert (cuhk03.cmc_curve, cuhk03.mAP, cuhk03.mINP) == (market.cmc_curve, market.mAP, market.mINP)
    ref = evaluate_reference(dist, qp, gp, qc, gc, protocol="cuhk03-new")
    assert ref.mAP == pytest.approx(market.mAP)


def _random_problem(seed, q=60, g=400, ids=25, cams=4):
    rng = np.random.default_rng(seed)
    dist = rng.random((q, g)).astype(np.float32)
    if seed % 2:
        dist = np.round(dist * 16) / 16  # many exact ties
    if seed % 3 == 0:
        dist[:3] = 0.25  # whole rows tied
        dist[3, :5] = np.inf
    return (dist, rng.integers(0, ids, q), rng.integers(0, ids, g),
            rng.integers(0, cams, q), rng.integers(0, cams, g))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("protocol", ["market", "cuhk01-single-shot"])
@pytest.mark.parametrize("ap", ["standard", "market"])
def test_agrees_with_reference(seed, protocol, ap):
    dist, qp, gp, qc, gc = _random_problem(seed)
    ref = evaluate_reference(dist, qp, gp, qc, gc, protocol=protocol, ap=ap)
    for method in METHODS:
        m = evaluate_distances(dist, qp, gp, qc, gc, protocol=protocol, ap=ap, method=method,
                               chunk_size=7)
        assert m.num_evaluated == ref.num_evaluated and m.num_skipped == ref.num_skipped
        np.testing.assert_allclose(m.cmc_curve, ref.cmc_curve, atol=1e-12)
        assert m.mAP == pytest.approx(ref.mAP, abs=1e-12)
        assert m.mINP == pytest.approx(ref.mINP, abs=1e-12)


def test_torch_input_and_nan():
    dist, qp, gp, qc, gc = _random_problem(1)
    a = evaluate_distances(torch.from_numpy(dist), qp, gp, qc, gc)
    b = evaluate_distances(dist.astype(np.float64), qp, gp, qc, gc)
    assert a.mAP == b.mAP
    dist[2, 3] = np.nan
    for method in METHODS:
        with pytest.raises(MetricsError, match="NaN"):
            evaluate_distances(dist, qp, gp, qc, gc, method=method)


def test_bad_inputs():
    dist, qp, gp, qc, gc = _hand_case()
    with pytest.raises(MetricsError, match="Labels"):
        evaluate_distances(dist, qp, gp[:-1], qc, gc[:-1] + [0, 0])
    with pytest.raises(MetricsError, match="protocol"):
        evaluate_distances(dist, qp, gp, qc, gc, protocol="nope")
    with pytest.raises(MetricsError, match="same width|dimensions"):
        pairwise_distance(np.ones((2, 3)), np.ones((2, 4)))


def test_distances_match_scipy():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 12)), rng.normal(size=(11, 12))
    np.testing.assert_allclose(pairwise_distance(q, g, "euclidean", chunk_size=3).numpy(),
                               cdist(q, g), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pairwise_distance(q, g, "cosine").numpy(),
                               cdist(q, g, "cosine"), atol=1e-5)
    qc = q.copy()
    pairwise_distance(qc, g, "cosine")
    assert np.array_equal(qc, q)  # never normalised in place


def test_evaluate_features_equals_distance_path():
    rng = np.random.default_rng(3)
    qf, gf = rng.normal(size=(20, 8)), rng.normal(size=(80, 8))
    qp, gp = rng.integers(0, 6, 20), rng.integers(0, 6, 80)
    qc, gc = rng.integers(0, 3, 20), rng.integers(0, 3, 80)
    for metric in ("cosine", "euclidean"):
        a = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric)
        b = evaluate_reference(pairwise_distance(qf, gf, metric), qp, gp, qc, gc)
        assert a.mAP == pytest.approx(b.mAP) and a.cmc == b.cmc


# --------------------------------------------------------------------------------------------
# streaming: blocks of any size give the one-shot figures bit for bit


def _tied_features(seed, q=70, g=300, dim=12, ids=15, cams=3):
    """Features with exact ties: coarse values, duplicated gallery rows and queries equal to gallery rows."""
    rng = np.random.default_rng(seed)
    gf = np.round(rng.normal(size=(g, dim)) * 2) / 2
    gf[1::7] = gf[0::7][: len(gf[1::7])]  # duplicated gallery rows: tied distances for every query
    qf = np.round(rng.normal(size=(q, dim)) * 2) / 2
    qf[:5] = gf[10:15]  # a query equal to a gallery row: distance 0 (and -0.0 / +0.0)
    return (qf.astype(np.float32), gf.astype(np.float32), rng.integers(0, ids, q), rng.integers(0, ids, g),
            rng.integers(0, cams, q), rng.integers(0, cams, g))


def _same_bits(a, b):
    return (a.cmc_curve, a.mAP, a.mINP, a.num_evaluated, a.num_skipped) == \
        (b.cmc_curve, b.mAP, b.mINP, b.num_evaluated, b.num_skipped)


@pytest.mark.parametrize("protocol", ["market", "cuhk03-new", "cuhk01-single-shot"])
@pytest.mark.parametrize("ap", ["standard", "market"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_streaming_equals_one_shot_bit_for_bit(protocol, ap, metric):
    for seed in range(2):
        qf, gf, qp, gp, qc, gc = _tied_features(seed)
        one_shot = evaluate_distances(pairwise_distance(qf, gf, metric), qp, gp, qc, gc, protocol=protocol,
                                      ap=ap, chunk_size=256)
        assert one_shot.num_evaluated > 0
        for block in (1, 2, 3, 7, 64, None):
            m = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, protocol=protocol, ap=ap,
                                  block_size=block)
            assert _same_bits(m, one_shot), (seed, block)
        for method in METHODS:  # blocks that straddle the summing chunks, each rank counter
            m = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, protocol=protocol, ap=ap,
                                  block_size=3, chunk_size=11, method=method)
            ref = evaluate_distances(pairwise_distance(qf, gf, metric), qp, gp, qc, gc, protocol=protocol,
                                     ap=ap, chunk_size=11, method=method)
            assert _same_bits(m, ref), method


@pytest.mark.parametrize("seed", range(4))
def test_distance_matrix_blocks_equal_one_shot(seed):
    """evaluate_distances ranked in blocks smaller than its chunks: the same bits (ties, inf rows, junk)."""
    dist, qp, gp, qc, gc = _random_problem(seed)
    for ap in AP:
        whole = evaluate_distances(dist, qp, gp, qc, gc, ap=ap, chunk_size=32)
        for block in (1, 5, 32):
            assert _same_bits(evaluate_distances(dist, qp, gp, qc, gc, ap=ap, chunk_size=32, block_size=block),
                              whole)
        ref = evaluate_reference(dist, qp, gp, qc, gc, ap=ap)
        assert whole.mAP == pytest.approx(ref.mAP, abs=1e-12)


AP = ("standard", "market")


def test_streaming_holds_a_block_never_the_matrix(monkeypatch):
    """With tiles of 64 rows (a gallery made 'large' by a small tile budget) and a small memory budget, the
    distances are made one tile at a time, each once, and the figures are still the one-shot ones."""
    from evaluate import metrics

    qf, gf, qp, gp, qc, gc = _tied_features(3, q=700, g=200)
    one_shot = evaluate_distances(pairwise_distance(qf, gf), qp, gp, qc, gc, chunk_size=256)
    monkeypatch.setattr(metrics, "TILE_BYTES", 64 * 200 * 4)
    assert metrics.distance_tile(200) == 64
    made = []
    fill = metrics._fill_rows
    monkeypatch.setattr(metrics, "_fill_rows", lambda out, *a: made.append(out.shape[0]) or fill(out, *a))
    budget = 64 * 200 * 4 + 10 * 200 * metrics.RANK_BYTES_PER_ENTRY  # one tile and 10 rows
    assert metrics.block_rows(200, max_memory=budget) == 10
    m = evaluate_features(qf, gf, qp, gp, qc, gc, max_memory=budget)
    assert _same_bits(m, one_shot)
    assert made and max(made) == 64 and sum(made) == 700  # one tile at a time, each row computed once
    made.clear()
    m = evaluate_features(qf, gf, qp, gp, qc, gc, block_size=150)  # blocks of two whole tiles
    assert _same_bits(m, one_shot) and max(made) == 128 and sum(made) == 700


def test_block_size_and_memory_options():
    from evaluate.metrics import available_memory, block_rows, distance_tile, memory_budget

    assert distance_tile(82161) == 512 and distance_tile(10**6) == 64 and distance_tile(10) == 2048
    avail = available_memory()
    assert avail is None or avail > 0
    assert 64 << 20 <= memory_budget() <= 512 << 20
    assert block_rows(1000, block_size=3) == 3
    assert block_rows(10**6, max_memory=1) == 1  # never less than one row
    assert block_rows(10**5, max_memory=1 << 30) < block_rows(10**4, max_memory=1 << 30)
    for bad in ({"block_size": 0}, {"max_memory": 0}):
        with pytest.raises(MetricsError, match="must be"):
            block_rows(100, **bad)
