"""Train and evaluate the study's configurations over paired seeds, through the product's own trainer
(``train.run.train_run``) and evaluator (``evaluate.report.evaluate_run``), and tabulate them.

Each (configuration, seed) is an ordinary run folder ``RUNS_DIR/<prefix>-<config>-s<seed>``: a finished
run is evaluated again only when its metrics are missing, an interrupted one resumes exactly, and every
run can be evaluated, searched and exported afterwards like any other (``make eval RUN=...``).

Paired seeds: a seed fixes the MF-Stream's and its classifiers' initialisation (the same in every
variant: ``train.run.build_model``), the P×K batch order and every image's augmentation, so the
configurations of one seed differ only in the DSAG-Stream and its losses; the difference of each
configuration to the reference is taken seed by seed, with a Student-t 95% interval over the seeds.
"""
from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .configs import CONFIGS
from .stats import interval_text, paired_by_seed, verdict

FEATURES = {"mf": "", "d": "dsag", "z": "fused"}  # the study's feature name -> evaluate's setting folder


@dataclass
class Study:
    """What one invocation trains and evaluates (``python -m studies.gain run --help``)."""

    configs: list[str]
    seeds: list[int]
    root: str = "datasets"
    dataset: str = "synthetic"
    estimator: str = "synthetic"
    tag: str | None = None
    preset: str = "bench"
    pretrained: str | None = None
    epochs: int | None = None
    overrides: list[str] = field(default_factory=list)
    split: str = "test"
    val_ids: int = 50
    reference: str = "two-branch"
    runs_dir: str = "runs"
    prefix: str = "gain"
    threads: int = 1
    workers: int = 0
    device: str = "cpu"
    train_gap: bool = False       # also score mf / d / z on a retrieval split of the training images
    diagnostics: int = 0          # steps between gradient records (0: none)
    snapshot_every: int = 0       # epochs between evaluation snapshots (0: none)
    pictures: int = 0             # ranked-list pictures per MF evaluation

    @property
    def spec(self) -> str:
        """The dataset spec the runs train and evaluate on (the validation split: ``val_ids`` held out)."""
        if self.split == "test":
            return self.dataset
        sep = "," if ":" in self.dataset else ":"
        return f"{self.dataset}{sep}val_ids={self.val_ids}"

    def run_name(self, config: str, seed: int) -> str:
        return f"{self.prefix}-{config}-s{seed}"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def _metrics_fresh(run_dir: Path, spec: str, setting: str) -> dict | None:
    """The metrics of an earlier evaluation of this run's final checkpoint, or None."""
    from data.runs import RunFolder

    ckpt = run_dir / "checkpoint.pt"
    p = RunFolder(run_dir).eval_dir(spec) / setting / "metrics.json"
    if ckpt.is_file() and p.is_file() and p.stat().st_mtime >= ckpt.stat().st_mtime:
        return json.loads(p.read_text())
    return None


def train_one(study: Study, name: str, seed: int) -> dict[str, Any]:
    """Train (or resume, or reuse) one configuration and seed, then evaluate its features."""
    from data.datasets import build_dataset
    from data.runs import RunFolder
    from data.store import open_store
    from evaluate.report import evaluate_run
    from train.hooks import EvalHook
    from train.run import RunOptions, train_run

    from .hooks import GradDiagnostics, snapshot_evaluator

    sc = CONFIGS[name]
    run = study.run_name(name, seed)
    aliases = {"dataset": study.spec, "estimator": study.estimator, "tag": sc.tag or study.tag,
               "input_kind": sc.input, "variant": sc.variant, "pretrained": study.pretrained, "seed": seed,
               "epochs": study.epochs}
    opts = RunOptions(run_name=run, config=study.preset, overrides=(*study.overrides, *sc.overrides), root=study.root,
                      workers=study.workers, threads=study.threads, device=study.device, runs_dir=study.runs_dir,
                      aliases=aliases)
    folder = RunFolder(Path(study.runs_dir) / run)
    timing = folder.path / "study.json"
    hooks, diag, snaps = [], None, None
    if study.diagnostics:
        diag = GradDiagnostics(study.diagnostics)
        hooks.append(diag)
    if study.snapshot_every:
        from train.run import resolve

        cfg = resolve(opts)
        ds = build_dataset(study.spec, study.root)
        store = (open_store(study.root, study.spec, cfg.data.estimator, cfg.data.tag, kind=cfg.data.input,
                            size=cfg.model.dsap_size) if cfg.uses_dsap else None)
        snaps = EvalHook(study.snapshot_every, snapshot_evaluator(ds, store, (cfg.model.height, cfg.model.width)))
        hooks.append(snaps)
    print(f"== {run}: {name} ({sc.variant}{', ' + ', '.join(sc.overrides) if sc.overrides else ''}), seed {seed}",
          flush=True)
    t0 = time.perf_counter()
    summary = train_run(opts, hooks=hooks)
    if summary.get("stopped_by") != "complete":
        raise SystemExit(f"{run} stopped ({summary.get('stopped_by')}); rerun the same command to resume it")
    if "seconds" in summary:  # trained now (a resumed run: the time of this part only)
        timing.write_text(json.dumps({"train_s": round(time.perf_counter() - t0, 1)}))
    record = {"seed": seed, "run": run, "steps": summary["step"],
              "train_s": json.loads(timing.read_text())["train_s"] if timing.is_file() else None}
    metrics = {}
    settings = ["mf"] + (["d", "z"] if CONFIGS[name].variant not in ("two-branch", "baseline") else [])
    for feat in settings:
        m = _metrics_fresh(folder.path, study.spec, FEATURES[feat])
        if m is None:
            m = evaluate_run(run, study.spec, study.root, runs_dir=study.runs_dir,
                             feature_set={"mf": "mf", "d": "dsag", "z": "fused"}[feat], device=study.device,
                             num_pictures=study.pictures if feat == "mf" else 0, workers=0)
        metrics[feat] = {"rank1": m["rank1"], "mAP": m["mAP"]}
    record["metrics"] = metrics
    if study.train_gap:
        record["train_metrics"] = training_split_metrics(study, run)
    record["curve"] = [{k: v for k, v in r.items() if k not in ("event", "step")}
                       for r in folder.read_log() if r.get("event") == "epoch_end"]
    if diag is not None:
        record["diagnostics"] = diag.records
    if snaps is not None:
        record["snapshots"] = snaps.history
    m = metrics["mf"]
    extra = "".join(f"  {k} R1 {100 * metrics[k]['rank1']:.1f}" for k in ("d", "z") if k in metrics)
    print(f"seed {seed} {name:<18} mf R1 {100 * m['rank1']:5.1f} mAP {100 * m['mAP']:5.1f}{extra}  "
          f"({record['train_s'] or 0:.0f} s)", flush=True)
    return record


def training_split_metrics(study: Study, run: str) -> dict[str, dict[str, float]]:
    """Rank-1 / mAP of mf, d and z on the run's own *training* images (the first image of each identity and
    camera a query, the rest the gallery): beside the test split's, the gap says how much a stream overfits."""
    from data.datasets import build_dataset
    from data.runs import open_checkpoint
    from data.store import open_store
    from dsa.model import build_dsanet
    from evaluate.metrics import evaluate_features

    from .hooks import stream_features

    ckpt = open_checkpoint(run, study.runs_dir)
    info = ckpt.info
    net = build_dsanet(info.model, info.num_classes, info.variant, ckpt.model_state)
    ds = build_dataset(study.spec, study.root)
    store = (open_store(study.root, study.spec, info.estimator, info.tag, kind=info.input_kind,
                        size=info.model.dsap_size) if net.dsag is not None else None)
    query, gallery, seen = [], [], set()
    for it in sorted(ds.train, key=lambda it: it.key):
        (gallery if (it.pid, it.camid) in seen else query).append(it)
        seen.add((it.pid, it.camid))
    fq = stream_features(net, ds.root, query, store, info.input_size)
    fg = stream_features(net, ds.root, gallery, store, info.input_size)
    out = {}
    for key in fq:
        m = evaluate_features(fq[key], fg[key], [i.pid for i in query], [i.pid for i in gallery],
                              [i.camid for i in query], [i.camid for i in gallery], metric="cosine")
        out[key] = {"rank1": m.cmc[1], "mAP": m.mAP}
    return out


def colour_histogram_baseline(study: Study) -> dict[str, float]:
    """Rank-1 and mAP of whole-crop colour histograms on the study's query and gallery."""
    from data.datasets import build_dataset
    from evaluate.baselines import colour_histogram_features
    from evaluate.metrics import evaluate_features

    ds = build_dataset(study.spec, study.root)
    q = colour_histogram_features(ds.root, [i.key for i in ds.query])
    g = colour_histogram_features(ds.root, [i.key for i in ds.gallery])
    m = evaluate_features(q, g, [i.pid for i in ds.query], [i.pid for i in ds.gallery],
                          [i.camid for i in ds.query], [i.camid for i in ds.gallery], metric="cosine")
    return {"rank1": m.cmc[1], "mAP": m.mAP}


def mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, float)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else 0.0)


def summarise(runs: dict[str, list[dict]], reference: str) -> tuple[dict, dict, list[str]]:
    """Per configuration the per-seed lists; the paired differences against ``reference``; the verdicts."""
    variants: dict[str, dict] = {}
    for name, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        v: dict[str, Any] = {"variant": CONFIGS[name].variant, "overrides": list(CONFIGS[name].overrides),
                             "store_tag": CONFIGS[name].tag, "seeds": [r["seed"] for r in rs],
                             "runs": [r["run"] for r in rs], "train_s": [r["train_s"] for r in rs]}
        for feat in ("mf", "d", "z"):
            if feat in rs[0]["metrics"]:
                v[f"{feat}_rank1"] = [r["metrics"][feat]["rank1"] for r in rs]
                v[f"{feat}_mAP"] = [r["metrics"][feat]["mAP"] for r in rs]
            if feat in rs[0].get("train_metrics", {}):
                v[f"train_{feat}_rank1"] = [r["train_metrics"][feat]["rank1"] for r in rs]
                v[f"train_{feat}_mAP"] = [r["train_metrics"][feat]["mAP"] for r in rs]
        variants[name] = v
    diffs = paired_by_seed(variants, reference, {"rank1": "mf_rank1", "mAP": "mf_mAP"})
    verdicts = [verdict(name, reference, d["mAP"]) for name, d in diffs.items()]
    return variants, diffs, verdicts


def table(entry: dict) -> str:
    """The study's table: MF features per configuration, the paired difference, d and z as diagnostics."""
    variants, diffs = entry["variants"], entry["paired_diffs"]
    n = max((len(v["seeds"]) for v in variants.values()), default=0)
    lines = [f"{entry['split']} split of {entry.get('dataset', 'synthetic')}, MF features (kept at inference), {n} seed(s), mean ± std; "
             f"Δ = paired difference vs {entry['reference']} with its 95% interval",
             f"{'configuration':<20}{'R1':>13}{'mAP':>13}{'ΔmAP [95% CI]':>32}{'d R1/mAP':>12}{'z R1/mAP':>12}"
             f"{'train s':>9}"]
    hist = entry.get("colour_histogram")
    if hist:
        lines.append(f"{'colour histogram':<20}{100 * hist['rank1']:>13.1f}{100 * hist['mAP']:>13.1f}")
    for name, v in variants.items():
        r1, mp = mean_std(v["mf_rank1"]), mean_std(v["mf_mAP"])
        dtxt = ""
        if name in diffs:
            dm = diffs[name]["mAP"]
            dtxt = f"{100 * dm['mean']:+.1f} {interval_text(dm)}"
        def pair(f: str) -> str:
            if f"{f}_rank1" not in v:
                return "–"
            return f"{100 * np.mean(v[f'{f}_rank1']):.1f}/{100 * np.mean(v[f'{f}_mAP']):.1f}" if f"{f}_mAP" in v \
                else f"{100 * np.mean(v[f'{f}_rank1']):.1f}"

        lines.append(f"{name:<20}{100 * r1[0]:>7.1f} ± {100 * r1[1]:<4.1f}{100 * mp[0]:>6.1f} ± {100 * mp[1]:<4.1f}"
                     f"{dtxt:>32}{pair('d'):>12}{pair('z'):>12}{np.mean([t or 0 for t in v.get('train_s', [0])]):>9.0f}")
        if "train_mf_rank1" in v:
            lines.append(f"{'  training images':<20}{100 * np.mean(v['train_mf_rank1']):>13.1f}"
                         f"{100 * np.mean(v['train_mf_mAP']):>13.1f}{'':>32}{pair('train_d'):>12}{pair('train_z'):>12}")
    return "\n".join(lines)


def run_study(study: Study, command: str) -> dict[str, Any]:
    """Train and evaluate every configuration for every seed (seed-major, so that an interrupted study has
    whole seeds), and return the results entry."""
    from data.runtime import apply_threads

    unknown = [c for c in study.configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; choose from: {', '.join(CONFIGS)}")
    apply_threads(study.threads, study.workers)
    load_before, t0 = uptime(), time.perf_counter()
    hist = colour_histogram_baseline(study)
    runs: dict[str, list[dict]] = {c: [] for c in study.configs}
    for seed in study.seeds:
        for name in study.configs:
            runs[name].append(train_one(study, name, seed))
    variants, diffs, verdicts = summarise(runs, study.reference)
    import torch

    return {"study": "gain", "split": study.split, "dataset": study.spec, "estimator": study.estimator,
            "store_tag": study.tag, "preset": study.preset, "pretrained": study.pretrained, "epochs": study.epochs,
            "overrides": study.overrides, "seeds": study.seeds, "threads": study.threads, "workers": study.workers,
            "reference": study.reference, "colour_histogram": hist, "variants": variants, "paired_diffs": diffs,
            "verdicts": verdicts, "total_s": round(time.perf_counter() - t0, 1), "uptime_before": load_before,
            "uptime_after": uptime(), "machine": platform.platform(), "torch": torch.__version__,
            "command": command,
            "runs": {name: [{k: r[k] for k in r if k != "metrics"} for r in rs] for name, rs in runs.items()}}


def write_entry(path: str | Path, key: str, entry: dict) -> None:
    """Put ``entry`` under ``key`` of the results file (other keys kept), atomically."""
    from data.io import atomic_write_json

    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = entry
    atomic_write_json(path, data)
