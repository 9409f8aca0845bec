"""The ``densepose`` estimator: batching, the model's thread count and the resolution, on real crops.

Needs detectron2 and its DensePose project (``make install-densepose``), a DensePose config and a
Market-layout folder of crops; with ``--weights random`` (the default) nothing is downloaded, which
measures speed and equality but says nothing about accuracy (random weights label noise).

Run from the repository root::

    python -m bench.bench_densepose --config <detectron2>/projects/DensePose/configs/densepose_rcnn_R_50_FPN_s1x.yaml \\
        --data <Market-layout folder>

**Which crops.**  ``batching=shape`` runs together the crops of a batch that resize to one shape, so a
batching test needs crops that really share a shape.  ``--pick common`` (default) takes ``--crops`` crops
from the ``--groups`` most frequent resized shapes of the folder (equally many of each, in key order), so
the mixed batch has ``--groups`` forward passes of several crops each; ``--pick consecutive`` takes a run
of consecutive keys, as one batch of ``precompute run`` gets them; ``--pick every`` takes every k-th key
(crops of many sizes: what earlier versions of this benchmark measured, where ``shape`` batches almost
nothing).  The table's header also says how
much a real run batches: over the folder's batches of 32 consecutive keys, how many crops share their
forward pass with another.

**What is compared** (each against every crop run **alone**, batch of one, at 256/512, the model at
``--threads`` threads): all crops as one mixed batch with ``batching=shape`` and ``batching=fixed``, the
old padded path (every crop at its own size in one batch, padded to the largest), each crop alone with the
model at another thread count, and each of the first ``--large-crops`` crops alone at detectron2's
800/1333.  Label agreement comes from one pass; times are the **median over ``--rounds`` interleaved
rounds** (each round runs every row once, in a rotated order, so a change of load hits all rows alike),
with the spread and the load average of each round.

Prints a table and writes ``bench/results/densepose.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data.runtime import quiet_openmp

quiet_openmp()  # before torch starts: idle OpenMP threads do not spin (the machine may be shared)

HERE = Path(__file__).resolve().parent
SPLITS = ("query", "bounding_box_test", "bounding_box_train")
#: the batch ``precompute run`` gives the densepose estimator (its ``batch_size``)
RUN_BATCH = 32


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def crop_sizes(folder: Path) -> list[tuple[str, tuple[int, int]]]:
    """(key, (height, width)) of every crop, sorted by key, from the image headers."""
    from PIL import Image

    paths = sorted(p for sub in SPLITS for p in (folder / sub).glob("*.jpg"))
    if not paths:
        sys.exit(f"no .jpg crops under {folder}/{{{','.join(SPLITS)}}}")
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append((p.relative_to(folder).as_posix(), (im.height, im.width)))
    return out


def run_batching(sizes: list[tuple[str, tuple[int, int]]], shape_of: Callable) -> dict[str, float]:
    """How much ``batching=shape`` batches in a real run: over batches of :data:`RUN_BATCH` consecutive keys,
    the share of crops that share their forward pass with another crop, and the mean crops per pass."""
    shared, passes = 0, 0
    for start in range(0, len(sizes), RUN_BATCH):
        counts = Counter(shape_of(*hw) for _, hw in sizes[start : start + RUN_BATCH])
        shared += sum(n for n in counts.values() if n > 1)
        passes += len(counts)
    return {"crops_sharing_a_pass": round(shared / len(sizes), 4), "crops_per_pass": round(len(sizes) / passes, 3)}


def pick(sizes: list[tuple[str, tuple[int, int]]], shape_of: Callable, how: str, n: int, groups: int) -> list[str]:
    if how == "consecutive":
        middle = max(0, len(sizes) // 2 - n // 2)
        return [k for k, _ in sizes[middle : middle + n]]
    if how == "every":
        return [k for k, _ in sizes[:: max(len(sizes) // n, 1)][:n]]
    by_shape: dict[tuple[int, int], list[str]] = {}
    for key, hw in sizes:
        by_shape.setdefault(shape_of(*hw), []).append(key)
    common = sorted(by_shape, key=lambda s: (-len(by_shape[s]), s))[:groups]
    each = max(1, n // len(common))
    return sorted(k for s in common for k in by_shape[s][:each])


def labels(est: Any, images: list[np.ndarray], outputs: list[Any]) -> list[np.ndarray]:
    out = []
    for image, o in zip(images, outputs):
        iuv = est.to_iuv(image, o)
        out.append(iuv.I if iuv is not None else np.zeros(image.shape[:2], np.uint8))
    return out


def compare(ref: list[np.ndarray], other: list[np.ndarray]) -> dict[str, Any]:
    agree = [float((a == b).mean()) for a, b in zip(ref, other)]
    inter = sum(int(((a > 0) & (b > 0)).sum()) for a, b in zip(ref, other))
    union = sum(int(((a > 0) | (b > 0)).sum()) for a, b in zip(ref, other))
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
    ap.add_argument("--pick", choices=("common", "consecutive", "every"), default="common",
                    help="crops of the most frequent resized shapes (default), a run of consecutive keys, or every "
                         "k-th key")
    ap.add_argument("--crops", type=int, default=24)
    ap.add_argument("--groups", type=int, default=3, help="--pick common: how many resized shapes")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the median is reported)")
    ap.add_argument("--threads", type=int, default=1, help="the model's intra-op threads (-o threads=)")
    ap.add_argument("--large-crops", type=int, default=4, help="crops for the 800/1333 row (0: skip it)")
    ap.add_argument("--quick", action="store_true", help="6 crops, 2 rounds, 2 crops at 800/1333")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "densepose.json")
    args = ap.parse_args()
    if importlib.util.find_spec("detectron2") is None or not args.config or args.data is None:
        print("skipped: needs detectron2 + DensePose (make install-densepose), --config (or $DENSEPOSE_CONFIG) "
              "and --data")
        return
    if args.quick:
        args.crops, args.rounds, args.large_crops = min(args.crops, 6), min(args.rounds, 2), min(args.large_crops, 2)

    from data.io import read_image
    from data.runtime import apply_threads
    from precompute.estimators import build_estimator

    apply_threads(args.threads)
    load_start = uptime()
    opts = dict(config=args.config, weights=args.weights, min_body_fraction=0.0)
    other_threads = 2 if args.threads == 1 else 1
    est = {b: build_estimator("densepose", args.data, batching=b, threads=args.threads, **opts) for b in ("shape", "fixed")}
    est["threads"] = build_estimator("densepose", args.data, threads=other_threads, **opts)
    if args.large_crops:
        est["large"] = build_estimator("densepose", args.data, min_size=800, max_size=1333, threads=args.threads, **opts)
    shape_of = est["shape"]._scaled_size

    sizes = crop_sizes(args.data)
    real_run = run_batching(sizes, shape_of)
    keys = pick(sizes, shape_of, args.pick, args.crops, args.groups)
    images = [read_image(args.data / k) for k in keys]
    groups = sorted((len(g) for g in est["shape"].shape_groups(images)), reverse=True)
    large = images[: args.large_crops]
    n = len(images)

    def alone(e: Any, ims: list[np.ndarray]) -> list[Any]:
        return [out for im in ims for out in e._run([im])]

    rows: dict[str, tuple[Callable[[], list[Any]], Any, list[np.ndarray]]] = {
        "alone (batch of 1), 256/512": (lambda: alone(est["shape"], images), est["shape"], images),
        "mixed batch, batching=shape": (lambda: est["shape"].infer(images), est["shape"], images),
        "mixed batch, batching=fixed": (lambda: est["fixed"].infer(images), est["fixed"], images),
        "mixed batch, old padded path": (lambda: est["shape"]._run(images), est["shape"], images),
        f"alone, model at {other_threads} threads": (lambda: alone(est["threads"], images), est["threads"], images),
    }
    if args.large_crops:
        rows["alone, 800/1333 (detectron2's test size)"] = (lambda: alone(est["large"], large), est["large"], large)

    est["shape"]._run(images[:1])  # warm-up (the first call allocates)
    times: dict[str, list[float]] = {name: [] for name in rows}
    outputs: dict[str, list[Any]] = {}
    loads = []
    names = list(rows)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn, _, ims = rows[name]
            t0 = time.perf_counter()
            out = fn()
            times[name].append((time.perf_counter() - t0) / len(ims))
            outputs.setdefault(name, out)
        loads.append(round(os.getloadavg()[0], 2))

    ref = labels(est["shape"], images, outputs[names[0]])
    ref_large = ref[: len(large)]
    result_rows = {}
    for name, (_, e, ims) in rows.items():
        got = labels(e, ims, outputs[name])
        t = times[name]
        result_rows[name] = {"s_per_crop_median": round(statistics.median(t), 3), "s_per_crop_min": round(min(t), 3),
                             "s_per_crop_max": round(max(t), 3), "crops": len(ims),
                             **compare(ref_large if ims is large else ref, got)}
    load_end = uptime()
    fg = float(np.mean([(r > 0).mean() for r in ref]))

    print(f"{n} crops of {args.data.name} (--pick {args.pick}): {len(groups)} resized shapes, crops per forward pass "
          f"with batching=shape {groups}; weights={args.weights}, model at {args.threads} thread(s); reference: "
          f"each crop alone at 256/512, foreground share {fg:.3f}")
    print(f"a real run of this folder (batches of {RUN_BATCH} consecutive keys): {100 * real_run['crops_sharing_a_pass']:.1f}% "
          f"of crops share their forward pass, {real_run['crops_per_pass']:.2f} crops per pass")
    print(f"timing: median of {args.rounds} interleaved rounds (min-max); 1-min load average after each round {loads}")
    print(f"load at start: {load_start}")
    print(f"load at end:   {load_end}")
    print(f"{'run':<44} {'s/crop':>7} {'(min-max)':>13} {'identical':>10} {'pixel agr.':>10} {'(min)':>7} {'fg IoU':>7}")
    for name, r in result_rows.items():
        spread = f"{r['s_per_crop_min']:.2f}-{r['s_per_crop_max']:.2f}"
        print(f"{name:<44} {r['s_per_crop_median']:>7.3f} {spread:>13} {r['identical_crops']:>5}/{r['crops']:<4} "
              f"{r['pixel_agreement_mean']:>10.4f} {r['pixel_agreement_min']:>7.4f} {str(r['foreground_iou']):>7}")
    result = {"crops": n, "data": args.data.name, "pick": args.pick, "shape_groups": groups, "keys": keys,
              "real_run_batching": real_run, "weights": args.weights, "config": Path(args.config).name,
              "model_threads": args.threads, "rounds": args.rounds, "reference_foreground_share": round(fg, 4),
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_start": load_start,
                          "load_end": load_end, "load_after_each_round": loads},
              "rows": result_rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
