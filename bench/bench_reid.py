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
        --preset mobilenet-cpu --pretrained imagenet --epochs 12 --seeds 0 1 2 --name cuhk03_p1_e12 \
        --gain-json reid_gain --dataset-key cuhk03-p1

A recipe switch is its own configuration: ``--label`` names it in the rows (the runs are still trained as
``--variants``).  ``--combine`` merges result files of the same dataset, preset and budget (for example one
per seed, or the baseline and a switch run separately) and writes the paired comparison, pairing by seed::

    python bench/bench_reid.py ... --variants dsa --train-args "--set recipe.drop_d=0.5" \
        --label dsa-drop-d --name cuhk03_p1_e12_dropd
    python bench/bench_reid.py --combine bench/results/cuhk03_p1_e12*.json \
        --gain-json reid_gain --dataset-key cuhk03-p1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from paired import interval_text, paired_by_seed  # noqa: E402


def sh(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def earlier_metrics(metrics_file: Path, ckpt: Path) -> dict | None:
    """An earlier evaluation's metrics, when it is newer than the checkpoint and was made with this
    benchmark's settings: MF-Stream features, no flip, no re-ranking (``evaluate run`` keeps the latest
    evaluation of a run, whatever its settings, and its metrics.json names them)."""
    if not (metrics_file.is_file() and metrics_file.stat().st_mtime > ckpt.stat().st_mtime):
        return None
    m = json.loads(metrics_file.read_text())
    return m if m.get("feature_set", "mf") == "mf" and not m.get("flip") and not m.get("rerank") else None


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
    ap.add_argument("--label", default=None,
                    help="configuration name in the rows (default: the variant; one variant only)")
    ap.add_argument("--combine", nargs="+", default=None, metavar="RESULTS_JSON",
                    help="train nothing: merge these result files and write --gain-json from them")
    ap.add_argument("--quick", action="store_true", help="1 epoch, 1 seed: checks the plumbing")
    args = ap.parse_args()
    if args.combine:
        if not args.gain_json:
            ap.error("--combine needs --gain-json")
        combine([Path(f) for f in args.combine], args.gain_json, args.dataset_key, HERE / "results")
        return
    if args.label and len(args.variants) != 1:
        ap.error("--label names one configuration: give one --variants")
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
            m = earlier_metrics(metrics_file, ckpt)
            if m is None:
                t = time.time()  # evaluated afresh unless the MF metrics are newer than the checkpoint
                sh([py, "-m", "evaluate", "run", "--run", run, "--dataset", args.dataset, "--root", args.root,
                    "--runs-dir", args.runs_dir, "--device", args.device, "--queries", "4"])
                times["eval_s"] = time.time() - t
                m = json.loads(metrics_file.read_text())
            times_file.write_text(json.dumps(times))
            train_s, eval_s = times.get("train_s", 0.0), times.get("eval_s")
            rows.append({"variant": args.label or variant, "train_variant": variant, "seed": seed, "run": run,
                         "rank1": m["rank1"],
                         "rank5": m["rank5"], "rank10": m["rank10"], "mAP": m["mAP"], "mINP": m.get("mINP"),
                         "train_s": round(train_s, 1), "eval_s": None if eval_s is None else round(eval_s, 1)})

    print(f"\n{name}: {args.dataset} / estimator {args.estimator} / preset {args.preset}, "
          f"{args.epochs} epochs, MF-Stream features at test time")
    print(f"{'variant':<12}{'seed':>5}{'R1':>8}{'R5':>8}{'R10':>8}{'mAP':>8}{'train s':>10}")
    for r in rows:
        print(f"{r['variant']:<12}{r['seed']:>5}{100 * r['rank1']:>8.1f}{100 * r['rank5']:>8.1f}"
              f"{100 * r['rank10']:>8.1f}{100 * r['mAP']:>8.1f}{r['train_s']:>10.0f}")
    summary = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
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
        "label": args.label, "epochs": args.epochs, "seeds": args.seeds, "device": args.device,
        "uptime_before": load_before, "uptime_after": uptime(),
        "machine": platform.platform(), "processor": platform.processor(),
        "precompute_s": round(precompute_s, 1), "rows": rows, "mean": summary,
        "command": " ".join(sys.argv),
    }, indent=2))
    print(f"wrote {out}")
    if args.gain_json:
        write_gain(args, rows, name, load_before, round(precompute_s, 1))


SAME_BUDGET = ("dataset", "estimator", "preset", "pretrained", "epochs")


def gain_entry(rows: list[dict], setup: dict, reference: str = "two-branch") -> dict:
    """The paired comparison in the reid_gain schema (bench/results/reid_gain.json, issue 14).

    Per configuration: seeds, MF Rank-1 and mAP over seeds, times and runs.  Every other configuration is
    paired with ``reference`` on the seeds both have (a seed fixes the shared initialisation and the
    batch order), DSA (or the switch) minus the reference."""
    variants = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
        sel = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["seed"])
        seeds = [r["seed"] for r in sel]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"configuration {v!r} has seed(s) twice: {seeds}")
        variants[v] = {"variant": v, "seeds": seeds, "mf_rank1": [r["rank1"] for r in sel],
                       "mf_mAP": [r["mAP"] for r in sel], "train_s": [r["train_s"] for r in sel],
                       "eval_s": [r["eval_s"] for r in sel], "runs": [r["run"] for r in sel]}
    diffs = paired_by_seed(variants, reference, {"rank1": "mf_rank1", "mAP": "mf_mAP"})
    return {"benchmark": "reid_gain", "split": "test", **setup,
            "seeds": sorted({s for v in variants.values() for s in v["seeds"]}),
            "variants": variants, "reference": reference, "paired_diffs": diffs, "paired_diff": diffs.get("dsa")}


def save_gain(entry: dict, gain_json: str, key: str, results: Path) -> None:
    out = results / f"{gain_json}.json"
    data = json.loads(out.read_text()) if out.is_file() else {}
    data[key] = entry
    out.write_text(json.dumps(data, indent=1))
    for v, d in entry["paired_diffs"].items():
        dm = d["mAP"]
        ci = interval_text(dm, 2) + (f" (95% CI, {dm['n']} seeds)" if dm["ci95"] else "")
        print(f"{v} - {entry['reference']}, MF mAP: {100 * dm['mean']:+.2f} {ci}")
    print(f"wrote {out} [{key}]")


def write_gain(args: argparse.Namespace, rows: list[dict], name: str, load_before: str, precompute_s: float) -> None:
    setup = {"dataset": args.dataset, "estimator": args.estimator, "preset": args.preset,
             "pretrained": args.pretrained, "train_args": args.train_args, "epochs": args.epochs,
             "threads": "OMP_NUM_THREADS=" + str(os.environ.get("OMP_NUM_THREADS")),
             "precompute_s": precompute_s, "uptime_before": load_before, "uptime_after": uptime(),
             "machine": platform.platform(), "command": "python bench/bench_reid.py " + " ".join(sys.argv[1:])}
    save_gain(gain_entry(rows, setup), args.gain_json, args.dataset_key or name, HERE / "results")


def combine(files: list[Path], gain_json: str, key: str | None, results: Path) -> dict:
    """Merge result files of one dataset, preset and budget into one reid_gain entry (pairs by seed)."""
    docs = [json.loads(f.read_text()) for f in files]
    first = docs[0]
    for f, d in zip(files, docs):
        differ = [k for k in SAME_BUDGET if d.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"error: {f} differs from {files[0]} in {', '.join(differ)}: "
                             "only runs of the same dataset, preset and budget are compared")
    rows = [r for d in docs for r in d["rows"]]
    setup = {**{k: first.get(k) for k in SAME_BUDGET},
             "train_args": {d["name"]: d.get("train_args", "") for d in docs},
             "machine": first.get("machine"),
             "load": {d["name"]: [d.get("uptime_before"), d.get("uptime_after")] for d in docs},
             "command": [d["command"] for d in docs] + ["python bench/bench_reid.py --combine "
                                                       + " ".join(str(f) for f in files)
                                                       + f" --gain-json {gain_json}"
                                                       + (f" --dataset-key {key}" if key else "")]}
    entry = gain_entry(rows, setup)
    save_gain(entry, gain_json, key or first["name"], results)
    return entry


if __name__ == "__main__":
    main()
