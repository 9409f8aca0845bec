"""Plot the gain study's diagnostics (``python -m studies.gain run --diagnostics N --snapshot-every M``).

Panels: the gradient norm each loss term sends into the MF-Stream's f_G and f_L over training, for
every configuration in the given results files; the feature norms of f and d; the accuracy of the
MF (kept), DSAG-only (d) and fused (z) features over training; the training loss::

    python -m studies.gain.plot_diagnostics --key synthetic-diagnostics --out studies/gain/diagnostics.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def smooth(y, k: int = 5):
    y = np.asarray(y, float)
    if len(y) < k:
        return y
    return np.convolve(y, np.ones(k) / k, mode="same")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", default=[str(Path(__file__).resolve().parent / "results.json")],
                    help="results JSON files with diagnostics [default: the study's results.json]")
    ap.add_argument("--key", default="synthetic-diagnostics")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "diagnostics.png"))
    args = ap.parse_args()
    runs = {}
    for path in args.results:
        entry = json.loads(Path(path).read_text())[args.key]
        for name, rs in entry["runs"].items():
            if rs and "diagnostics" in rs[0]:
                runs[name] = rs[0]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    styles = {}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ci, (name, r) in enumerate(runs.items()):
        styles[name] = colours[ci % len(colours)]
        diag = r["diagnostics"]
        steps = [d["step"] for d in diag]
        for ax, key in ((axes[0, 0], "f_G"), (axes[0, 1], "f_L")):
            terms = sorted({k.split("/")[1] for d in diag for k in d if k.startswith(f"grad_{key}/")})
            for ti, t in enumerate(terms):
                y = [d.get(f"grad_{key}/{t}", np.nan) for d in diag]
                if np.nanmax(y) <= 0:
                    continue
                ax.plot(steps, smooth(y), color=styles[name], ls=["-", "--", ":", "-."][ti % 4],
                        lw=1.2, label=f"{name}: {t}")
        for key, ls in (("f_G", "-"), ("d_G", "--"), ("f_L", "-."), ("d_L", ":")):
            if f"norm_{key}" in diag[0]:
                axes[0, 2].plot(steps, [d[f"norm_{key}"] for d in diag], color=styles[name], ls=ls,
                                label=f"{name}: |{key}|")
        snaps = r.get("snapshots", [])
        ep = [s["epoch"] for s in snaps]
        for key, ls in (("mf", "-"), ("d", "--"), ("z", ":")):
            if snaps and f"{key}_rank1" in snaps[0]:
                axes[1, 0].plot(ep, [100 * s[f"{key}_rank1"] for s in snaps], color=styles[name], ls=ls,
                                marker="o", ms=3, label=f"{name}: {key}")
                axes[1, 1].plot(ep, [100 * s[f"{key}_mAP"] for s in snaps], color=styles[name], ls=ls,
                                marker="o", ms=3, label=f"{name}: {key}")
        curve = r["curve"]
        axes[1, 2].plot([c["epoch"] for c in curve], [c["loss"] for c in curve], color=styles[name],
                        label=f"{name}: total loss")
        axes[1, 2].plot([c["epoch"] for c in curve], [10 * c["train_acc_f"] for c in curve], color=styles[name],
                        ls="--", label=f"{name}: train acc of f_G ×10")
    titles = ["gradient norm into f_G per weighted loss term", "gradient norm into f_L per weighted loss term",
              "mean feature norm", "Rank-1 (%) over training: mf (kept) / d / z", "mAP (%) over training",
              "training loss and accuracy"]
    xlabels = ["step", "step", "step", "epoch", "epoch", "epoch"]
    for ax, t, xl in zip(axes.flat, titles, xlabels):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    for ax in (axes[0, 0], axes[0, 1]):
        ax.set_yscale("log")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
