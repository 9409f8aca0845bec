"""Benchmark: synthetic dataset generation, one process vs. a process pool, in the same run.

Generates the same dataset twice into a temporary folder (serial, then with ``--workers``), checks
that both give byte-identical files, prints a table and writes ``bench/results/synthetic.json``.
It also measures how hard the set is for a colour-histogram re-ID baseline (Market protocol): on the
whole crop vs. on the ground-truth body pixels only, which shows how much the backgrounds confound.
``--quick`` uses 40 identities so it runs in seconds; the default is the default dataset (300 ids).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


import numpy as np

from data.datasets import build_dataset
from data.io import atomic_write_json, read_image, read_iuv_png
from data.synthetic import generate


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def colour_baseline(dataset_dir: Path, body_only: bool) -> dict[str, float]:
    """Rank-1 and mAP of the colour-histogram baseline (``evaluate.baselines``; Market protocol), on the
    whole crop or on the body pixels of the ground truth."""
    from evaluate.baselines import colour_histogram
    from evaluate.metrics import evaluate_features

    ds = build_dataset("synthetic", dataset_dir)

    def feature(key: str) -> np.ndarray:
        mask = read_iuv_png(ds.root / key.replace(".jpg", "_IUV.png")).I > 0 if body_only else None
        return colour_histogram(read_image(ds.root / key), mask)

    q = np.stack([feature(i.key) for i in ds.query])
    g = np.stack([feature(i.key) for i in ds.gallery])
    m = evaluate_features(q, g, [i.pid for i in ds.query], [i.pid for i in ds.gallery],
                          [i.camid for i in ds.query], [i.camid for i in ds.gallery], metric="cosine")
    return {"rank1": round(float(m.cmc[1]), 4), "mAP": round(float(m.mAP), 4), "queries": int(m.num_evaluated)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 identities instead of the default 300")
    ap.add_argument("--ids", type=int, default=None)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "synthetic.json"))
    args = ap.parse_args()
    num_ids = args.ids or (40 if args.quick else 300)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        for label, workers in (("serial", 1), (f"pool ({args.workers} workers)", args.workers)):
            out = Path(tmp) / label.split()[0] / "synthetic"
            t0 = time.perf_counter()
            s = generate(out, num_ids=num_ids, workers=workers, progress=False)
            seconds = time.perf_counter() - t0
            rows.append({"mode": label, "workers": workers, "images": s["num_images"], "seconds": round(seconds, 2),
                         "images_per_s": round(s["num_images"] / seconds, 1), "sha256": _digest(out)})
        baseline = {name: colour_baseline(out, body) for name, body in (("whole crop", False), ("body pixels", True))}
    identical = rows[0]["sha256"] == rows[1]["sha256"]
    print(f"synthetic generation, {num_ids} identities, 4 cameras, 128x64 (cpu count {os.cpu_count()})")
    print(f"{'mode':<22}{'images':>8}{'seconds':>9}{'img/s':>8}")
    for r in rows:
        print(f"{r['mode']:<22}{r['images']:>8}{r['seconds']:>9}{r['images_per_s']:>8}")
    print(f"speed-up {rows[0]['seconds'] / rows[1]['seconds']:.2f}x; identical output: {identical}")
    print(f"\ncolour-histogram re-ID baseline    {'rank-1':>7}{'mAP':>7}")
    for name, r in baseline.items():
        print(f"{name:<34}{r['rank1']:>7.3f}{r['mAP']:>7.3f}")
    atomic_write_json(args.out, {"benchmark": "synthetic", "num_ids": num_ids, "cpu_count": os.cpu_count(),
                                 "python": platform.python_version(), "rows": rows, "identical": identical,
                                 "colour_baseline": baseline})
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
