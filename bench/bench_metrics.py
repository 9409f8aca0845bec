"""Metric and re-ranking speed on a Market-1501-size problem.

Compares, in the same run: the vectorised CMC/mAP/mINP (``evaluate_distances``) with the classic
per-query loop (``evaluate_reference``, timed on a subset of queries and extrapolated: labelled so),
and times k-reciprocal re-ranking with its peak memory (tracemalloc for Python/NumPy allocations,
ru_maxrss for the process).  ``--quick`` shrinks the problem to run in seconds.  On a machine with
CUDA the vectorised metrics are also timed on the GPU.

    python bench/bench_metrics.py [--quick] [--no-rerank]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from evaluate.metrics import evaluate_distances, evaluate_reference, pairwise_distance
from evaluate.rerank import k_reciprocal_rerank


def problem(q: int, g: int, dim: int, ids: int, cams: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim)).astype(np.float32)
    qp, gp = rng.integers(0, ids, q), rng.integers(0, ids, g)
    qf = centres[qp] + 6.0 * rng.normal(size=(q, dim)).astype(np.float32)
    gf = centres[gp] + 6.0 * rng.normal(size=(g, dim)).astype(np.float32)
    return qf, gf, qp, gp, rng.integers(0, cams, q), rng.integers(0, cams, g)


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small problem (seconds)")
    ap.add_argument("--no-rerank", action="store_true")
    ap.add_argument("--dim", type=int, default=None,
                    help="feature size (default 4096, 256 with --quick); re-ranking memory does not depend "
                         "on it, its distance matrices' compute time does")
    ap.add_argument("--out", default=None, help="results file name (default metrics[-quick].json)")
    ap.add_argument("--ref-queries", type=int, default=300, help="queries timed for the reference loop")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); 1 gives steadier figures on a shared machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    q, g, dim, ids = (337, 1973, 256, 75) if args.quick else (3368, 19732, 4096, 751)
    dim = args.dim or dim
    qf, gf, qp, gp, qc, gc = problem(q, g, dim, ids, 6)
    t_dist, dist = timed(lambda: pairwise_distance(qf, gf, "cosine"))
    t_vec, m = timed(lambda: evaluate_distances(dist, qp, gp, qc, gc), repeat=3)
    n_ref = min(args.ref_queries, q)
    t_ref_sub, _ = timed(lambda: evaluate_reference(dist, qp, gp, qc, gc, queries=range(n_ref)))
    t_ref = t_ref_sub * q / n_ref
    # exactness on the same subset
    sub = evaluate_distances(dist[:n_ref], qp[:n_ref], gp, qc[:n_ref], gc)
    ref = evaluate_reference(dist, qp, gp, qc, gc, queries=range(n_ref))
    assert abs(sub.mAP - ref.mAP) < 1e-12 and sub.cmc_curve == ref.cmc_curve
    res = {"problem": {"queries": q, "gallery": g, "dim": dim, "ids": ids, "cameras": 6},
           "threads": torch.get_num_threads(), "distance_matrix_s": t_dist,
           "metrics_vectorised_s": t_vec, "metrics_reference_s_extrapolated": t_ref,
           "reference_measured_queries": n_ref, "speedup": t_ref / t_vec, "mAP": m.mAP, "rank1": m.cmc[1]}
    rows = [("distance matrix (cosine, torch matmul)", t_dist, ""),
            ("metrics, vectorised (CMC+mAP+mINP)", t_vec, "best of 3"),
            ("metrics, per-query reference", t_ref, f"extrapolated from {n_ref} queries")]
    if torch.cuda.is_available():
        dcu = dist.cuda()
        evaluate_distances(dcu, qp, gp, qc, gc)
        torch.cuda.synchronize()
        t_gpu, _ = timed(lambda: (evaluate_distances(dcu, qp, gp, qc, gc), torch.cuda.synchronize()), repeat=3)
        res["metrics_vectorised_gpu_s"] = t_gpu
        rows.append(("metrics, vectorised on GPU", t_gpu, torch.cuda.get_device_name()))
    if not args.no_rerank:
        tracemalloc.start()
        t_rr, rr = timed(lambda: k_reciprocal_rerank(qf, gf, metric="euclidean", progress=False))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
        m_rr = evaluate_distances(rr, qp, gp, qc, gc)
        m_eu = evaluate_distances(pairwise_distance(qf, gf, "euclidean"), qp, gp, qc, gc)
        res.update(rerank_s=t_rr, rerank_tracemalloc_peak_mib=peak / 2**20, process_maxrss_mib=maxrss,
                   rerank_dense_matrix_mib=(q + g) ** 2 * 4 / 2**20, mAP_euclidean=m_eu.mAP,
                   mAP_reranked=m_rr.mAP)
        rows.append(("k-reciprocal re-ranking (k1=20,k2=6,l=0.3)", t_rr,
                     f"tracemalloc peak {peak / 2**20:.0f} MiB, maxrss {maxrss:.0f} MiB "
                     f"(one dense N x N float32: {(q + g) ** 2 * 4 / 2**20:.0f} MiB)"))
    print(f"Market-size metrics ({q} x {g}, {dim}-d, {ids} ids, 6 cams, {torch.get_num_threads()} threads)")
    for name, t, note in rows:
        print(f"  {name:44s} {t:9.3f} s  {note}")
    print(f"  speed-up vectorised vs reference: {t_ref / t_vec:.1f}x  (mAP {100 * m.mAP:.2f}%)")
    if "mAP_reranked" in res:
        print(f"  mAP euclidean {100 * res['mAP_euclidean']:.2f}% -> re-ranked {100 * res['mAP_reranked']:.2f}%")
    out = Path(__file__).resolve().parent / "results" / (args.out or ("metrics-quick.json" if args.quick else "metrics.json"))
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
