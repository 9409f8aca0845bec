"""Benchmark: the training step, two-stream (``dsa``) vs. MF-only (``two-branch``), and the batched
DSAG-Stream vs. its per-branch Python loop (``DSAGStream.to_per_branch()``), in one run.

A step is the trainer's own step (``train.trainer.Trainer.run_step``, built by ``bench.steps``):
normalisation, forward, the recipe's loss, backward, Adam step (AMP and channels_last on CUDA), on random
inputs of the preset's size (data loading is not timed).  Each
measurement runs in a fresh subprocess so that its peak memory is its own: CUDA max allocated, or the
process's peak resident set size on CPU (which includes the Python/torch baseline of a few hundred MiB).
The time of a step is the median over its timed steps; each kind is measured ``--rounds`` times,
interleaved with the others, and the fastest round is kept (shared machines are noisy).

CPU: the ``small`` preset (``--quick``: ``tiny``) at a small batch.  With a CUDA device it also runs the
paper size: ``paper`` preset, batch 64 (P16×K4), 256×128, AMP.  Targets: two-stream step ≤ 2.5× the
baseline step; batched DSAG ≥ 3× the loop on GPU.  Prints a table and writes bench/results/train.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from data.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"


def measure(what: str, preset: str, batch: int, device: str, amp: bool, warmup: int, steps: int) -> dict:
    """Images/s and peak memory of one kind of step (runs inside the subprocess)."""
    from bench.steps import training_step

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    trainer, data = training_step(what, preset, batch, dev, amp=amp)
    b = int(data["image"].shape[0])
    for _ in range(warmup):
        trainer.run_step(data)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.run_step(data)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    memory = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"what": what, "preset": preset, "batch": b, "device": device, "amp": amp and cuda,
            "step_ms": 1000 * seconds, "images_per_s": b / seconds, "peak_memory_mb": memory / 2**20}


def run_one(threads: int | None = None, **kwargs) -> dict:
    """``measure`` in a fresh Python process (its own peak memory)."""
    cmd = [sys.executable, "-m", "bench.bench_train", "--one", json.dumps(kwargs)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"measurement {kwargs} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps: seconds")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="measure each step this many times, interleaved, keep the fastest (default 3; quick 1)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return

    settings = [("cpu", "tiny" if args.quick else "small", 8 if args.quick else 16, False,
                 1 if args.quick else 2, 2 if args.quick else 5)]
    if torch.cuda.is_available():
        settings.append(("cuda", "tiny" if args.quick else "paper", 16 if args.quick else 64, True,
                         3 if args.quick else 10, 5 if args.quick else 30))
    rounds = args.rounds or (1 if args.quick else 3)
    rows = []
    for device, preset, batch, amp, warmup, steps in settings:
        best: dict[str, dict] = {}
        for _ in range(rounds):  # interleaved rounds: a busy moment hits every kind of step alike
            for what in ("two-branch", "dsa", "dsag-loop", "dsag-batched"):
                r = run_one(what=what, preset=preset, batch=batch, device=device, amp=amp,
                            warmup=warmup, steps=steps, threads=args.threads)
                if what not in best or r["step_ms"] < best[what]["step_ms"]:
                    best[what] = r
        rows.extend(best.values())
    comparisons = []
    for device in sorted({r["device"] for r in rows}):
        by = {r["what"]: r for r in rows if r["device"] == device}
        comparisons.append({
            "device": device, "preset": by["dsa"]["preset"],
            "two_stream_over_baseline_step": by["dsa"]["step_ms"] / by["two-branch"]["step_ms"],
            "two_stream_over_baseline_memory": by["dsa"]["peak_memory_mb"] / by["two-branch"]["peak_memory_mb"],
            "batched_dsag_speedup": by["dsag-loop"]["step_ms"] / by["dsag-batched"]["step_ms"],
        })

    print(f"{'device':6} {'preset':6} {'step':13} {'batch':>5} {'ms/step':>9} {'img/s':>9} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['device']:6} {r['preset']:6} {r['what']:13} {r['batch']:5d} {r['step_ms']:9.1f} "
              f"{r['images_per_s']:9.1f} {r['peak_memory_mb']:9.0f}")
    for c in comparisons:
        print(f"{c['device']}: two-stream step = {c['two_stream_over_baseline_step']:.2f}x the MF-only step "
              f"(target <= 2.5x), memory {c['two_stream_over_baseline_memory']:.2f}x; batched DSAG "
              f"{c['batched_dsag_speedup']:.2f}x faster than the per-branch loop (target >= 3x on GPU)")
    result = {"benchmark": "train", "quick": args.quick, "rounds": rounds, "torch": torch.__version__,
              "machine": platform.platform(), "threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "rows": rows, "comparisons": comparisons}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS, result)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
