"""DSAP store throughput: shard writing and random reads by key, without vs with compression.

Writes the same DSAP arrays as a multi-shard store four times (no compression, lz4 -- the default --, lzf,
gzip), then
reads random keys one by one (``DSAPStore.get``, and ``get`` + ``get_written`` as a training loader
does).  Target: >= 2000 random reads/s in one process.  The arrays look like real DSAP images: mean
fill with a fraction of cells written with textured colour (so compression ratios are realistic).

    python bench/bench_store.py [--quick] [--images N] [--shard-size N]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from data.io import atomic_write_json
from data.store import DSAPStore, StoreSettings, StoreWriter


def fake_dsap(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DSAP-like arrays: per-image mean fill, ~15% of cells written with a smooth texture plus noise."""
    rng = np.random.default_rng(seed)
    mean = rng.integers(60, 200, size=(n, 1, 3, 1, 1))
    dsap = np.broadcast_to(mean, (n, 24, 3, size, size)).astype(np.int16)
    yy, xx = np.mgrid[0:size, 0:size]
    texture = (40 * np.sin(xx / 3.0) * np.cos(yy / 5.0)).astype(np.int16)
    written = rng.random((n, 24, size, size)) < 0.15
    colour = rng.integers(0, 256, size=(n, 24, 3, 1, 1)) + texture + rng.integers(-12, 13, size=(n, 24, 3, size, size))
    dsap = np.where(written[:, :, None], colour, dsap).clip(0, 255).astype(np.uint8)
    return dsap, written, rng.random(n) < 0.9


def bench(folder: Path, keys: list[str], arrays, shard_size: int, compression: str | None, reads: int) -> dict:
    dsap, written, found = arrays
    settings = StoreSettings("bench", {}, size=dsap.shape[-1])
    t0 = time.perf_counter()
    writer = StoreWriter(folder, settings, compression=compression)
    n_shards = 0
    for i, start in enumerate(range(0, len(keys), shard_size)):
        sl = slice(start, start + shard_size)
        writer.write_shard(i, keys[sl], dsap[sl], written[sl], found[sl])
        n_shards += 1
    writer.write_manifest("bench", keys, n_shards)
    write_s = time.perf_counter() - t0
    size_mb = sum(p.stat().st_size for p in folder.glob("shard-*.h5")) / 1e6

    t0 = time.perf_counter()
    store = DSAPStore(folder)
    open_s = time.perf_counter() - t0
    order = np.random.default_rng(1).integers(0, len(keys), size=reads)
    store.get(keys[0])  # open handles before timing
    t0 = time.perf_counter()
    for i in order:
        store.get(keys[i])
    get_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in order:
        store.get(keys[i])
        store.get_written(keys[i])
    both_s = time.perf_counter() - t0
    ok = all(np.array_equal(store.get(keys[i]), dsap[i]) for i in order[:50])
    return {
        "compression": compression or "none", "images": len(keys), "shards": n_shards, "size_mb": round(size_mb, 1),
        "write_images_per_s": round(len(keys) / write_s, 1), "open_s": round(open_s, 3),
        "reads_per_s": round(reads / get_s, 1), "reads_with_mask_per_s": round(reads / both_s, 1), "roundtrip_ok": ok,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, runs in seconds")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--reads", type=int, default=None)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    n = args.images or (600 if args.quick else 4000)
    reads = args.reads or (1000 if args.quick else 5000)
    shard_size = min(args.shard_size, max(n // 3, 1))
    keys = [f"bounding_box_train/{i:05d}_c1s1_{i:06d}_00.jpg" for i in range(n)]
    arrays = fake_dsap(n, args.size)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        for comp in (None, "lz4", "lzf", "gzip"):
            rows.append(bench(tmp / (comp or "none"), keys, arrays, shard_size, comp, reads))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"DSAP store: {n} images of 24x3x{args.size}x{args.size} in shards of {shard_size}, {reads} random reads")
    print(f"{'compression':<12} {'MB':>7} {'write img/s':>12} {'reads/s':>9} {'+mask/s':>9} {'ok':>4}")
    for r in rows:
        print(f"{r['compression']:<12} {r['size_mb']:>7} {r['write_images_per_s']:>12} {r['reads_per_s']:>9} "
              f"{r['reads_with_mask_per_s']:>9} {str(r['roundtrip_ok']):>4}")
    out = ROOT / "bench" / "results" / "store.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    import os
    import subprocess

    atomic_write_json(out, {"benchmark": "store", "quick": args.quick, "size": args.size, "target_reads_per_s": 2000,
                            "command": "python bench/bench_store.py " + " ".join(sys.argv[1:]),
                            "loadavg": os.getloadavg(), "rows": rows,
                            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
