"""Evaluation and re-ranking on Market-1501-size problems, each comparison in one run.

Evaluation (quiet, then under ``--load`` busy processes the benchmark starts itself): the vectorised
CMC/mAP/mINP (``evaluate_distances``) against the classic per-query loop (``evaluate_reference``, timed on
``--ref-queries`` queries and extrapolated: labelled so), at the default thread policy
(``data.runtime``: ``OMP_WAIT_POLICY=PASSIVE`` set before torch starts, threads = available cores).
With ``--cython``, torchreid's Cython evaluator is timed in the same run on the same distances: no registry
package ships it compiled, and torchreid's own sdists (0.2.2-0.2.5) leave ``rank_cylib/rank_cy.pyx`` out,
but fast-reid's PyPI wheel (``fastreid==1.4.0``) carries its port of it (``fastreid/evaluation/rank_cylib/
rank_cy.pyx``, "credits: torchreid"; the same argsort + per-query Cython loop).  The benchmark downloads that
wheel, compiles ``rank_cy`` with Cython into ``bench/.cache/`` (bench-only: nothing is installed into the
environment; needs the package index and a C compiler) and checks its CMC and mAP against ours.

Re-ranking (``--rerank``): k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3, euclidean) at N = 10,000
(Market's query/gallery proportion) with 512/2048/4096-d features and at Market size (3368 + 19732) with
4096-d, each implementation in its own subprocess so that its peak RSS (``ru_maxrss``, including the
Python/torch baseline and the features) is its own:

* ``ours``: ``evaluate.rerank.k_reciprocal_rerank``;
* ``previous``: the same with the previous ``_encode`` (full feature vectors of every pair gathered at
  once), the reference the values are compared with (max abs diff); run where its projected memory
  fits (``--previous-max-gib``);
* ``torchreid``: torchreid's ``re_ranking`` on the three distance matrices, when ``--torchreid`` names its
  ``rerank.py`` (e.g. from ``pip download --no-deps torchreid==0.2.5``; bench-only, never installed
  here); at N = 10,000 only (its dense N x N arrays need > 8 GiB at Market size).

    python bench/bench_metrics.py [--quick] [--cython] [--rerank] [--torchreid PATH/rerank.py] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from data.runtime import quiet_openmp

quiet_openmp()  # before torch starts (the entry-point rule)

import numpy as np
import torch

from data.io import atomic_write_json
from data.runtime import apply_threads
from evaluate.metrics import evaluate_distances, pairwise_distance
from tests.oracles import encode_gather_all, evaluate_reference

MARKET = (3368, 19732)


def problem(q: int, g: int, dim: int, ids: int, cams: int, seed: int = 0):
    """Clustered float32 features (generated as float32: no float64 transient) and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    qp, gp = rng.integers(0, ids, q), rng.integers(0, ids, g)
    qf = rng.standard_normal((q, dim), dtype=np.float32)
    qf *= 6.0
    qf += centres[qp]
    gf = rng.standard_normal((g, dim), dtype=np.float32)
    gf *= 6.0
    gf += centres[gp]
    return qf, gf, qp, gp, rng.integers(0, cams, q), rng.integers(0, cams, g)


FASTREID = "fastreid==1.4.0"
RANK_CY_PYX = "fastreid/evaluation/rank_cylib/rank_cy.pyx"


def build_rank_cy(cache: Path):
    """torchreid's Cython evaluator (fast-reid's port, from its PyPI wheel) compiled into ``cache``; the module."""
    import glob
    import importlib.util
    import zipfile

    cache.mkdir(parents=True, exist_ok=True)
    if not glob.glob(str(cache / "rank_cy*.so")):
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        wheels = glob.glob(str(cache / "fastreid-*.whl"))
        if not wheels:
            subprocess.run(pip + ["download", "--no-deps", FASTREID, "-d", str(cache)], check=True)
            wheels = glob.glob(str(cache / "fastreid-*.whl"))
        with zipfile.ZipFile(wheels[0]) as z:
            (cache / "rank_cy.pyx").write_bytes(z.read(RANK_CY_PYX))
        env = dict(os.environ)
        try:
            import Cython  # noqa: F401
        except ImportError:
            subprocess.run(pip + ["install", "--target", str(cache / "cython"), "cython"], check=True)
            env["PYTHONPATH"] = os.pathsep.join([str(cache / "cython"), env.get("PYTHONPATH", "")])
        build = ("from setuptools import setup, Extension; from Cython.Build import cythonize; import numpy as np; "
                 "setup(script_args=['build_ext', '--inplace'], ext_modules=cythonize([Extension('rank_cy', "
                 "['rank_cy.pyx'], include_dirs=[np.get_include()], extra_compile_args=['-O3'])], quiet=True))")
        subprocess.run([sys.executable, "-c", build], cwd=cache, env=env, check=True, capture_output=True)
    built = glob.glob(str(cache / "rank_cy*.so"))
    spec = importlib.util.spec_from_file_location("rank_cy", built[0])  # the compiled module, by its file
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def load_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)


def bench_evaluation(args) -> dict:
    q, g, ids = (337, 1973, 75) if args.quick else (*MARKET, 751)
    qf, gf, qp, gp, qc, gc = problem(q, g, 128, ids, 6)
    dist = pairwise_distance(qf, gf, "cosine")
    n_ref = min(args.ref_queries, q)
    sub = evaluate_distances(dist[:n_ref], qp[:n_ref], gp, qc[:n_ref], gc)
    ref = evaluate_reference(dist, qp, gp, qc, gc, queries=range(n_ref))
    assert abs(sub.mAP - ref.mAP) < 1e-12 and sub.cmc_curve == ref.cmc_curve
    rank_cy = build_rank_cy(ROOT / "bench" / ".cache" / "rank_cy") if args.cython else None
    dist_np = np.ascontiguousarray(dist.numpy() if isinstance(dist, torch.Tensor) else dist, dtype=np.float32)
    agreement = None
    if rank_cy is not None:
        full = evaluate_distances(dist, qp, gp, qc, gc, max_rank=50)
        cy = rank_cy.evaluate_cy(dist_np, qp, gp, qc, gc, 50)
        cy_cmc, cy_map = np.asarray(cy[0], dtype=np.float64), float(np.mean(cy[1]))
        agreement = {"mAP_abs_diff": abs(cy_map - full.mAP),
                     "cmc_max_abs_diff": float(np.max(np.abs(cy_cmc - np.asarray(full.cmc_curve[:50]))))}
        assert agreement["mAP_abs_diff"] < 1e-5 and agreement["cmc_max_abs_diff"] < 1e-5, agreement
    rows = []
    for load in (0, args.load):
        procs = load_processes(load)
        try:
            time.sleep(1.0 if load else 0.0)
            t_vec, m = timed(lambda: evaluate_distances(dist, qp, gp, qc, gc), repeat=3)
            t_sub, _ = timed(lambda: evaluate_reference(dist, qp, gp, qc, gc, queries=range(n_ref)))
            t_cy = (timed(lambda: rank_cy.evaluate_cy(dist_np, qp, gp, qc, gc, 50), repeat=2)[0]
                    if rank_cy is not None else None)
            la = os.getloadavg()[0]
        finally:
            stop(procs)
        t_ref = t_sub * q / n_ref
        rows.append({"load": f"{load} busy" if load else "quiet", "loadavg_1min": la,
                     "metrics_vectorised_s": t_vec, "metrics_reference_s_extrapolated": t_ref,
                     "reference_measured_queries": n_ref, "speedup_vs_reference": t_ref / t_vec,
                     "metrics_torchreid_cython_s": t_cy, "speedup_vs_cython": t_cy / t_vec if t_cy else None,
                     "mAP": m.mAP})
    res = {"problem": {"queries": q, "gallery": g, "ids": ids, "cameras": 6},
           "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "cython": {"source": f"{FASTREID} wheel, {RANK_CY_PYX} (torchreid's evaluator, ported)",
                      "agreement": agreement} if rank_cy is not None else None,
           "rows": rows}
    if torch.cuda.is_available():
        dcu = dist.cuda()
        evaluate_distances(dcu, qp, gp, qc, gc)
        torch.cuda.synchronize()
        t_gpu, _ = timed(lambda: (evaluate_distances(dcu, qp, gp, qc, gc), torch.cuda.synchronize()), repeat=3)
        res["metrics_vectorised_gpu_s"] = t_gpu
    print(f"evaluation, {q} x {g}, {ids} ids, 6 cameras, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"  {'load':8} {'loadavg':>7} {'vectorised s':>12} {'Cython s':>9} {'ratio':>6} {'per-query s':>12} {'ratio':>6}")
    for r in rows:
        cy = (f"{r['metrics_torchreid_cython_s']:9.3f} {r['speedup_vs_cython']:5.1f}x" if r["speedup_vs_cython"]
              else f"{'-':>9} {'-':>6}")
        print(f"  {r['load']:8} {r['loadavg_1min']:7.2f} {r['metrics_vectorised_s']:12.3f} {cy} "
              f"{r['metrics_reference_s_extrapolated']:12.3f} {r['speedup_vs_reference']:5.1f}x"
              f"   (per-query extrapolated from {n_ref} queries)")
    return res


# ------------------------------------------------------------------------------- re-ranking


def rerank_one(spec: dict) -> dict:
    """One re-ranking (inside its own subprocess): time, peak RSS, output saved for the comparison."""
    q, g, dim, impl = spec["q"], spec["g"], spec["dim"], spec["impl"]
    qf, gf, *_ = problem(q, g, dim, max(10, (q + g) // 30), 6)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if impl == "torchreid":
        import importlib.util

        s = importlib.util.spec_from_file_location("torchreid_rerank", spec["torchreid"])
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
        q_g = pairwise_distance(qf, gf, "euclidean").numpy()
        q_q = pairwise_distance(qf, qf, "euclidean").numpy()
        g_g = pairwise_distance(gf, gf, "euclidean").numpy()
        out = mod.re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)
    else:
        import evaluate.rerank as rr

        if impl == "previous":
            rr._encode = encode_gather_all
        out = rr.k_reciprocal_rerank(qf, gf, metric="euclidean", progress=False)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(spec["save"], np.asarray(out, dtype=np.float32))
    return {"impl": impl, "n": q + g, "queries": q, "gallery": g, "dim": dim, "seconds": seconds,
            "peak_rss_mib": peak, "rss_before_mib": base, "threads": torch.get_num_threads()}


def previous_projected_gib(n: int, dim: int) -> float:
    """The previous ``_encode``'s two gathered blocks (about 16 expansion pairs per row on these
    problems, at most 2^20 pairs at once)."""
    return 2 * min(16 * n, 1 << 20) * dim * 4 / 2**30


def bench_rerank(args) -> dict:
    cases = [(337, 1973, 256)] if args.quick else []
    if not args.quick:
        q10 = round(10000 * MARKET[0] / sum(MARKET))
        cases = [(q10, 10000 - q10, d) for d in (512, 2048, 4096)] + [(*MARKET, 4096)]
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for q, g, dim in cases:
            impls = ["ours"]
            if previous_projected_gib(q + g, dim) <= args.previous_max_gib:
                impls.append("previous")
            else:
                notes.append(f"previous not run at N={q + g}, {dim}-d: its gathered blocks alone are "
                             f"~{previous_projected_gib(q + g, dim):.1f} GiB (> --previous-max-gib)")
            if args.torchreid and q + g <= 10000:
                impls.append("torchreid")
            elif args.torchreid:
                notes.append(f"torchreid not run at N={q + g}: its dense original_dist, V and initial_rank "
                             f"alone are {(q + g) ** 2 * 12 / 2**30:.1f} GiB")
            outs = {}
            for impl in impls:
                spec = {"q": q, "g": g, "dim": dim, "impl": impl, "torchreid": args.torchreid,
                        "save": str(Path(tmp) / f"{impl}.npy")}
                cmd = [sys.executable, __file__, "--rerank-one", json.dumps(spec)]
                p = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if p.returncode != 0:
                    raise SystemExit(f"re-ranking {spec} failed:\n{p.stderr[-3000:]}")
                r = json.loads(p.stdout.strip().splitlines()[-1])
                r["loadavg_1min"] = os.getloadavg()[0]
                outs[impl] = np.load(spec["save"])
                os.unlink(spec["save"])
                rows.append(r)
                print(f"  re-rank N={r['n']:5d} {dim:4d}-d {impl:9} {r['seconds']:8.1f} s "
                      f"{r['peak_rss_mib']:8.0f} MiB peak RSS", flush=True)
            for impl in impls[1:]:
                diff = float(np.abs(outs["ours"] - outs[impl]).max())
                for r in rows:
                    if r["n"] == q + g and r["dim"] == dim and r["impl"] == impl:
                        r["max_abs_diff_vs_ours"] = diff
            del outs
    print(f"\nk-reciprocal re-ranking (k1=20, k2=6, lambda=0.3, euclidean), {torch.get_num_threads()} threads")
    print(f"  {'N':>6} {'Q':>5} {'dim':>5} {'impl':10} {'time s':>8} {'peak RSS MiB':>12} {'max|diff| vs ours':>18}")
    for r in rows:
        d = r.get("max_abs_diff_vs_ours")
        print(f"  {r['n']:6d} {r['queries']:5d} {r['dim']:5d} {r['impl']:10} {r['seconds']:8.1f} "
              f"{r['peak_rss_mib']:12.0f} {'' if d is None else f'{d:.2e}':>18}")
    for n in notes:
        print("  note:", n)
    return {"rows": rows, "notes": notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small problems (seconds)")
    ap.add_argument("--rerank", action="store_true", help="also the re-ranking table (minutes)")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation table")
    ap.add_argument("--cython", action="store_true",
                    help="also time torchreid's Cython evaluator (fast-reid's port, built from its PyPI wheel)")
    ap.add_argument("--torchreid", default=None, help="torchreid's utils/rerank.py for the re-ranking reference")
    ap.add_argument("--previous-max-gib", type=float, default=5.0,
                    help="run the previous re-ranking only where its gathered blocks fit in this")
    ap.add_argument("--load", type=int, default=2, help="busy processes for the loaded evaluation row")
    ap.add_argument("--ref-queries", type=int, default=300, help="queries timed for the per-query loop")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the thread policy)")
    ap.add_argument("--out", default=None, help="evaluation results (default bench/results/metrics[-quick].json)")
    ap.add_argument("--rerank-out", default=None, help="re-ranking results (default bench/results/rerank[-quick].json)")
    ap.add_argument("--rerank-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    apply_threads(args.threads)
    if args.rerank_one:
        print(json.dumps(rerank_one(json.loads(args.rerank_one))))
        return
    suffix = "-quick" if args.quick else ""
    tables = []
    if not args.no_eval:
        tables.append(("metrics", bench_evaluation, args.out or ROOT / "bench" / "results" / f"metrics{suffix}.json"))
    if args.rerank:
        tables.append(("rerank", bench_rerank, args.rerank_out or ROOT / "bench" / "results" / f"rerank{suffix}.json"))
    for name, run, out in tables:  # one JSON per table, each with the load it ran under
        res: dict = {"benchmark": name, "quick": args.quick, "torch": torch.__version__,
                     "command": "python bench/bench_metrics.py " + " ".join(sys.argv[1:]),
                     "loadavg_before": os.getloadavg()}
        res["evaluation" if name == "metrics" else "rerank"] = run(args)
        res["loadavg_after"] = os.getloadavg()
        res["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, res)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
