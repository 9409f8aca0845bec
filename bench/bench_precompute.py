"""End-to-end precompute of the synthetic dataset with the `synthetic` estimator: 1 worker vs 2 workers.

Generates the synthetic dataset into a temporary data root (the default size, or a small one with
``--quick``), then builds its DSAP store twice from scratch, with ``--workers 1`` and ``--workers 2``,
and checks that both stores hold identical arrays.

    python bench/bench_precompute.py [--quick] [--ids N] [--shard-size N] [--keep ROOT]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from data.io import atomic_write_json
from data.store import DSAPStore, store_dir
from precompute.runner import PrecomputeConfig, run_precompute


def same_arrays(a: Path, b: Path) -> bool:
    x, y = DSAPStore(a), DSAPStore(b)
    return x.keys == y.keys and all(
        np.array_equal(x.get(k), y.get(k)) and np.array_equal(x.get_written(k), y.get_written(k)) for k in x.keys
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small dataset, runs in seconds")
    ap.add_argument("--ids", type=int, default=None, help="identities to generate (default: the generator's)")
    ap.add_argument("--shard-size", type=int, default=None)
    ap.add_argument("--compression", default="lzf", choices=["none", "lzf", "gzip"])
    ap.add_argument("--root", type=Path, default=None, help="reuse/keep the data root here instead of a temporary one")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from data.synthetic import generate

    root = args.root or Path(tempfile.mkdtemp(prefix="bench_precompute_"))
    gen = {"num_ids": args.ids or 24} if args.quick or args.ids else {}
    try:
        t0 = time.perf_counter()
        if not (root / "synthetic" / "synthetic.json").exists():
            generate(root / "synthetic", progress=False, preview=False, **gen)
        gen_s = time.perf_counter() - t0
        rows = []
        for workers in (1, 2):
            tag = f"w{workers}"
            shutil.rmtree(store_dir(root, "synthetic", "synthetic", tag), ignore_errors=True)
            cfg = PrecomputeConfig(dataset="synthetic", root=root, estimator="synthetic", workers=workers, tag=tag,
                                   compression=None if args.compression == "none" else args.compression)
            cfg.shard_size = args.shard_size or (50 if args.quick else 200)  # several shards, so 2 workers can split
            t0 = time.perf_counter()
            s = run_precompute(cfg)
            wall = time.perf_counter() - t0
            n_images = s["num_images"]
            rows.append({"workers": workers, "images": n_images, "wall_s": round(wall, 2),
                         "images_per_s": round(n_images / wall, 1), "found": s["num_found"],
                         "failures": len(s["failures"]), "shard_size": cfg.shard_size})
        same = same_arrays(store_dir(root, "synthetic", "synthetic", "w1"), store_dir(root, "synthetic", "synthetic", "w2"))
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"precompute synthetic/synthetic ({rows[0]['images']} images, generated in {gen_s:.1f} s, "
          f"shards of {rows[0]['shard_size']}, {args.compression})")
    print(f"{'workers':>7} {'wall s':>8} {'images/s':>9} {'found':>6} {'failed':>6}")
    for r in rows:
        print(f"{r['workers']:>7} {r['wall_s']:>8} {r['images_per_s']:>9} {r['found']:>6} {r['failures']:>6}")
    print(f"speed-up 2 vs 1 worker: {rows[0]['wall_s'] / rows[1]['wall_s']:.2f}x; identical arrays: {same}")
    out = ROOT / "bench" / "results" / "precompute.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"benchmark": "precompute", "quick": args.quick, "generate_s": round(gen_s, 2),
                            "compression": args.compression, "rows": rows, "identical": same})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
