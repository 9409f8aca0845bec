"""What identifying image content costs: size+mtime (``data.store.source_signature``) vs hashing the bytes.

    python bench/bench_fingerprint.py --dataset synthetic --root datasets [--dataset market1501 --root DIR ...]
        [--repeats 3] [--json bench/results/fingerprint.json]

For every image of each dataset (train, query, gallery) and its DensePose side files, times the stat
signature the store records and a sha256 of the same files, and prints one table (per dataset: images,
MB read, seconds and µs per image for each, and the ratio) and writes the JSON.  The first pass may read
from disk, the later ones from the page cache: the table gives the first and the best of ``--repeats``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

from data.datasets import build_dataset
from data.store import SIDE_FILE_SUFFIXES, source_signature


def files_of(root: Path, key: str) -> list[Path]:
    path = root / key
    return [p for p in (path, *(path.with_name(path.stem + s) for s in SIDE_FILE_SUFFIXES)) if p.is_file()]


def sha256_all(root: Path, keys: list[str]) -> int:
    total = 0
    for k in keys:
        h = hashlib.sha256()
        for p in files_of(root, k):
            data = p.read_bytes()
            total += len(data)
            h.update(data)
        h.hexdigest()
    return total


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times[0], min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", action="append", required=True)
    ap.add_argument("--root", action="append", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for name, root in zip(args.dataset, args.root):
        ds = build_dataset(name, root)
        keys = [it.key for it in ds.all_items()]
        mb = sum(p.stat().st_size for k in keys for p in files_of(ds.root, k)) / 1e6
        stat_first, stat_best = timed(lambda: [source_signature(ds.root, k) for k in keys], args.repeats)
        hash_first, hash_best = timed(lambda: sha256_all(ds.root, keys), args.repeats)
        rows.append({"dataset": name, "root": str(ds.root), "images": len(keys), "mb": round(mb, 1),
                     "stat_s_first": round(stat_first, 4), "stat_s_best": round(stat_best, 4),
                     "sha256_s_first": round(hash_first, 4), "sha256_s_best": round(hash_best, 4),
                     "stat_us_per_image": round(1e6 * stat_best / len(keys), 1),
                     "sha256_us_per_image": round(1e6 * hash_best / len(keys), 1),
                     "ratio_best": round(hash_best / stat_best, 2)})
    head = f"{'dataset':12s} {'images':>7s} {'MB':>7s} {'stat s (1st/best)':>18s} {'sha256 s (1st/best)':>20s} {'µs/img stat/sha':>16s} {'ratio':>6s}"
    print(head)
    for r in rows:
        print(f"{r['dataset']:12s} {r['images']:7d} {r['mb']:7.1f} {r['stat_s_first']:8.3f}/{r['stat_s_best']:<8.3f} "
              f"{r['sha256_s_first']:9.3f}/{r['sha256_s_best']:<9.3f} {r['stat_us_per_image']:7.1f}/"
              f"{r['sha256_us_per_image']:<7.1f} {r['ratio_best']:6.2f}")
    if args.json:
        args.json.write_text(json.dumps({"load": os.getloadavg(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
