"""Re-ID benchmark: DSA-reID against the two-branch baseline, same preset and budget, several seeds.

Runs the real pipeline through its command-line programs (precompute → train → evaluate, MF-Stream
only at test time) and tabulates Rank-1/5/10 and mAP for both variants per seed, with the time each
run took.  Both variants see the same images, sampler seed, preset and number of epochs; the only
difference is the DSAG-Stream (and its fused losses) during training.

The first real-image benchmark (issue 6) is CUHK03 camera-pair-1 (``../shared/data/cuhk03-p1``, in the
Market-1501 layout) with the pose-derived estimator::

    mkdir -p /tmp/cuhk && ln -sfn "$PWD/../shared/data/cuhk03-p1" /tmp/cuhk/market1501
    python bench/bench_reid.py --dataset market1501 --root /tmp/cuhk --estimator pose \\
        --preset small --epochs 10 --seeds 0 1 --name cuhk03_p1

(the symlink keeps the DSAP store and the runs out of the read-only data folder).  Results go to
``bench/results/<name>.json``; runs to ``--runs-dir``.  A finished run is reused (training resumes
exactly, so an interrupted benchmark can be restarted with the same command), and so are its metrics
when they are newer than its checkpoint; ``train_s`` / ``eval_s`` are the summed times of this script's
calls on that run (``<run>/bench_times.json``).

From ImageNet on a CPU (issue 14): the MobileNetV2 preset, with the paired comparison written in the
``reid_gain`` schema (per dataset ``variants.<name>.mf_rank1`` / ``mf_mAP`` over seeds and
``paired_diff.mAP.ci95``, DSA minus two-branch, Student-t over the seeds)::

    python bench/bench_reid.py --dataset market1501 --root /tmp/cuhk --estimator pose \
        --preset mobilenet-cpu --pretrained imagenet --epochs 4 --seeds 0 1 2 --name cuhk03_p1_mobilenet \
        --gain-json reid_gain_cuhk03 --dataset-key cuhk03-p1
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sh(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def paired(a: list[float], b: list[float]) -> dict:
    """Paired difference a - b over seeds: mean, std and the Student-t 95% interval of the mean."""
    from scipy import stats

    diff = [x - y for x, y in zip(a, b)]
    n = len(diff)
    m = sum(diff) / n
    if n < 2:  # no spread from one seed: no interval (null in the JSON, never NaN)
        return {"per_seed": [round(d, 5) for d in diff], "mean": m, "std": None, "ci95": None, "n": n}
    s = math.sqrt(sum((d - m) ** 2 for d in diff) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1) * s / math.sqrt(n))
    return {"per_seed": [round(d, 5) for d in diff], "mean": m, "std": s, "ci95": [m - half, m + half], "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--root", default=os.environ.get("DSA_ROOT", "datasets"))
    ap.add_argument("--estimator", default="synthetic")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=["two-branch", "dsa"])
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--name", default=None, help="results name (default: the dataset)")
    ap.add_argument("--pretrained", default="none", help="MF-Stream weights: none, imagenet or a file")
    ap.add_argument("--train-args", default="", help="extra `python -m train` options, one string")
    ap.add_argument("--gain-json", default=None,
                    help="also write bench/results/<this>.json in the reid_gain schema (two-branch vs dsa)")
    ap.add_argument("--dataset-key", default=None, help="entry of the --gain-json file (default: --name)")
    ap.add_argument("--quick", action="store_true", help="1 epoch, 1 seed: checks the plumbing")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.seeds = 1, args.seeds[:1]
    name = args.name or args.dataset
    py = sys.executable
    tag = ["--tag", args.tag] if args.tag else []

    load_before = uptime()
    extra = shlex.split(args.train_args)
    init = "" if args.pretrained == "none" else f"-{Path(args.pretrained).stem}"
    t0 = time.time()
    if args.dataset == "synthetic":  # the embedded default: generated (or reused) first
        sh([py, "-m", "data", "synth", "--root", args.root])
    sh([py, "-m", "precompute", "run", "--dataset", args.dataset, "--root", args.root,
        "--estimator", args.estimator, *tag])
    precompute_s = time.time() - t0

    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            run = f"{name}-{args.preset}{init}-e{args.epochs}-{variant}-s{seed}"
            run_dir = Path(args.runs_dir) / run
            times_file = run_dir / "bench_times.json"  # time spent by this script's calls, summed
            times = json.loads(times_file.read_text()) if times_file.is_file() else {}
            ckpt = run_dir / "checkpoint.pt"
            before = ckpt.stat().st_mtime if ckpt.is_file() else None
            t = time.time()
            sh([py, "-m", "train", "--dataset", args.dataset, "--root", args.root,
                "--estimator", args.estimator, *tag, "--preset", args.preset, "--run", run,
                "--variant", variant, "--seed", str(seed), "--epochs", str(args.epochs),
                "--workers", str(args.workers), "--device", args.device, "--runs-dir", args.runs_dir,
                "--pretrained", args.pretrained, *extra])
            if ckpt.stat().st_mtime != before:  # it trained (a complete run's call is not counted)
                times["train_s"] = times.get("train_s", 0.0) + time.time() - t
            metrics_file = run_dir / "eval" / args.dataset / "metrics.json"
            if not (metrics_file.is_file() and metrics_file.stat().st_mtime > ckpt.stat().st_mtime):
                t = time.time()  # evaluated afresh unless the metrics are newer than the checkpoint
                sh([py, "-m", "evaluate", "run", "--run", run, "--dataset", args.dataset, "--root", args.root,
                    "--runs-dir", args.runs_dir, "--device", args.device, "--queries", "4"])
                times["eval_s"] = time.time() - t
            times_file.write_text(json.dumps(times))
            train_s, eval_s = times.get("train_s", 0.0), times.get("eval_s")
            m = json.loads((Path(args.runs_dir) / run / "eval" / args.dataset / "metrics.json").read_text())
            rows.append({"variant": variant, "seed": seed, "run": run, "rank1": m["rank1"],
                         "rank5": m["rank5"], "rank10": m["rank10"], "mAP": m["mAP"], "mINP": m.get("mINP"),
                         "train_s": round(train_s, 1), "eval_s": None if eval_s is None else round(eval_s, 1)})

    print(f"\n{name}: {args.dataset} / estimator {args.estimator} / preset {args.preset}, "
          f"{args.epochs} epochs, MF-Stream features at test time")
    print(f"{'variant':<12}{'seed':>5}{'R1':>8}{'R5':>8}{'R10':>8}{'mAP':>8}{'train s':>10}")
    for r in rows:
        print(f"{r['variant']:<12}{r['seed']:>5}{100 * r['rank1']:>8.1f}{100 * r['rank5']:>8.1f}"
              f"{100 * r['rank10']:>8.1f}{100 * r['mAP']:>8.1f}{r['train_s']:>10.0f}")
    summary = {}
    for v in args.variants:
        sel = [r for r in rows if r["variant"] == v]
        summary[v] = {k: sum(r[k] for r in sel) / len(sel) for k in ("rank1", "rank5", "rank10", "mAP")}
        s = summary[v]
        print(f"{v + ' mean':<17}{100 * s['rank1']:>8.1f}{100 * s['rank5']:>8.1f}{100 * s['rank10']:>8.1f}"
              f"{100 * s['mAP']:>8.1f}")

    out = HERE / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "reid", "name": name, "dataset": args.dataset, "estimator": args.estimator,
        "preset": args.preset, "pretrained": args.pretrained, "train_args": args.train_args,
        "epochs": args.epochs, "seeds": args.seeds, "device": args.device,
        "uptime_before": load_before, "uptime_after": uptime(),
        "machine": platform.platform(), "processor": platform.processor(),
        "precompute_s": round(precompute_s, 1), "rows": rows, "mean": summary,
        "command": " ".join(sys.argv),
    }, indent=2))
    print(f"wrote {out}")
    if args.gain_json:
        write_gain(args, rows, name, load_before, round(precompute_s, 1))


def write_gain(args: argparse.Namespace, rows: list[dict], name: str, load_before: str, precompute_s: float) -> None:
    """The paired comparison in the reid_gain schema (bench/results/reid_gain.json, issue 14)."""
    variants = {}
    for v in args.variants:
        sel = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["seed"])
        variants[v] = {"variant": v, "seeds": [r["seed"] for r in sel], "mf_rank1": [r["rank1"] for r in sel],
                       "mf_mAP": [r["mAP"] for r in sel], "train_s": [r["train_s"] for r in sel],
                       "eval_s": [r["eval_s"] for r in sel], "runs": [r["run"] for r in sel]}
    diffs = {}
    if "two-branch" in variants:
        ref = variants["two-branch"]
        for v, d in variants.items():
            if v != "two-branch" and len(d["seeds"]) == len(ref["seeds"]):
                diffs[v] = {"rank1": paired(d["mf_rank1"], ref["mf_rank1"]), "mAP": paired(d["mf_mAP"], ref["mf_mAP"])}
    entry = {
        "benchmark": "reid_gain", "split": "test", "dataset": args.dataset, "estimator": args.estimator,
        "preset": args.preset, "pretrained": args.pretrained, "train_args": args.train_args, "epochs": args.epochs,
        "seeds": args.seeds, "threads": "OMP_NUM_THREADS=" + str(os.environ.get("OMP_NUM_THREADS")),
        "variants": variants, "reference": "two-branch", "paired_diffs": diffs, "paired_diff": diffs.get("dsa"),
        "precompute_s": precompute_s, "uptime_before": load_before, "uptime_after": uptime(),
        "machine": platform.platform(), "command": "python bench/bench_reid.py " + " ".join(sys.argv[1:]),
    }
    out = HERE / "results" / f"{args.gain_json}.json"
    data = json.loads(out.read_text()) if out.is_file() else {}
    data[args.dataset_key or name] = entry
    out.write_text(json.dumps(data, indent=1))
    if "dsa" in diffs:
        dm = diffs["dsa"]["mAP"]
        ci = (f"[{100 * dm['ci95'][0]:+.2f}, {100 * dm['ci95'][1]:+.2f}] (95% CI, {dm['n']} seeds)"
              if dm["ci95"] else "(1 seed: no interval)")
        print(f"DSA - two-branch, MF mAP: {100 * dm['mean']:+.2f} {ci}")
    print(f"wrote {out} [{args.dataset_key or name}]")


if __name__ == "__main__":
    main()
