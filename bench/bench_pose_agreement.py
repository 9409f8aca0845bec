"""How close is the ``pose`` estimator (MediaPipe-derived) to DensePose?

Compares the pose estimator's (I, U, V) with a reference, per part (24 parts and the 8 merged
groups): IoU of the part labels, and the mean absolute U/V difference on pixels where both agree
on the part.  Two references:

- ``densepose-demo``: real DensePose output (shared/data/densepose-demo); each person with at least
  ``--min-pixels`` body pixels is cropped from ``demo_im.jpg`` (box + 10 %), other persons' pixels
  in the crop are ignored;
- ``synthetic``: the synthetic dataset's exact ground truth (generated under ``--synth-root``).

Two variants in the same run: the estimator as shipped (crops resized to 320 rows and padded
onto a square canvas) against MediaPipe on the crop as it is (no resize, no padding).  It also
reports the found rate on real re-ID crops (CUHK03 camera pair 1 queries) for both variants.

Needs MediaPipe (``make install-pose``).  ``--quick`` runs in seconds.  Writes
``bench/results/pose_agreement.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data.io import read_image, read_iuv_png
from dsa.parts import GROUP_NAMES, NUM_GROUPS, NUM_PARTS, PART_NAMES, PART_TO_GROUP
from precompute.estimators.base import EstimatorError, build_estimator

log = logging.getLogger("bench_pose_agreement")
HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
VARIANTS = {"resize+pad": {"input_height": 320, "pad": 0.25}, "as-is": {"input_height": 0, "pad": 0.0}}


class Agreement:
    """Accumulates per-part intersections/unions and U/V errors over many crops."""

    def __init__(self) -> None:
        self.inter = np.zeros(NUM_PARTS + 1)
        self.union = np.zeros(NUM_PARTS + 1)
        self.g_inter = np.zeros(NUM_GROUPS)
        self.g_union = np.zeros(NUM_GROUPS)
        self.uv_err = np.zeros((NUM_PARTS + 1, 2))
        self.uv_n = np.zeros(NUM_PARTS + 1)
        self.fg = np.zeros(2)
        self.crops = 0
        self.found = 0

    def add(self, pred_i: np.ndarray | None, pred_u, pred_v, gt, valid: np.ndarray) -> None:
        self.crops += 1
        if pred_i is None:
            pred_i = np.zeros_like(gt.I)
            pred_u = pred_v = np.zeros(gt.I.shape, np.float32)
        else:
            self.found += 1
        p, g = pred_i[valid].astype(np.int64), gt.I[valid].astype(np.int64)
        for part in range(1, NUM_PARTS + 1):
            a, b = p == part, g == part
            self.inter[part] += (a & b).sum()
            self.union[part] += (a | b).sum()
            both = a & b
            if both.any():
                self.uv_err[part, 0] += np.abs(pred_u[valid][both] - gt.U[valid][both]).sum()
                self.uv_err[part, 1] += np.abs(pred_v[valid][both] - gt.V[valid][both]).sum()
                self.uv_n[part] += both.sum()
        group = np.concatenate([[-1], PART_TO_GROUP])
        pg, gg = group[p], group[g]
        for k in range(NUM_GROUPS):
            a, b = pg == k, gg == k
            self.g_inter[k] += (a & b).sum()
            self.g_union[k] += (a | b).sum()
        self.fg += [((p > 0) & (g > 0)).sum(), ((p > 0) | (g > 0)).sum()]

    def summary(self) -> dict:
        def ratio(a, b):
            return [float(x / y) if y > 0 else None for x, y in zip(a, b)]
        part_iou = ratio(self.inter[1:], self.union[1:])
        group_iou = ratio(self.g_inter, self.g_union)
        mae = self.uv_err[1:] / np.maximum(self.uv_n[1:, None], 1)
        agreed = self.uv_n[1:].sum()
        return {
            "crops": self.crops, "found": self.found,
            "foreground_iou": float(self.fg[0] / max(self.fg[1], 1)),
            "mean_part_iou": float(np.mean([x for x in part_iou if x is not None])),
            "mean_group_iou": float(np.mean([x for x in group_iou if x is not None])),
            "part_iou": dict(zip(PART_NAMES[1:], part_iou)),
            "group_iou": dict(zip(GROUP_NAMES, group_iou)),
            "u_mae": float(self.uv_err[1:, 0].sum() / max(agreed, 1)),
            "v_mae": float(self.uv_err[1:, 1].sum() / max(agreed, 1)),
            "uv_mae_per_part": {PART_NAMES[i + 1]: [float(mae[i, 0]), float(mae[i, 1])]
                                for i in range(NUM_PARTS) if self.uv_n[i + 1] > 0},
        }


def demo_persons(folder: Path, min_pixels: int):
    """(crop RGB, ground-truth IUV of that person, valid mask) per DensePose demo person."""
    image = read_image(folder / "demo_im.jpg")
    gt = read_iuv_png(folder / "demo_im_IUV.png")
    inds = cv2.imread(str(folder / "demo_im_INDS.png"), cv2.IMREAD_UNCHANGED)
    for k in np.unique(inds)[1:]:
        ys, xs = np.nonzero(inds == k)
        if len(ys) < min_pixels:
            continue
        mh, mw = int(0.1 * np.ptp(ys)), int(0.1 * np.ptp(xs))
        y0, y1 = max(0, ys.min() - mh), min(image.shape[0], ys.max() + 1 + mh)
        x0, x1 = max(0, xs.min() - mw), min(image.shape[1], xs.max() + 1 + mw)
        sub = inds[y0:y1, x0:x1]
        mine = sub == k
        crop_gt = type(gt)(I=np.where(mine, gt.I[y0:y1, x0:x1], 0).astype(np.uint8),
                           U=gt.U[y0:y1, x0:x1].copy(), V=gt.V[y0:y1, x0:x1].copy())
        yield f"demo person {k}", np.ascontiguousarray(image[y0:y1, x0:x1]), crop_gt, (sub == 0) | mine


def synthetic_crops(root: Path, limit: int, num_ids: int):
    from data.synthetic import generate
    folder = root / f"ids{num_ids}" / "synthetic"   # one dataset per size: generate() reuses it
    generate(folder, num_ids=num_ids, num_cameras=2, seed=0, progress=False, workers=1)
    images = sorted(folder.rglob("*.jpg"))[:limit]
    for path in images:
        gt = read_iuv_png(path.with_name(path.stem + "_IUV.png"))
        yield str(path.relative_to(folder)), read_image(path), gt, np.ones(gt.I.shape, bool)


def run(args: argparse.Namespace) -> dict:
    estimators = {name: build_estimator("pose", str(SHARED), **opts) for name, opts in VARIANTS.items()}
    sets = {}
    demo = SHARED / "densepose-demo"
    if demo.is_dir():
        sets["densepose-demo"] = list(demo_persons(demo, args.min_pixels))
    else:
        log.warning("%s is absent: skipping the real DensePose comparison", demo)
    sets["synthetic"] = list(synthetic_crops(Path(args.synth_root), args.synthetic, args.synth_ids))
    results: dict = {"variants": VARIANTS, "sets": {}}
    for set_name, crops in sets.items():
        results["sets"][set_name] = {}
        for variant, est in estimators.items():
            acc, acc_found = Agreement(), Agreement()   # all crops (a miss = all background), found ones
            t0 = time.perf_counter()
            for _key, crop, gt, valid in tqdm(crops, desc=f"{set_name} / {variant}", leave=False):
                iuv = est.estimate([crop], [""], [""])[0]
                acc.add(None if iuv is None else iuv.I, None if iuv is None else iuv.U,
                        None if iuv is None else iuv.V, gt, valid)
                if iuv is not None:
                    acc_found.add(iuv.I, iuv.U, iuv.V, gt, valid)
            summary = acc.summary()
            found = acc_found.summary()
            summary["found_only"] = {k: found[k] for k in ("foreground_iou", "mean_part_iou", "mean_group_iou")}
            summary["seconds_per_crop"] = (time.perf_counter() - t0) / max(len(crops), 1)
            results["sets"][set_name][variant] = summary
    query = SHARED / "cuhk03-p1" / "query"
    if query.is_dir() and args.reid > 0:
        paths = sorted(query.glob("*.jpg"))[:args.reid]
        results["cuhk03_found_rate"] = {}
        for variant, est in estimators.items():
            found = sum(est.estimate([read_image(p)], [str(p)], [p.name])[0] is not None
                        for p in tqdm(paths, desc=f"cuhk03 / {variant}", leave=False))
            results["cuhk03_found_rate"][variant] = {"crops": len(paths), "found": int(found)}
    return results


def print_table(results: dict) -> None:
    sets = results["sets"]
    cols = [(s, v) for s in sets for v in sets[s]]
    head = f"{'':26s}" + "".join(f"{s[:10] + '/' + v:>22s}" for s, v in cols)
    print(head)

    def row(label, getter, fmt="{:.3f}"):
        cells = []
        for s, v in cols:
            x = getter(sets[s][v])
            cells.append(f"{'-' if x is None else fmt.format(x):>22s}")
        print(f"{label:26s}" + "".join(cells))

    row("crops found", lambda r: f"{r['found']}/{r['crops']}", "{}")
    row("foreground IoU", lambda r: r["foreground_iou"])
    row("mean IoU, 24 parts", lambda r: r["mean_part_iou"])
    row("mean IoU, 8 groups", lambda r: r["mean_group_iou"])
    for g in GROUP_NAMES:
        row(f"  IoU {g}", lambda r, g=g: r["group_iou"][g])
    row("found only: mean IoU 24", lambda r: r["found_only"]["mean_part_iou"])
    row("found only: mean IoU 8", lambda r: r["found_only"]["mean_group_iou"])
    row("U mean abs diff (agreed)", lambda r: r["u_mae"])
    row("V mean abs diff (agreed)", lambda r: r["v_mae"])
    row("seconds per crop", lambda r: r["seconds_per_crop"])
    for variant, r in results.get("cuhk03_found_rate", {}).items():
        print(f"CUHK03-p1 query crops found, {variant}: {r['found']}/{r['crops']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few crops only (seconds)")
    parser.add_argument("--synthetic", type=int, default=200, help="synthetic crops to compare")
    parser.add_argument("--synth-ids", type=int, default=40, help="identities of the generated synthetic set")
    parser.add_argument("--synth-root", default=os.path.join(tempfile.gettempdir(), "dsa-bench-synth"))
    parser.add_argument("--reid", type=int, default=200, help="CUHK03 query crops for the found rate")
    parser.add_argument("--min-pixels", type=int, default=2000, help="smallest demo person (body pixels)")
    parser.add_argument("--out", default=str(HERE / "results" / "pose_agreement.json"))
    args = parser.parse_args()
    if args.quick:
        args.synthetic, args.synth_ids, args.reid = 20, 6, 20
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        results = run(args)
    except EstimatorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results["args"] = vars(args)
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
