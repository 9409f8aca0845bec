"""The ``densepose`` estimator: batch invariance and the resolution trade-off, on real crops.

Needs detectron2 and its DensePose project (``make install-densepose``) and a DensePose config; with
``--weights random`` (the default) it runs without downloading anything, which measures speed and
batch invariance but says nothing about accuracy (random weights label noise).

For ``--crops`` crops of a Market-layout folder (``--data``; every k-th image, so that crop sizes
vary), in one run:

- the reference: each crop **alone** (batch of one) at the default test size (short side 256, long
  side <= 512), aspect kept;
- ``batching=shape`` (the default) and ``batching=fixed`` on all crops as **one mixed batch**, against
  the reference: crops with identical labels, pixel label agreement, time per crop;
- the **old path** (every crop at its own size in one batch, padded to the largest), against the
  reference: what the batch invariance fixes;
- the **800/1333 path** (detectron2's usual test size, each crop alone): label agreement with the
  reference and time per crop, i.e. what the small default size costs and saves.

Prints a table and writes ``bench/results/densepose.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def crops_of(folder: Path, n: int) -> tuple[list[str], list[np.ndarray]]:
    from data.io import read_image

    paths = sorted(p for sub in ("query", "bounding_box_test", "bounding_box_train") for p in (folder / sub).glob("*.jpg"))
    if not paths:
        sys.exit(f"no .jpg crops under {folder}/{{query,bounding_box_test,bounding_box_train}}")
    step = max(len(paths) // n, 1)
    chosen = paths[::step][:n]
    return [p.relative_to(folder).as_posix() for p in chosen], [read_image(p) for p in chosen]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def labels(est, outputs, images) -> list[np.ndarray]:
    from precompute.estimators.densepose import chart_output_to_iuv

    res = []
    for image, out in zip(images, outputs):
        dp = out["instances"].pred_densepose
        h, w = image.shape[:2]
        res.append(chart_output_to_iuv(dp.coarse_segm[:1], dp.fine_segm[:1], dp.u[:1], dp.v[:1], (0, 0, w, h), (h, w)).I)
    return res


def compare(ref: list[np.ndarray], other: list[np.ndarray]) -> dict:
    agree = [float((a == b).mean()) for a, b in zip(ref, other)]
    fg_ref = [a > 0 for a in ref]
    fg_other = [b > 0 for b in other]
    inter = sum(int((a & b).sum()) for a, b in zip(fg_ref, fg_other))
    union = sum(int((a | b).sum()) for a, b in zip(fg_ref, fg_other))
    return {"identical_crops": int(sum(np.array_equal(a, b) for a, b in zip(ref, other))), "crops": len(ref),
            "pixel_agreement_mean": round(float(np.mean(agree)), 5), "pixel_agreement_min": round(float(np.min(agree)), 5),
            "foreground_iou": round(inter / union, 4) if union else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.environ.get("DENSEPOSE_CONFIG", ""),
                    help="DensePose yaml, e.g. <detectron2>/projects/DensePose/configs/densepose_rcnn_R_50_FPN_s1x.yaml "
                         "(default: $DENSEPOSE_CONFIG; without one the benchmark is skipped)")
    ap.add_argument("--weights", default="random", help="weights file/URL/zoo name, or random (default)")
    ap.add_argument("--data", type=Path, default=None,
                    help="Market-layout folder of crops (query/, bounding_box_test/, bounding_box_train/)")
    ap.add_argument("--crops", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    ap.add_argument("--skip-large", action="store_true", help="skip the 800/1333 path")
    ap.add_argument("--quick", action="store_true", help="6 crops")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "densepose.json")
    args = ap.parse_args()
    import importlib.util

    if importlib.util.find_spec("detectron2") is None or not args.config or args.data is None:
        print("skipped: needs detectron2 + DensePose (make install-densepose), --config (or $DENSEPOSE_CONFIG) "
              "and --data")
        return
    if args.quick:
        args.crops = min(args.crops, 6)

    import torch

    torch.set_num_threads(args.threads)
    from precompute.estimators import build_estimator

    keys, images = crops_of(args.data, args.crops)
    sizes = sorted({im.shape[:2] for im in images})
    opts = dict(config=args.config, weights=args.weights, min_body_fraction=0.0)
    est = {b: build_estimator("densepose", args.data, batching=b, **opts) for b in ("shape", "fixed")}
    large = None if args.skip_large else build_estimator("densepose", args.data, min_size=800, max_size=1333, **opts)
    n = len(images)
    paths = [args.data / k for k in keys]

    est["shape"]._run(images[:1])  # warm-up (first call allocates)
    alone_out, t_alone = [], 0.0
    for im in images:
        out, t = timed(est["shape"]._run, [im])
        alone_out += out
        t_alone += t
    ref = labels(est["shape"], alone_out, images)

    rows = {"alone (batch of 1), 256/512": {"s_per_crop": round(t_alone / n, 3), **compare(ref, ref)}}
    for b in ("shape", "fixed"):
        iuvs, t = timed(est[b].estimate, images, paths, keys)
        rows[f"mixed batch, batching={b}"] = {"s_per_crop": round(t / n, 3), **compare(ref, [x.I for x in iuvs])}
    out, t = timed(est["shape"]._run, images)  # mixed sizes in one call: detectron2 pads to the largest
    rows["mixed batch, old padded path"] = {"s_per_crop": round(t / n, 3), **compare(ref, labels(est["shape"], out, images))}
    if large is not None:
        big_out, t_big = [], 0.0
        for im in images:
            out, t = timed(large._run, [im])
            big_out += out
            t_big += t
        rows["alone, 800/1333 (detectron2's test size)"] = {"s_per_crop": round(t_big / n, 3),
                                                            **compare(labels(large, big_out, images), ref)}
    fg = float(np.mean([(r > 0).mean() for r in ref]))

    print(f"{n} crops of {args.data.name}, {len(sizes)} distinct sizes ({sizes[0]} .. {sizes[-1]}), weights={args.weights}, "
          f"{args.threads} thread(s); reference: each crop alone at 256/512; foreground share there {fg:.3f}")
    print(f"{'run':<44} {'s/crop':>7} {'identical':>10} {'pixel agr.':>10} {'(min)':>7} {'fg IoU':>7}")
    for name, r in rows.items():
        print(f"{name:<44} {r['s_per_crop']:>7.3f} {r['identical_crops']:>5}/{r['crops']:<4} "
              f"{r['pixel_agreement_mean']:>10.4f} {r['pixel_agreement_min']:>7.4f} {str(r['foreground_iou']):>7}")
    result = {"crops": n, "data": args.data.name, "distinct_sizes": len(sizes), "weights": args.weights,
              "config": Path(args.config).name, "threads": args.threads, "reference_foreground_share": round(fg, 4),
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
