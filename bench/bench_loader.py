"""Benchmark: DataLoader feeding rate, images only vs. images + DSAP (lz4, lzf and uncompressed stores), in one run.

A synthetic Market-like dataset is written to a scratch folder: ``--images`` JPEGs at Market's 128x64,
and their DSAP store (24 x 3 x 32 x 32 uint8 per image: resized crops of the image; about 40% of the
parts left empty and, in the others, the cells outside one random rectangle, as an estimator leaves
them in contiguous regions) three times: LZ4 (the default), lzf and uncompressed.  DSAP is read in the
workers (``dsap_reader="worker"``), or, as training does, by the consuming process ("main reads").  The loader
is the training one: ``data.joint.JointDataset`` with the ``paper`` preset's augmentation at 256x128
(resize, pad + random crop, flip, random erasing), ``data.runtime.worker_threads`` in each worker,
batches of 64.  Each setting is timed with ``--workers`` workers (default 1: samples/s *per worker*),
in ``--rounds`` interleaved rounds (the machine is shared: a rate is the median over rounds, and the
cost of DSAP the median of the per-round ratios to images only).

Targets (issue 12): DSAP adds <= 10% to the time of a sample, and >= 300 samples/s per worker.

    python bench/bench_loader.py [--quick] [--workers 1] [--out bench/results/loader.json]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from data.runtime import quiet_openmp

quiet_openmp()

import cv2
import numpy as np
import torch

COMPRESSIONS = ("lz4", "lzf", "none")
#: "transfer only": a DSAP array per sample from memory, no store read -- what moving 73 KB per sample
#: through the DataLoader (worker-side collate into shared memory) costs by itself
#: "lz4, main reads": what training does -- the workers send indices and the consuming process reads the
#: batch's DSAP (``JointDataset(dsap_reader="main")``); its time is inside the timed loop
SETTINGS = (("images",) + tuple(f"images+dsap {c}" for c in COMPRESSIONS)
            + ("images+dsap transfer only", "images+dsap lz4, main reads"))


class InMemoryDSAP:
    """A stand-in store: the same zero DSAP array (a fresh copy, as a store read returns) for every key."""

    def __init__(self, size: int = 32) -> None:
        from dsa.parts import NUM_PARTS

        self.array = np.zeros((NUM_PARTS, 3, size, size), np.uint8)

    def check_covers(self, keys) -> None:
        pass

    def get(self, key: str) -> np.ndarray:
        return self.array.copy()

    def close(self) -> None:
        pass


def make_dataset(folder: Path, n: int, ids: int = 751, compressions=("lz4", "lzf", None), seed: int = 0,
                 shard_size: int = 500):
    """Write ``n`` JPEG images (128x64) and their DSAP stores; returns (items, {compression: store folder})."""
    from data.datasets.base import Item
    from data.store import StoreSettings, StoreWriter
    from dsa.parts import NUM_PARTS

    rng = np.random.default_rng(seed)
    items, dsaps, written = [], np.zeros((n, NUM_PARTS, 3, 32, 32), np.uint8), np.zeros((n, NUM_PARTS, 32, 32), bool)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pid = int(rng.integers(0, ids))
        small = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
        img = cv2.GaussianBlur(cv2.resize(small, (64, 128), interpolation=cv2.INTER_LINEAR), (5, 5), 0)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
        key = f"images/{pid:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg"
        cv2.imwrite(str(folder / key), img)
        items.append(Item(key, pid, i % 6))
        crops = cv2.resize(img, (32 * 4, 32 * 6), interpolation=cv2.INTER_AREA).reshape(6, 32, 4, 32, 3)
        parts = crops.transpose(0, 2, 4, 1, 3).reshape(NUM_PARTS, 3, 32, 32)
        mask = np.zeros((NUM_PARTS, 32, 32), bool)
        for part in np.flatnonzero(rng.random(NUM_PARTS) < 0.6):
            y0, x0 = rng.integers(0, 12, 2)
            y1, x1 = rng.integers(20, 33, 2)
            mask[part, y0:y1, x0:x1] = True
        dsaps[i] = parts * mask[:, None]
        written[i] = mask
    keys = [it.key for it in items]
    stores = {}
    for comp in compressions:
        sf = folder / f"dsap-{comp or 'none'}"
        w = StoreWriter(sf, StoreSettings("bench", {}, 32, "dsap"), compression=comp)
        shards = 0
        for s in range(0, n, shard_size):
            w.write_shard(shards, keys[s : s + shard_size], dsaps[s : s + shard_size], written[s : s + shard_size],
                          np.ones(min(shard_size, n - s), bool))
            shards += 1
        w.write_manifest("bench", keys, shards)
        stores[comp or "none"] = sf
    return items, stores


def loader_rate(items, folder: Path, store_folder: Path | InMemoryDSAP | None, workers: int, samples: int,
                batch: int = 64, height: int = 256, width: int = 128, dsap_reader: str = "worker",
                main_seconds: list | None = None) -> float:
    """Samples/s of the training DataLoader over ``samples`` items (the first batch, worker start-up
    included, is not timed); with ``dsap_reader="main"`` the consumer reads each batch's DSAP in the
    timed loop (its seconds are appended to ``main_seconds``)."""
    from torch.utils.data import DataLoader

    from data.joint import JointDataset
    from data.runtime import worker_threads
    from data.store import DSAPStore
    from data.transforms import build_train_transform

    store = (store_folder if isinstance(store_folder, InMemoryDSAP)
             else DSAPStore(store_folder) if store_folder is not None else None)
    ds = JointDataset(items, folder, store, build_train_transform(height, width), use_dsap=store is not None,
                      dsap_reader=dsap_reader)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    order = (order * (samples // len(order) + 2))[: samples + batch]
    loader = DataLoader(ds, batch_size=batch, sampler=order, num_workers=workers, worker_init_fn=worker_threads,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)
    start, count, in_main = time.perf_counter(), 0, 0.0
    for b in it:
        if dsap_reader == "main":
            t = time.perf_counter()
            b = ds.read_dsap(b)
            in_main += time.perf_counter() - t
        count += b["image"].shape[0]
    rate = count / (time.perf_counter() - start)
    if main_seconds is not None:
        main_seconds.append(in_main / count)
    del it, loader
    if store is not None:
        store.close()
    return rate


def collate_costs(batch: int = 64, repeat: int = 30) -> dict[str, dict[str, float]]:
    """Microseconds per sample of stacking a batch as a DataLoader worker does (into fresh shared memory,
    ``default_collate``'s path inside a worker) and as the main process does (plain ``torch.stack``)."""
    from dsa.parts import NUM_PARTS

    def shared_stack(samples):
        elem = samples[0]
        storage = elem._typed_storage()._new_shared(sum(x.numel() for x in samples), device=elem.device)
        return torch.stack(samples, 0, out=elem.new(storage).resize_(len(samples), *elem.shape))

    out = {}
    for name, shape in (("image 3x256x128", (3, 256, 128)), ("dsap 24x3x32x32", (NUM_PARTS, 3, 32, 32))):
        samples = [torch.zeros(shape, dtype=torch.uint8) for _ in range(batch)]
        times = {}
        for label, fn in (("shared_us", shared_stack), ("plain_us", torch.stack)):
            fn(samples)
            t = time.perf_counter()
            for _ in range(repeat):
                fn(samples)
            times[label] = (time.perf_counter() - t) / repeat / batch * 1e6
        out[name] = times
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few hundred samples (seconds)")
    ap.add_argument("--images", type=int, default=None, help="images in the synthetic dataset (default 2000; quick 256)")
    ap.add_argument("--samples", type=int, default=None, help="samples timed per setting (default 1536; quick 256)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (1: the per-worker rate)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds, medians kept (default 7; quick 2)")
    ap.add_argument("--threads", type=int, default=0, help="main-process threads (0: the thread policy)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "loader.json"))
    args = ap.parse_args()
    from data.io import atomic_write_json
    from data.runtime import apply_threads, available_cores

    apply_threads(args.threads, args.workers)
    n = args.images or (256 if args.quick else 2000)
    samples = args.samples or (256 if args.quick else 1536)
    rounds = args.rounds or (2 if args.quick else 7)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        items, stores = make_dataset(Path(tmp), n)
        setup_s = time.perf_counter() - t
        sizes = {c: sum(p.stat().st_size for p in f.glob("*.h5")) / 2**20 for c, f in stores.items()}
        rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
        main_s: list[float] = []
        for rnd in range(rounds):  # each round runs every setting, in a rotated order
            for name in SETTINGS[rnd % len(SETTINGS):] + SETTINGS[: rnd % len(SETTINGS)]:
                main = name.endswith("main reads")
                sf = (None if name == "images" else InMemoryDSAP() if name.endswith("transfer only")
                      else stores["lz4"] if main else stores[name.rsplit(" ", 1)[1]])
                rates[name].append(loader_rate(items, Path(tmp), sf, args.workers, samples,
                                               dsap_reader="main" if main else "worker",
                                               main_seconds=main_s if main else None))
            print(f"  round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()) + " samples/s",
                  flush=True)
    # The machine is shared: a setting's rate is the median over rounds, and its cost against images only is
    # the median of the per-round ratios (each taken within one round, so slow spells cancel).
    rows = []
    main_us = float(np.median(main_s)) * 1e6
    image_us = 1e6 * max(1, args.workers) / float(np.median(rates["images"]))  # worker CPU time per sample
    for k in SETTINGS:
        ratios = [a / b for a, b in zip(rates["images"], rates[k])]
        # CPU time per sample: the workers' (images only x the median per-round ratio) plus, for "main
        # reads", the consumer's own reads
        cpu_us = image_us * float(np.median(ratios)) + (main_us if k.endswith("main reads") else 0.0)
        rows.append({"setting": k, "samples_per_s": float(np.median(rates[k])),
                     "samples_per_s_per_worker": float(np.median(rates[k])) / max(1, args.workers),
                     "time_over_images_only": float(np.median(ratios)),
                     "time_over_images_only_range": [min(ratios), max(ratios)],
                     "cpu_us_per_sample": cpu_us, "cpu_over_images_only": cpu_us / image_us, "rounds": rates[k]})
    print(f"\nloader, paper preset 256x128 + augmentation, batch 64, {args.workers} worker(s), {samples} samples, "
          f"median of {rounds} interleaved rounds; {available_cores()} cores, load average {load_before[0]:.2f} at start")
    print(f"  {'setting':26} {'samples/s':>10} {'per worker':>10} {'time vs images':>15} {'':19} {'CPU us':>7} {'CPU vs images':>13}")
    for r in rows:
        lo, hi = r["time_over_images_only_range"]
        print(f"  {r['setting']:26} {r['samples_per_s']:10.1f} {r['samples_per_s_per_worker']:10.1f} "
              f"{r['time_over_images_only']:14.2f}x  (rounds {lo:.2f}-{hi:.2f})  {r['cpu_us_per_sample']:7.0f} "
              f"{r['cpu_over_images_only']:12.2f}x")
    collate = collate_costs()
    print(f"  'main reads': the consuming process spent {main_us:.0f} us per sample reading DSAP (median over rounds)")
    print("  batch stacking per sample: " + "; ".join(
        f"{k} {v['shared_us']:.0f} us into shared memory (a worker), {v['plain_us']:.0f} us plain" for k, v in collate.items()))
    print(f"  store sizes: " + ", ".join(f"{c} {sizes[c]:.1f} MiB" for c in COMPRESSIONS) + f" for {n} images "
          f"(dataset written in {setup_s:.1f} s); targets: DSAP <= 1.10x, >= 300 samples/s per worker")
    result = {"benchmark": "loader", "quick": args.quick, "images": n, "samples": samples, "workers": args.workers,
              "rounds": rounds, "batch": 64, "size": [256, 128], "cores": available_cores(),
              "store_mib": sizes, "rows": rows, "collate_us_per_sample": collate,
              "main_reads_us_per_sample": main_us, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
