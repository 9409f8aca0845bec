"""``python -m studies.gain``: the gain study (see studies/gain/README.md).

    python -m studies.gain run --configs two-branch dsa --seeds 0 1 2 [--split val] [--preset bench] ...
    python -m studies.gain table --results studies/gain/results.json --key synthetic
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from data.runtime import quiet_openmp

quiet_openmp()

from .configs import CONFIGS  # noqa: E402
from .run import Study, run_study, table, write_entry  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"


def claim_line(results: Path, key: str | None, configs: list[str]) -> list[str]:
    """The stored result of the full study (entry ``key``) for ``configs``: what a short run is read against."""
    if not key or not results.is_file():
        return []
    entry = json.loads(results.read_text()).get(key)
    if not entry:
        return []
    n = len(entry["seeds"])
    from .stats import verdict

    return [f"the study's {n}-seed result ({results.name}, entry {key}) for "
            + verdict(c, entry["reference"], entry["paired_diffs"][c]["mAP"])
            for c in configs if c in entry["paired_diffs"]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m studies.gain", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate configurations over paired seeds")
    r.add_argument("--configs", nargs="+", default=["two-branch", "dsa"], choices=sorted(CONFIGS))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    r.add_argument("--root", default=os.environ.get("DSA_ROOT", "datasets"))
    r.add_argument("--dataset", default="synthetic")
    r.add_argument("--estimator", default="synthetic")
    r.add_argument("--tag", default=None, help="the store tag every configuration reads (unless it names its own)")
    r.add_argument("--preset", default="bench", help="preset or config file of every run")
    r.add_argument("--pretrained", default=None, help="MF-Stream weights (default: the preset's)")
    r.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a --set override of every run (repeatable)")
    r.add_argument("--split", choices=["val", "test"], default="val",
                   help="val: a validation split of the training identities (choose options here); test: report")
    r.add_argument("--val-ids", type=int, default=50, help="training identities held out by --split val")
    r.add_argument("--reference", default="two-branch")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--prefix", default="gain", help="run names are PREFIX-CONFIG-sSEED")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--workers", type=int, default=0)
    r.add_argument("--device", default="cpu")
    r.add_argument("--diagnostics", type=int, default=0, metavar="STEPS",
                   help="gradient-norm records every STEPS steps (0: none)")
    r.add_argument("--snapshot-every", type=int, default=0, metavar="EPOCHS", help="evaluation snapshots")
    r.add_argument("--pictures", type=int, default=0, help="ranked-list pictures per MF evaluation")
    r.add_argument("--train-gap", action="store_true",
                   help="also score mf / d / z on the training images (how much each stream overfits)")
    r.add_argument("--results", default=str(RESULTS), help="the results file (JSON) the entry goes into")
    r.add_argument("--key", default=None, help="the entry of the results file (default: nothing is written)")
    r.add_argument("--claim", default=None, metavar="KEY",
                   help="also print the full study's stored result (entry KEY of studies/gain/results.json)")
    t = sub.add_parser("table", help="print the table and verdicts of a stored entry")
    t.add_argument("--results", default=str(RESULTS))
    t.add_argument("--key", required=True)
    args = ap.parse_args(argv)
    if args.command == "table":
        from .stats import verdict

        entry = json.loads(Path(args.results).read_text())[args.key]
        print(table(entry))
        for name, d in entry["paired_diffs"].items():
            print(verdict(name, entry["reference"], d["mAP"]))
        return
    study = Study(configs=args.configs, seeds=args.seeds, root=args.root, dataset=args.dataset,
                  estimator=args.estimator, tag=args.tag, preset=args.preset, pretrained=args.pretrained,
                  epochs=args.epochs, overrides=args.overrides, split=args.split, val_ids=args.val_ids,
                  reference=args.reference, runs_dir=args.runs_dir, prefix=args.prefix, threads=args.threads,
                  workers=args.workers, device=args.device, diagnostics=args.diagnostics,
                  snapshot_every=args.snapshot_every, pictures=args.pictures, train_gap=args.train_gap)
    entry = run_study(study, "python -m studies.gain " + " ".join(sys.argv[1:] if argv is None else argv))
    print()
    print(table(entry))
    for line in entry["verdicts"]:
        print(line)
    for line in claim_line(RESULTS, args.claim, [c for c in args.configs if c != args.reference]):
        print(line)
    if args.key:
        write_entry(args.results, args.key, entry)
        print(f"wrote {args.results} [{args.key}]")


if __name__ == "__main__":
    main()
