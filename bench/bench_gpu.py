"""GPU benchmark: the paper-size training step, evaluation and loader on one CUDA device, one command.

    make bench-gpu [OUT=folder]          # python3 bench/bench_gpu.py --out folder
    python3 bench/bench_gpu.py --cpu-dry-run --out /tmp/x   # the same code on CPU, tiny sizes (tests)

Needs only torch, torchvision, numpy, h5py, opencv (what a CUDA machine with the repo's runtime
dependencies has); no install, no network, no dataset: everything is generated.  Designed to finish in
under 8 minutes on one H100/H200.  Measures, each in this process, one after another:

1. the ``paper`` preset's training step (two-stream, batch 64 = P16 x K4, 256x128, Adam, the recipe's
   losses), channels_last, autocast fp16 (with GradScaler) and bf16, eager and ``torch.compile``;
2. the two-stream step vs. the MF-only (``two-branch``) step, and the batched DSAG-Stream vs. its
   per-branch loop (fp16 eager);
3. Market-size evaluation on the GPU: 3368 x 19732 cosine distances of 2048-d features + CMC/mAP/mINP;
4. the loader's feeding rate from a synthetic Market-size DSAP store (12,936 images, lz4, or lzf where hdf5plugin is missing) with one
   DataLoader worker per available CPU core (``bench_loader``'s dataset and loader);
5. the projected time of the full paper recipe (320 epochs x 12,936 images) from the slower of the
   best step and the loader.

Writes ``gpu.json`` and ``gpu.txt`` (the table) to ``--out``.  A section that fails is recorded with
its error and the others still run.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


from data.runtime import quiet_openmp  # noqa: E402

quiet_openmp()

import torch  # noqa: E402

MARKET_TRAIN, PAPER_EPOCHS = 12936, 320


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def train_step(what: str, preset: str, batch: int, dev: torch.device, dtype: str, compile_: bool,
               channels_last: bool, warmup: int, steps: int) -> dict:
    """Median ms of the trainer's own step (``Trainer.run_step``: forward, loss, backward, Adam) on random
    inputs; channels_last is what the trainer uses on CUDA."""
    from bench.steps import training_step

    amp_dtype = {"fp16": "float16", "bf16": "bfloat16"}.get(dtype)
    trainer, data = training_step(what, preset, batch, dev, amp=amp_dtype is not None,
                                  amp_dtype=amp_dtype or "float16", compile=compile_)
    b = int(data["image"].shape[0])
    t0 = time.perf_counter()
    for _ in range(warmup):
        last = trainer.run_step(data)
    _sync(dev)
    warm_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        last = trainer.run_step(data)
        _sync(dev)
        times.append(time.perf_counter() - t)
    ms = 1000 * statistics.median(times)
    return {"what": what, "preset": preset, "batch": b, "dtype": dtype, "compile": compile_,
            "channels_last": trainer.channels_last, "step_ms": ms, "images_per_s": b / ms * 1000,
            "warmup_s": warm_s, "loss_finite": bool(all(map(math.isfinite, last.values()))),
            "peak_memory_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}


def evaluation(dev: torch.device, q: int, g: int, dim: int) -> dict:
    import numpy as np

    from evaluate.metrics import evaluate_distances, pairwise_distance

    rng = np.random.default_rng(0)
    ids = max(10, g // 26)
    qp, gp = rng.integers(0, ids, q), rng.integers(0, ids, g)
    qc, gc = rng.integers(0, 6, q), rng.integers(0, 6, g)
    centres = torch.randn(ids, dim, device=dev)
    qf = centres[torch.from_numpy(qp).to(dev)] + 3 * torch.randn(q, dim, device=dev)
    gf = centres[torch.from_numpy(gp).to(dev)] + 3 * torch.randn(g, dim, device=dev)
    for _ in range(2):  # warm-up, then timed
        _sync(dev)
        t = time.perf_counter()
        dist = pairwise_distance(qf, gf, "cosine", device=dev)
        _sync(dev)
        t_dist = time.perf_counter() - t
        t = time.perf_counter()
        m = evaluate_distances(dist, qp, gp, qc, gc)
        _sync(dev)
        t_eval = time.perf_counter() - t
    return {"queries": q, "gallery": g, "dim": dim, "distance_s": t_dist, "metrics_s": t_eval, "mAP": m.mAP}


def loader(images: int, workers: int, samples: int) -> dict:
    from bench.bench_loader import loader_rate, make_dataset

    try:  # the store's default codec (lz4) needs hdf5plugin, which a bare CUDA machine may lack
        import hdf5plugin  # noqa: F401
        comp = "lz4"
    except ImportError:
        comp = "lzf"
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        items, stores = make_dataset(Path(tmp), images, compressions=(comp,))
        setup = time.perf_counter() - t
        main_s: list[float] = []  # training's path: workers send indices, the main process reads the DSAP
        rate = loader_rate(items, Path(tmp), stores[comp], workers, samples, dsap_reader="main", main_seconds=main_s)
    return {"images": images, "workers": workers, "samples": samples, "samples_per_s": rate, "compression": comp,
            "main_reads_us_per_sample": main_s[0] * 1e6,
            "per_worker": rate / max(1, workers), "dataset_setup_s": setup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu.json and gpu.txt")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every section on the CPU at tiny sizes (no torch.compile): a test of the script")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default 30; dry run 2)")
    ap.add_argument("--workers", type=int, default=0, help="loader workers (0: one per available core)")
    args = ap.parse_args()
    from data.runtime import apply_threads, available_cores

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("error: PyTorch sees no CUDA device; run on a GPU machine, or use --cpu-dry-run to test the script",
              file=sys.stderr)
        raise SystemExit(2)
    apply_threads()
    dev = torch.device("cpu") if dry else torch.device("cuda", 0)
    if not dry:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    preset, batch = ("tiny", 8) if dry else ("paper", 64)
    warmup, steps = (1, args.steps or 2) if dry else (10, args.steps or 30)
    compile_ok = not dry and not args.no_compile
    start = time.perf_counter()
    res: dict = {"benchmark": "gpu", "cpu_dry_run": dry, "torch": torch.__version__, "python": sys.version.split()[0],
                 "machine": platform.platform(), "cores": available_cores(),
                 "device": torch.cuda.get_device_name(0) if not dry else "cpu (dry run)",
                 "preset": preset, "batch": batch, "sections": {}, "errors": {}}

    def section(name: str, fn) -> None:
        t = time.perf_counter()
        try:
            res["sections"][name] = fn()
        except Exception as e:  # noqa: BLE001 - one failed section must not lose the others
            res["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        print(f"[{time.perf_counter() - start:6.1f} s] {name} done in {time.perf_counter() - t:.1f} s", flush=True)

    def steps_rows() -> list:
        rows = []
        for dtype in ("fp16", "bf16"):
            for comp in ((False, True) if compile_ok else (False,)):
                rows.append(train_step("dsa", preset, batch, dev, dtype, comp, True, warmup, steps))
        return rows

    section("train_step", steps_rows)
    section("streams", lambda: [train_step(w, preset, batch, dev, "fp16", False, True, warmup, steps)
                                for w in ("two-branch", "dsa", "dsag-loop", "dsag-batched")])
    section("evaluation", lambda: evaluation(dev, *((64, 400, 128) if dry else (3368, 19732, 2048))))
    workers = args.workers or (2 if dry else available_cores())
    section("loader", lambda: loader(*((48, workers, 96) if dry else (MARKET_TRAIN, workers, 16 * 64 * workers))))

    s = res["sections"]
    lines = [f"GPU benchmark: {res['device']}, torch {res['torch']}, {res['cores']} CPU cores"
             + ("  [CPU DRY RUN: not GPU figures]" if dry else ""),
             f"training step, {preset} preset, batch {batch} (channels_last):",
             f"  {'model':13} {'autocast':8} {'compile':7} {'ms/step':>9} {'img/s':>9} {'peak MiB':>9} {'warm-up s':>9}"]
    for r in s.get("train_step", []) + s.get("streams", []):
        peak = "" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        lines.append(f"  {r['what']:13} {r['dtype']:8} {str(r['compile']):7} {r['step_ms']:9.1f} "
                     f"{r['images_per_s']:9.1f} {peak:>9} {r['warmup_s']:9.1f}")
    derived = {}
    if "streams" in s:
        by = {r["what"]: r for r in s["streams"]}
        derived["two_stream_over_mf_only_step"] = by["dsa"]["step_ms"] / by["two-branch"]["step_ms"]
        derived["batched_dsag_speedup"] = by["dsag-loop"]["step_ms"] / by["dsag-batched"]["step_ms"]
        lines.append(f"  two-stream / MF-only step: {derived['two_stream_over_mf_only_step']:.2f}x (target <= 2.5x); "
                     f"batched DSAG {derived['batched_dsag_speedup']:.2f}x the per-branch loop (target >= 3x)")
    if "train_step" in s:
        best = min(s["train_step"], key=lambda r: r["step_ms"])
        derived["best_step"] = {k: best[k] for k in ("dtype", "compile", "step_ms", "images_per_s")}
        eager16 = next(r for r in s["train_step"] if r["dtype"] == "fp16" and not r["compile"])
        for r in s["train_step"]:
            r["speedup_vs_fp16_eager"] = eager16["step_ms"] / r["step_ms"]
        lines.append("  vs fp16 eager: " + ", ".join(f"{r['dtype']}{' compiled' if r['compile'] else ''} "
                                                     f"{r['speedup_vs_fp16_eager']:.2f}x" for r in s["train_step"]))
    if "evaluation" in s:
        e = s["evaluation"]
        lines.append(f"evaluation {e['queries']} x {e['gallery']}, {e['dim']}-d on {dev.type}: distances "
                     f"{e['distance_s']:.3f} s, CMC/mAP/mINP {e['metrics_s']:.3f} s")
    if "loader" in s:
        ld = s["loader"]
        lines.append(f"loader (synthetic store, {ld['images']} images, {ld['compression']}, paper augmentation): {ld['samples_per_s']:.0f} "
                     f"samples/s with {ld['workers']} workers ({ld['per_worker']:.0f} per worker)")
    if "best_step" in derived:
        feed = s["loader"]["samples_per_s"] if "loader" in s else float("inf")
        rate = min(derived["best_step"]["images_per_s"], feed)
        hours = PAPER_EPOCHS * MARKET_TRAIN / rate / 3600
        derived["projected_paper_recipe_h"] = hours
        derived["projected_rate_images_per_s"] = rate
        lines.append(f"projected full paper recipe ({PAPER_EPOCHS} epochs x {MARKET_TRAIN} images) at "
                     f"{rate:.0f} images/s (slower of best step and loader): {hours:.2f} h"
                     + ("  [dry-run sizes: meaningless]" if dry else ""))
    for name, err in res["errors"].items():
        lines.append(f"FAILED {name}: {err}")
    res["derived"] = derived
    res["total_s"] = time.perf_counter() - start
    lines.append(f"total {res['total_s']:.0f} s")
    try:
        res["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "gpu.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.txt'}")
    raise SystemExit(1 if res["errors"] else 0)


if __name__ == "__main__":
    main()
