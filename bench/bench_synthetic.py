"""Benchmark: synthetic dataset generation, one process vs. a process pool, in the same run.

Generates the same dataset twice into a temporary folder (serial, then with ``--workers``), checks
that both give byte-identical files, prints a table and writes ``bench/results/synthetic.json``.
``--quick`` uses 40 identities so it runs in seconds; the default is the default dataset (300 ids).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.io import atomic_write_json  # noqa: E402
from data.synthetic import generate  # noqa: E402


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


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
    identical = rows[0]["sha256"] == rows[1]["sha256"]
    print(f"synthetic generation, {num_ids} identities, 4 cameras, 128x64 (cpu count {os.cpu_count()})")
    print(f"{'mode':<22}{'images':>8}{'seconds':>9}{'img/s':>8}")
    for r in rows:
        print(f"{r['mode']:<22}{r['images']:>8}{r['seconds']:>9}{r['images_per_s']:>8}")
    print(f"speed-up {rows[0]['seconds'] / rows[1]['seconds']:.2f}x; identical output: {identical}")
    atomic_write_json(args.out, {"benchmark": "synthetic", "num_ids": num_ids, "cpu_count": os.cpu_count(),
                                 "python": platform.python_version(), "rows": rows, "identical": identical})
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
