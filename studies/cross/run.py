"""Train the cross-dataset configurations over paired seeds, through the product's own trainer
(``train.run.train_run``) and evaluator (``evaluate.report.evaluate_sets``), and tabulate them on the
target set (and on the other set).

The configurations of one seed (every run ``RUNS_DIR/<prefix>-<config>-s<seed>`` is an ordinary run
folder, reused when it is complete and evaluated, resumed when it was interrupted):

- ``target``: trained on the target set B alone, the reference;
- ``target-steps``: B alone for about as many steps as the union: the recipe's epoch-based schedule
  (epochs, warm-up, decay step) stretched by the union's size over B's, so that a union's gain is not
  only its longer epochs;
- ``union``: trained on the union A+B (identities and cameras kept apart), the same recipe;
- ``other``: trained on A alone, and evaluated on B as well (train on A, test on B);
- ``finetune``: ``other`` fine-tuned on B for ``finetune_epochs`` (``--init``);
- ``target-short``: B alone from its initialisation for the same ``finetune_epochs``, the reference of
  ``finetune`` (``target`` is, when ``finetune_epochs`` equals ``epochs`` and ``target-short`` is not run).

A seed fixes every run's initialisation, batch order and augmentation, so each difference is taken seed
by seed, with a Student-t 95% interval over the seeds (``studies.gain.stats``).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from studies.gain.run import uptime
from studies.gain.stats import interval_text, paired

CONFIGS = ("target", "target-steps", "union", "other", "finetune", "target-short")
#: (configuration, its reference, the set both are scored on): the paired differences the study reports
PAIRS = (("union", "target", "target"), ("union", "target-steps", "target"), ("union", "other", "other"),
         ("other", "target", "target"), ("finetune", "target-short", "target"), ("finetune", "other", "target"))


@dataclass
class CrossStudy:
    """What one invocation trains and evaluates (``python -m studies.cross run --help``)."""

    other: str
    target: str
    seeds: list[int]
    root: str = "datasets"
    estimator: str | None = None
    tag: str | None = None
    preset: str = "bench"
    epochs: int | None = None
    finetune_epochs: int = 6
    overrides: list[str] = field(default_factory=list)
    configs: tuple[str, ...] = CONFIGS
    runs_dir: str = "runs"
    prefix: str = "cross"
    threads: int = 1
    workers: int = 0
    device: str = "cpu"

    def dataset(self, config: str) -> str:
        return {"target": self.target, "target-steps": self.target, "target-short": self.target,
                "finetune": self.target, "other": self.other, "union": f"{self.other}+{self.target}"}[config]

    def stretched(self) -> list[str]:
        """The ``--set`` pairs of ``target-steps``: the schedule's epochs stretched by the union's number of
        training images over the target's."""
        from data.datasets import build_dataset
        from dsa.config import resolve_config

        recipe = resolve_config(self.preset, [*self.overrides, *([f"recipe.epochs={self.epochs}"] if self.epochs
                                                                  else [])]).recipe
        sizes = [len(build_dataset(s, self.root).train) for s in (self.other, self.target)]
        r = sum(sizes) / sizes[1]
        return [f"recipe.epochs={max(1, round(recipe.epochs * r))}",
                f"recipe.warmup_epochs={round(recipe.warmup_epochs * r)}",
                f"recipe.lr_decay_step={max(1, round(recipe.lr_decay_step * r))}"]

    def per_dataset(self, value: str | None, config: str) -> str | None:
        """An estimator or store tag given per dataset (``A+B``): the union's both, the others' their own."""
        if value is None or "+" not in value or config == "union":
            return value
        a, b = value.split("+", 1)
        return a if config == "other" else b

    def test_sets(self, config: str) -> list[str]:
        """The sets a configuration is scored on: both for the runs that saw A, the target for the others."""
        return [self.other, self.target] if config in ("union", "other") else [self.target]

    def run_name(self, config: str, seed: int) -> str:
        return f"{self.prefix}-{config}-s{seed}"


def train_one(study: CrossStudy, config: str, seed: int) -> dict[str, Any]:
    """Train (or resume, or reuse) one configuration and seed, then score it on its sets."""
    from data.runs import RunFolder
    from evaluate.report import evaluate_sets, sets_path
    from train.run import RunOptions, train_run

    run = study.run_name(config, seed)
    short = config in ("finetune", "target-short")
    aliases = {"dataset": study.dataset(config), "estimator": study.per_dataset(study.estimator, config),
               "tag": study.per_dataset(study.tag, config), "seed": seed,
               "epochs": study.finetune_epochs if short else study.epochs}
    overrides = [*study.overrides, *(study.stretched() if config == "target-steps" else [])]
    opts = RunOptions(run_name=run, config=study.preset, overrides=tuple(overrides), root=study.root,
                      workers=study.workers, threads=study.threads, device=study.device, runs_dir=study.runs_dir,
                      init=study.run_name("other", seed) if config == "finetune" else None, progress=False,
                      aliases=aliases)
    print(f"== {run}: {config} on {study.dataset(config)}, seed {seed}", flush=True)
    load_before, t0 = uptime(), time.perf_counter()
    summary = train_run(opts)
    if summary.get("stopped_by") != "complete":
        raise SystemExit(f"{run} stopped ({summary.get('stopped_by')}); rerun the same command to resume it")
    folder = RunFolder.named(study.runs_dir, run)
    timing = folder.path / "study.json"
    if "seconds" in summary:  # trained now: the time and the machine's load around it
        timing.write_text(json.dumps({"train_s": round(time.perf_counter() - t0, 1), "uptime_before": load_before,
                                      "uptime_after": uptime()}))
    sets = study.test_sets(config)
    table = sets_path(folder, sets) if len(sets) > 1 else folder.eval_dir(sets[0]) / "metrics.json"
    if table.is_file() and table.stat().st_mtime >= folder.checkpoint_path.stat().st_mtime:  # evaluated already
        rows = json.loads(table.read_text())["sets"] if len(sets) > 1 else [json.loads(table.read_text())]
    else:
        rows = evaluate_sets(run, sets, study.root, runs_dir=study.runs_dir, device=study.device, num_pictures=0,
                             workers=0, progress=False)
    metrics = {spec: {"rank1": r["rank1"], "mAP": r["mAP"]} for spec, r in zip(sets, rows)}
    timed = json.loads(timing.read_text()) if timing.is_file() else {}
    train_s = timed.get("train_s")
    line = "  ".join(f"{spec}: R1 {100 * m['rank1']:.1f} mAP {100 * m['mAP']:.1f}" for spec, m in metrics.items())
    print(f"seed {seed} {config:<13} {line}  ({train_s or 0:.0f} s)", flush=True)
    return {"seed": seed, "run": run, "steps": summary["step"], "train_s": train_s,
            "load": [timed.get("uptime_before"), timed.get("uptime_after")], "metrics": metrics}


def summarise(study: CrossStudy, runs: dict[str, list[dict]]) -> tuple[dict, list[dict]]:
    """Per configuration and set the per-seed R1 / mAP lists, and the paired differences of :data:`PAIRS`."""
    table: dict[str, dict] = {}
    for config, records in runs.items():
        records = sorted(records, key=lambda r: r["seed"])
        table[config] = {"dataset": study.dataset(config), "seeds": [r["seed"] for r in records],
                         "runs": [r["run"] for r in records], "steps": [r["steps"] for r in records],
                         "train_s": [r["train_s"] for r in records], "load": [r["load"] for r in records],
                         "sets": {spec: {k: [r["metrics"][spec][k] for r in records] for k in ("rank1", "mAP")}
                                  for spec in study.test_sets(config)}}
    diffs = []
    for config, ref, role in PAIRS:
        spec = study.target if role == "target" else study.other
        if ref == "target-short" and ref not in table and study.finetune_epochs == study.epochs:
            ref = "target"  # the same budget: target is the reference of finetune
        if config in table and ref in table and spec in table[config]["sets"] and spec in table[ref]["sets"]:
            a, b = table[config], table[ref]
            seeds = [s for s in a["seeds"] if s in b["seeds"]]
            pick = lambda t, k: [t["sets"][spec][k][t["seeds"].index(s)] for s in seeds]  # noqa: E731
            diffs.append({"config": config, "reference": ref, "test_set": spec, "seeds": seeds,
                          **{k: paired(pick(a, k), pick(b, k)) for k in ("rank1", "mAP")}})
    return table, diffs


def format_table(entry: dict) -> str:
    """One row per configuration and test set (mean ± std over the seeds), then the paired differences."""
    lines = [f"{'configuration':<14}{'trained on':<44}{'tested on':<24}{'R1':>13}{'mAP':>13}{'steps':>7}{'train s':>9}"]
    for config, t in entry["table"].items():
        for spec, m in t["sets"].items():
            r1, mp = (100 * np.asarray(m[k]) for k in ("rank1", "mAP"))
            sd = (lambda x: x.std(ddof=1) if len(x) > 1 else 0.0)  # noqa: E731
            timed = [s for s in t["train_s"] if s is not None]  # a run trained before timings were kept has none
            secs = f"{np.mean(timed):.0f}" if timed else "-"
            steps = f"{np.mean(t['steps']):.0f}" if t.get("steps") else "-"
            lines.append(f"{config:<14}{t['dataset']:<44}{spec:<24}{r1.mean():>7.1f} ± {sd(r1):<3.1f}"
                         f"{mp.mean():>7.1f} ± {sd(mp):<3.1f}{steps:>7}{secs:>9}")
    n = max((len(t["seeds"]) for t in entry["table"].values()), default=0)
    lines.append(f"paired differences over {n} seed(s), mean and 95% interval:")
    for d in entry["paired_diffs"]:
        lines.append(f"  {d['config']} - {d['reference']} on {d['test_set']}: "
                     f"R1 {100 * d['rank1']['mean']:+.1f} {interval_text(d['rank1'])}, "
                     f"mAP {100 * d['mAP']['mean']:+.1f} {interval_text(d['mAP'])}")
    return "\n".join(lines)


def run_study(study: CrossStudy, command: str) -> dict[str, Any]:
    """Train and evaluate every configuration for every seed (seed-major; ``finetune`` after ``other``)."""
    from data.runtime import apply_threads

    unknown = [c for c in study.configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; choose from: {', '.join(CONFIGS)}")
    if "finetune" in study.configs and "other" not in study.configs:
        raise SystemExit("finetune starts from the other configuration's run: add `other` to --configs")
    apply_threads(study.threads, study.workers)
    load_before, t0 = uptime(), time.perf_counter()
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS if c in study.configs}
    for seed in study.seeds:
        for config in runs:
            runs[config].append(train_one(study, config, seed))
    table, diffs = summarise(study, runs)
    import torch

    return {"study": "cross", "other": study.other, "target": study.target, "estimator": study.estimator,
            "store_tag": study.tag, "preset": study.preset, "epochs": study.epochs,
            "finetune_epochs": study.finetune_epochs, "overrides": study.overrides, "seeds": study.seeds,
            "threads": study.threads, "workers": study.workers, "table": table, "paired_diffs": diffs,
            "total_s": round(time.perf_counter() - t0, 1), "uptime_before": load_before, "uptime_after": uptime(),
            "machine": platform.platform(), "torch": torch.__version__, "command": command}
