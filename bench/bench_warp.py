"""Benchmark: the DSAP warp, vectorised NumPy vs. the per-pixel reference loop (and the batched torch path).

Inputs are 256×128 crops with a realistic body fraction: the persons of the real DensePose demo output
(``../shared/data/densepose-demo``, resized; I/U/V with nearest neighbour) when present, otherwise
fabricated bodies.  CPU figures are single-threaded (``torch.set_num_threads(1)``) and count this process's CPU time,
i.e. images per second per core; CUDA uses wall time.  The outputs of
every path are checked equal to the NumPy warp.  Prints a table and writes
``bench/results/warp.json``.  ``--quick`` runs in a few seconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch


from data.io import atomic_write_json, read_image, read_iuv_png
from dsa.dsap import warp_dsap, warp_dsap_torch
from tests.oracles import warp_dsap_reference

DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "densepose-demo"
H, W = 256, 128


def _demo_crops() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    from precompute.estimators.iuv import persons_from_inds, read_inds_png

    image = read_image(DEMO / "demo_im.jpg")
    people = persons_from_inds(image, read_iuv_png(DEMO / "demo_im_IUV.png"), read_inds_png(DEMO / "demo_im_INDS.png"))
    crops = []
    for rgb, iuv, _ in people[:6]:
        near = dict(dsize=(W, H), interpolation=cv2.INTER_NEAREST)
        crops.append((cv2.resize(rgb, (W, H), interpolation=cv2.INTER_LINEAR), cv2.resize(iuv.I, **near),
                      cv2.resize(iuv.U, **near), cv2.resize(iuv.V, **near)))
    return crops


def _fabricated_crops(n: int = 6) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    crops = []
    for _ in range(n):
        body = ((xx - W / 2) / (W * 0.3)) ** 2 + ((yy - H / 2) / (H * 0.45)) ** 2 < 1
        labels = np.where(body, 1 + (yy // (H / 12)).astype(np.uint8) * 2 + (xx > W / 2), 0).astype(np.uint8)
        u = (yy % (H / 12)) / (H / 12)
        v = (xx % (W / 2)) / (W / 2)
        crops.append((rng.integers(0, 256, (H, W, 3), dtype=np.uint8), labels, u.astype(np.float32), v.astype(np.float32)))
    return crops


def _rate(fn, n_images: int, min_seconds: float, clock=time.process_time) -> float:
    """Images per second of ``fn`` (which processes ``n_images``), repeated for at least ``min_seconds``.

    CPU paths use this process's CPU time (one thread: the per-core figure, robust to a shared
    machine's load); the CUDA path passes wall time."""
    fn()  # warm-up
    done, t0 = 0, clock()
    while True:
        fn()
        done += n_images
        elapsed = clock() - t0
        if elapsed >= min_seconds:
            return done / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short timings (seconds in all)")
    ap.add_argument("--batch", type=int, default=64, help="batch size of the torch path")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "warp.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    secs = 0.5 if args.quick else 3.0

    source = "densepose-demo persons" if DEMO.is_dir() else "fabricated bodies"
    crops = _demo_crops() if DEMO.is_dir() else _fabricated_crops()
    body = float(np.mean([(c[1] > 0).mean() for c in crops]))

    def numpy_all() -> None:
        for c in crops:
            warp_dsap(*c)

    ref_crops = crops[:1] if args.quick else crops[:2]

    def reference_all() -> None:
        for c in ref_crops:
            warp_dsap_reference(*c)

    # equality of all paths on these inputs
    for c in ref_crops:
        a, b = warp_dsap(*c), warp_dsap_reference(*c)
        assert (a[0] == b[0]).all() and (a[1] == b[1]).all(), "NumPy warp differs from the reference"
    reps = -(-args.batch // len(crops))
    batch = [crops[i % len(crops)] for i in range(reps * len(crops))][: args.batch]
    images = torch.from_numpy(np.stack([c[0] for c in batch])).permute(0, 3, 1, 2).contiguous()
    maps = [torch.from_numpy(np.stack([c[k] for c in batch])) for k in (1, 2, 3)]
    t_dsap, t_written = warp_dsap_torch(images, *maps)
    for i, c in enumerate(batch[: len(crops)]):
        a = warp_dsap(*c)
        assert (t_dsap[i].numpy() == a[0]).all() and (t_written[i].numpy() == a[1]).all(), "torch differs"

    rows = [("numpy (vectorised)", _rate(numpy_all, len(crops), secs)),
            ("reference (per-pixel loop)", _rate(reference_all, len(ref_crops), secs)),
            (f"torch CPU, batch {args.batch}", _rate(lambda: warp_dsap_torch(images, *maps), len(batch), secs))]
    if torch.cuda.is_available():
        g_images, g_maps = images.cuda(), [m.cuda() for m in maps]
        g_dsap, _ = warp_dsap_torch(g_images, *g_maps)
        assert torch.equal(g_dsap.cpu(), t_dsap), "CUDA differs from CPU"

        def cuda_batch() -> None:
            warp_dsap_torch(g_images, *g_maps)
            torch.cuda.synchronize()

        rows.append((f"torch CUDA, batch {args.batch}", _rate(cuda_batch, len(batch), secs, time.perf_counter)))

    speedup = rows[0][1] / rows[1][1]
    print(f"DSAP warp, {H}×{W} crops ({source}, body fraction {body:.2f}), S = 32, 1 thread (CPU time)")
    print(f"{'path':<30} {'images/s':>10}")
    for name, rate in rows:
        print(f"{name:<30} {rate:>10.1f}")
    print(f"speed-up numpy / reference: {speedup:.0f}×")
    atomic_write_json(args.out, {
        "benchmark": "warp", "input": source, "height": H, "width": W, "size": 32, "body_fraction": body,
        "threads": 1, "quick": args.quick, "images_per_s": {name: rate for name, rate in rows},
        "speedup_numpy_vs_reference": speedup, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    })


if __name__ == "__main__":
    main()
