"""``python -m studies.cross``: the cross-dataset study (see studies/cross/README.md).

    python -m studies.cross run --other synthetic:ids=first --target synthetic:ids=second --seeds 0 1 2 ...
    python -m studies.cross table --key synthetic-halves
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from data.runtime import quiet_openmp

quiet_openmp()

from studies.gain.run import write_entry  # noqa: E402

from .run import CONFIGS, CrossStudy, format_table, run_study  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m studies.cross", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate the configurations over paired seeds")
    r.add_argument("--other", required=True, help="the other dataset A (spec)")
    r.add_argument("--target", required=True, help="the target dataset B (spec): the test set that counts")
    r.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    r.add_argument("--root", default=os.environ.get("DSA_ROOT", "datasets"))
    r.add_argument("--estimator", default=None, help="default: the preset's (A+B for one per dataset)")
    r.add_argument("--tag", default=None, help="the store tag of every run (A+B for one per dataset)")
    r.add_argument("--preset", default="bench", help="preset or config file of every run")
    r.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    r.add_argument("--finetune-epochs", type=int, default=6, help="epochs of finetune and target-short")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a --set override of every run (repeatable)")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--prefix", default="cross", help="run names are PREFIX-CONFIG-sSEED")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--workers", type=int, default=0)
    r.add_argument("--device", default="cpu")
    r.add_argument("--results", default=str(RESULTS), help="the results file (JSON) the entry goes into")
    r.add_argument("--key", default=None, help="the entry of the results file (default: nothing is written)")
    t = sub.add_parser("table", help="print the table of a stored entry")
    t.add_argument("--results", default=str(RESULTS))
    t.add_argument("--key", required=True)
    args = ap.parse_args(argv)
    if args.command == "table":
        print(format_table(json.loads(Path(args.results).read_text())[args.key]))
        return
    study = CrossStudy(other=args.other, target=args.target, seeds=args.seeds, root=args.root,
                       estimator=args.estimator, tag=args.tag, preset=args.preset, epochs=args.epochs,
                       finetune_epochs=args.finetune_epochs, overrides=args.overrides, configs=tuple(args.configs),
                       runs_dir=args.runs_dir, prefix=args.prefix, threads=args.threads, workers=args.workers,
                       device=args.device)
    entry = run_study(study, "python -m studies.cross " + " ".join(sys.argv[1:] if argv is None else argv))
    print()
    print(format_table(entry))
    if args.key:
        write_entry(args.results, args.key, entry)
        print(f"wrote {args.results} [{args.key}]")


if __name__ == "__main__":
    main()
