"""Training curves of finished runs (their ``log.jsonl`` epoch means) in one PNG: has training flattened?

One line per run, coloured by configuration (the run's variant and recipe overrides from its
``config.json``), one panel per loss term that any of the runs logged, the total first and the learning
rate last::

    python -m studies.gain.plot_curves runs/cuhk03-e12-*-s[012] --out studies/gain/cuhk03_p1_e12_curves.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data.runs import RunFolder, upgrade_config  # noqa: E402

#: fields of an epoch record that are bookkeeping, not curves; every other number is plotted (the loss
#: terms are whatever the run's loss logged: dsa.losses names them per variant and recipe switch)
NOT_CURVES = {"step", "epoch", "images_per_s", "memory_mb"}


def configuration(run: RunFolder) -> str:
    cfg = upgrade_config(run.read_config())
    overrides = (cfg.get("source") or {}).get("overrides") or {}
    extra = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()) if k.startswith("recipe."))
    return cfg["variant"] + (f" ({extra})" if extra else "")


def epoch_means(run: RunFolder) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in run.read_log():
        if rec.get("event") == "epoch_end":
            for term, value in rec.items():
                if term not in NOT_CURVES and isinstance(value, (int, float)) and not isinstance(value, bool):
                    out.setdefault(term, []).append((rec["epoch"] + 1, value))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title", default="training curves (epoch means)")
    args = ap.parse_args()
    runs = [RunFolder(p) for p in args.runs]
    curves = {r.name: (configuration(r), epoch_means(r)) for r in runs}
    found = list(dict.fromkeys(t for _, c in curves.values() for t in c))
    terms = sorted(found, key=lambda t: (t != "loss", t == "lr"))  # the total first, the learning rate last
    if not terms:
        raise SystemExit("error: none of these runs has an epoch_end record in its log.jsonl")
    configs = list(dict.fromkeys(cfg for cfg, _ in curves.values()))
    colours = {c: f"C{i}" for i, c in enumerate(configs)}
    cols = min(3, len(terms))
    rows = -(-len(terms) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        for name, (cfg, c) in curves.items():
            if term in c:
                x, y = zip(*c[term])
                ax.plot(x, y, color=colours[cfg], alpha=0.8, marker="o", markersize=2)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[c], label=c) for c in configs]
    fig.legend(handles=handles, loc="lower center", ncol=len(configs), fontsize=8)
    fig.suptitle(args.title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(runs)} runs, {len(configs)} configurations)")


if __name__ == "__main__":
    main()
