"""Benchmark: the thread policy (``data.runtime``) against torch's defaults, quiet and under load, in one run.

Three kinds of work, each measured in a fresh subprocess (the OpenMP runtime reads its environment once,
at start):

* ``train``: training steps of the ``tiny`` preset (two-stream, batch 8) fed by a DataLoader with 2
  workers running the paper's augmentation on random images (as ``python -m train`` does);
* ``features``: MF-Stream feature extraction of the ``small`` preset, batch 32, no workers;
* ``metrics``: CMC/mAP/mINP of a Market-size problem (3368 x 19732 distances; ``--quick``: 10x smaller).

Three settings: ``torch-default`` (torch's thread count, OpenMP's default spin-waiting, workers as torch
leaves them), ``policy`` (``data.runtime.quiet_openmp`` + ``apply_threads`` + ``worker_threads``: what
every entry point does) and ``policy-spin`` (the policy's thread counts without ``OMP_WAIT_POLICY=PASSIVE``,
to show what the wait policy alone does).  Each runs quiet and with ``--load`` busy processes that the
benchmark starts itself (pure-Python loops, one core each).  The machine's load average is recorded
before and after: on a shared machine "quiet" only means "no load of our own".

    python bench/bench_threads.py [--quick] [--load 2] [--out bench/results/threads.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKS = ("train", "features", "metrics")
SETTINGS = ("torch-default", "policy", "policy-spin")
THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "DSA_THREADS", "GOMP_SPINCOUNT")


class _Images:
    """Random 128x64 RGB images through the paper's training augmentation (+ random DSAP), like the
    training dataset without the files."""

    def __init__(self, n: int, height: int, width: int, dsap_size: int):
        from data.transforms import build_train_transform

        self.n, self.s = n, dsap_size
        self.transform = build_train_transform(height, width)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import numpy as np
        import torch

        rng = np.random.default_rng(i)
        image = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)
        dsap = torch.from_numpy(rng.integers(0, 256, (24, 3, self.s, self.s), dtype=np.uint8))
        return {"image": self.transform(image), "dsap": dsap, "pid": i % 4, "camid": 0, "index": i}


def _timed(fn, warmup: int, repeat: int, budget_s: float) -> list[float]:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def work(name: str, setting: str, quick: bool) -> dict:
    """One measurement (inside the subprocess; the environment was prepared by the parent)."""
    if setting == "policy":
        from data.runtime import quiet_openmp

        quiet_openmp()
    import torch

    from data.runtime import apply_threads, worker_threads

    workers = 2 if name == "train" else 0
    threads = apply_threads(workers=workers) if setting != "torch-default" else torch.get_num_threads()
    init = worker_threads if setting != "torch-default" else None
    torch.manual_seed(0)
    if name == "metrics":
        import numpy as np

        from evaluate.metrics import evaluate_distances

        q, g, ids = (337, 1973, 75) if quick else (3368, 19732, 751)
        rng = np.random.default_rng(0)
        qp, gp = rng.integers(0, ids, q), rng.integers(0, ids, g)
        qc, gc = rng.integers(0, 6, q), rng.integers(0, 6, g)
        dist = torch.rand(q, g) + 0.5 * torch.from_numpy(qp[:, None] != gp[None, :]).float()
        times = _timed(lambda: evaluate_distances(dist, qp, gp, qc, gc), 1, 5, 8.0)
        unit, per = "s / evaluation", 1
    elif name == "features":
        from dsa.model import DSANet
        from dsa.config import get_preset

        cfg = get_preset("small").model
        model = DSANet(cfg, 10, variant="two-branch").eval()
        x = torch.randn(32, 3, cfg.height, cfg.width)

        def step() -> None:
            with torch.no_grad():
                model(x)

        times = _timed(step, 1, 8 if not quick else 3, 8.0)
        unit, per = "s / batch of 32", 32
    else:
        from torch.utils.data import DataLoader

        from bench.steps import training_step
        from dsa.config import get_preset

        trainer, _ = training_step("dsa", "tiny", 8)
        cfg = get_preset("tiny").model
        b = 8
        steps = 12 if not quick else 4
        loader = DataLoader(_Images(b * (steps + 4), cfg.height, cfg.width, cfg.dsap_size), batch_size=b,
                            num_workers=workers, worker_init_fn=init, persistent_workers=False)
        it = iter(loader)

        def step() -> None:  # the trainer's own step on the loader's next batch
            trainer.run_step(next(it))

        times = _timed(step, 1, steps, 8.0)
        unit, per = "s / step (batch 8)", 8
    return {"work": name, "setting": setting, "threads": threads, "workers": workers,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "unit": unit,
            "median_s": statistics.median(times), "min_s": min(times), "samples": len(times),
            "items_per_s": per / statistics.median(times)}


def run_one(name: str, setting: str, quick: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "bench.bench_threads", "--one", json.dumps([name, setting, quick])]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name}/{setting} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_load(n: int) -> list[subprocess.Popen]:
    code = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small problems, few repeats (seconds)")
    ap.add_argument("--load", type=int, default=2, help="busy processes for the loaded rows")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "threads.json"))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(work(*json.loads(args.one))))
        return
    from data.runtime import available_cores

    load_before = os.getloadavg()
    rows = []
    for loaded in (False, True):
        procs = start_load(args.load) if loaded else []
        try:
            time.sleep(1.0 if loaded else 0.0)
            for name in WORKS:
                for setting in SETTINGS:
                    r = run_one(name, setting, args.quick)
                    r["load"] = f"{args.load} busy" if loaded else "quiet"
                    r["loadavg_1min"] = os.getloadavg()[0]
                    rows.append(r)
                    print(f"  {r['load']:7} {name:9} {setting:14} {r['median_s']:8.3f} s", flush=True)
        finally:
            stop_load(procs)
    by = {(r["load"], r["work"], r["setting"]): r for r in rows}
    ratios = []
    for load in sorted({r["load"] for r in rows}):
        for name in WORKS:
            d, p, s = (by[(load, name, k)]["median_s"] for k in SETTINGS)
            ratios.append({"load": load, "work": name, "default_over_policy": d / p,
                           "spin_over_passive": s / p})
    print(f"\nthread policy vs torch defaults: {available_cores()} cores available, "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'load':8} {'work':9} {'setting':14} {'threads':>7} {'workers':>7} {'OMP_WAIT_POLICY':>15} "
          f"{'median':>9} {'unit'}")
    for r in rows:
        print(f"{r['load']:8} {r['work']:9} {r['setting']:14} {r['threads']:7d} {r['workers']:7d} "
              f"{r['omp_wait_policy']:>15} {r['median_s']:9.3f} {r['unit']}")
    print(f"\n{'load':8} {'work':9} {'default / policy':>17} {'spin / passive':>15}")
    for c in ratios:
        print(f"{c['load']:8} {c['work']:9} {c['default_over_policy']:17.2f} {c['spin_over_passive']:15.2f}")
    from data.io import atomic_write_json

    result = {"benchmark": "threads", "quick": args.quick, "cores": available_cores(), "load_processes": args.load,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "rows": rows, "ratios": ratios}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
