"""Gain benchmark (issue 14): do DSA-reID's kept MF-Stream features beat the same network trained alone?

Paired seeds: a seed fixes the shared initialisation (MF-Stream and its f classifiers are built once
from the seed and copied into every configuration) and the batch order and augmentation (the same
``PKSampler`` seed), so the configurations of one seed differ only in the DSAG-Stream and its losses.
Per configuration: mean ± std over seeds of Rank-1 / mAP of the MF features (the ones kept at
inference), the paired difference against ``two-branch`` with a 95% t-interval over seeds, the
DSAG-only d and fused z features as diagnostics, a whole-crop colour-histogram baseline and the
time.  The training loop is the repository's parts (``DSANet``, ``DSALoss`` with its switches,
``PKSampler`` + ``SeededBatches``, ``build_optimizer`` / ``build_scheduler``, the train transform) in a
plain loop with the data cached in memory, so that per-term gradient diagnostics and evaluation
snapshots can be taken.

Options are chosen with ``--split val`` (a validation split of the *training* identities: training
on the rest, one query per identity and camera, the other images the gallery); the test split is
reported once with ``--split test``.  Needs the synthetic dataset and its S=16 store::

    python -m data synth --root datasets
    python -m precompute run --dataset synthetic --root datasets --estimator synthetic --tag bench16 \\
        --size 16 -o miss=0.05 -o drop_part=0.1 -o label_noise=0.05 -o uv_jitter=0.02
    python bench/bench_reid_gain.py --split test --seeds 0 1 2 3 4 --configs two-branch dsa

``--diagnostics`` adds, per run, the gradient norm that each loss term sends into the MF-Stream's
features f_G / f_L, the feature norms, and evaluation snapshots every ``--snapshot-every`` epochs.
Results: ``bench/results/<--out>.json`` (the synthetic entry; other datasets' entries are kept).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from data.datasets import Item, build_dataset  # noqa: E402
from data.io import read_image  # noqa: E402
from data.sampler import PKSampler, SeededBatches  # noqa: E402
from data.store import DSAPStore, store_dir  # noqa: E402
from data.transforms import build_test_transform, build_train_transform  # noqa: E402
from paired import interval_text, paired_by_seed  # noqa: E402
from dsa.dsap import normalise_dsap  # noqa: E402
from dsa.losses import DSALoss  # noqa: E402
from dsa.model import DSANet  # noqa: E402
from dsa.config import get_preset  # noqa: E402
from dsa.transforms import normalise  # noqa: E402
from evaluate.metrics import evaluate_features  # noqa: E402
from train.schedule import build_optimizer, build_scheduler  # noqa: E402

#: configuration name -> (variant, recipe changes, store tag or None for --tag). "beyond the paper"
#: ones are recipe switches (dsa.presets.Recipe); "dsa-sum" is the other reading of the paper's
#: part ID losses (8 terms summed, each weighted 0.5, instead of their mean).
CONFIGS: dict[str, tuple[str, dict, str | None]] = {
    "two-branch": ("two-branch", {}, None),
    "baseline": ("baseline", {}, None),
    "dsa": ("dsa", {}, None),
    "dsa-global": ("dsa-global", {}, None),
    "dsa-local": ("dsa-local", {}, None),
    "dsa-concat": ("dsa-concat", {}, None),
    "two-branch-sum": ("two-branch", {"part_id_reduction": "sum"}, None),
    "dsa-sum": ("dsa", {"part_id_reduction": "sum"}, None),
    "dsa-direct-f": ("dsa", {"w_id_mf": 1.5, "w_triplet_mf": 1.5}, None),
    "dsa-drop-d": ("dsa", {"drop_d": 0.5}, None),
    "dsa-distill": ("dsa", {"w_distill": 1.0}, None),
    "dsa-dsag-first": ("dsa", {"dsag_first_epochs": 5}, None),
    "dsa-direct-f-drop-d": ("dsa", {"w_id_mf": 1.5, "w_triplet_mf": 1.5, "drop_d": 0.5}, None),
    "dsa-oracle": ("dsa", {}, "clean16"),
    "dsa-csa": ("dsa", {}, "csa16"),
}


# ----------------------------------------------------------------------------- data


def validation_split(ds, num_val_ids: int, seed: int = 14):
    """Training identities split into (train items relabelled 0..N-1, query, gallery): the last
    ``num_val_ids`` of a fixed permutation are held out; one query per held-out identity and camera."""
    pids = sorted({it.pid for it in ds.train})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(pids)[-num_val_ids:].tolist())
    keep = sorted(set(pids) - held)
    relabel = {p: i for i, p in enumerate(keep)}
    train = [Item(it.key, relabel[it.pid], it.camid) for it in ds.train if it.pid in relabel]
    query, gallery, seen = [], [], set()
    for it in sorted((it for it in ds.train if it.pid in held), key=lambda it: it.key):
        (gallery if (it.pid, it.camid) in seen else query).append(it)
        seen.add((it.pid, it.camid))
    return train, query, gallery, len(keep)


class Cache:
    """Decoded images and DSAP arrays in memory (the data set is small; the loop has no workers)."""

    def __init__(self, root: Path, store: DSAPStore | None) -> None:
        self.root, self.store = root, store
        self.images: dict[str, np.ndarray] = {}
        self.dsap: dict[str, np.ndarray] = {}

    def image(self, path: str) -> np.ndarray:
        if path not in self.images:
            self.images[path] = read_image(self.root / path)
        return self.images[path]

    def parts(self, path: str) -> np.ndarray:
        if path not in self.dsap:
            self.dsap[path] = self.store.get(path)
        return self.dsap[path]


def train_batch(cache: Cache, items, indices, transform, use_dsap: bool):
    """One training batch from ``SeededBatches`` entries (index, seed): the image transform runs under
    each item's own seed, exactly as ``data.joint.JointDataset`` does it."""
    images, dsap, pids = [], [], []
    for index, seed in indices:
        it = items[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            images.append(transform(cache.image(it.key)))
        if use_dsap:
            dsap.append(torch.from_numpy(cache.parts(it.key)))
        pids.append(it.pid)
    x = normalise(torch.stack(images))
    d = normalise_dsap(torch.stack(dsap)) if use_dsap else None
    return x, d, torch.tensor(pids)


@torch.no_grad()
def features(net: DSANet, cache: Cache, items, size, batch: int = 128) -> dict[str, np.ndarray]:
    """mf = f_G ⊕ f_L (kept at inference), d = d_G ⊕ d_L (DSAG-only), z = z_G ⊕ z_L (fused)."""
    net.eval()
    tf = build_test_transform(*size)
    out: dict[str, list[np.ndarray]] = {"mf": [], "d": [], "z": []}
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        x = normalise(torch.stack([tf(cache.image(it.key)) for it in chunk]))
        dsap = (normalise_dsap(torch.stack([torch.from_numpy(cache.parts(it.key)) for it in chunk]))
                if net.dsag is not None else None)
        o = net(x, dsap)
        for key, names in (("mf", ("f_G", "f_L")), ("d", ("d_G", "d_L")), ("z", ("z_G", "z_L"))):
            got = [o[n].flatten(1) for n in names if n in o]
            if got:
                out[key].append(torch.cat(got, 1).numpy())
    net.train()
    return {k: np.concatenate(v) for k, v in out.items() if v}


def evaluate_all(net, cache, query, gallery, size) -> dict[str, dict[str, float]]:
    fq, fg = features(net, cache, query, size), features(net, cache, gallery, size)
    res = {}
    for key in fq:
        m = evaluate_features(fq[key], fg[key], [i.pid for i in query], [i.pid for i in gallery],
                              [i.camid for i in query], [i.camid for i in gallery], metric="cosine")
        res[key] = {"rank1": m.cmc[1], "mAP": m.mAP}
    return res


def colour_histogram(cache: Cache, query, gallery) -> dict[str, float]:
    """Whole-crop HSV histograms of 4 stripes (``bench_synthetic.py``'s baseline) on this split."""
    from bench_synthetic import _histogram

    q = np.stack([_histogram(cache.root, i.key, False) for i in query])
    g = np.stack([_histogram(cache.root, i.key, False) for i in gallery])
    m = evaluate_features(q, g, [i.pid for i in query], [i.pid for i in gallery],
                          [i.camid for i in query], [i.camid for i in gallery], metric="euclidean")
    return {"rank1": m.cmc[1], "mAP": m.mAP}


# ----------------------------------------------------------------------------- training


def shared_init(cfg, num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """The seed's MF-Stream and f-classifier weights, the same for every configuration of the seed."""
    torch.manual_seed(seed)
    ref = DSANet(cfg, num_classes, variant="two-branch")
    return {k: v for k, v in ref.state_dict().items() if k.startswith(("mf.", "cls_fG.", "cls_fL."))}


def build_net(cfg, num_classes: int, variant: str, seed: int, shared: dict[str, torch.Tensor]) -> DSANet:
    torch.manual_seed(seed + 1_000_003)            # the parts the variants do not share
    net = DSANet(cfg, num_classes, variant=variant)
    own = net.state_dict()
    common = {k: v for k, v in shared.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(common, strict=False)
    return net


def grad_diagnostics(loss_fn: DSALoss, out: dict) -> dict[str, float]:
    """Norm of the gradient each weighted loss term sends into f_G and f_L (batch-summed Frobenius
    norm), and the mean per-sample norms of f and d."""
    targets = [t for t in (out.get("f_G"), out.get("f_L")) if t is not None]
    rec: dict[str, float] = {}
    for name, w, term in loss_fn.last_terms:
        grads = torch.autograd.grad(w * term, targets, retain_graph=True, allow_unused=True)
        for key, g in zip([k for k in ("f_G", "f_L") if out.get(k) is not None], grads):
            rec[f"grad_{key}/{name}"] = 0.0 if g is None else float(g.norm())
    for key in ("f_G", "f_L", "d_G", "d_L"):
        if key in out:
            rec[f"norm_{key}"] = float(out[key].detach().flatten(1).norm(dim=1).mean())
    return rec


def run_one(cfg, recipe, variant, seed, train_items, num_classes, cache, eval_sets, *, diagnostics: bool,
            diag_every: int, snapshot_every: int) -> dict:
    use_dsap = variant not in ("two-branch", "baseline")
    shared = shared_init(cfg, num_classes, seed)
    net = build_net(cfg, num_classes, variant, seed, shared)
    loss_fn = DSALoss(recipe, variant, seed=seed)
    sampler = PKSampler([it.pid for it in train_items], recipe.batch_p, recipe.batch_k, seed=seed)
    opt, transform = build_optimizer(net.parameters(), recipe), build_train_transform(
        cfg.height, cfg.width, pad=recipe.pad, flip_p=recipe.flip, erasing_p=recipe.random_erasing)
    sched = build_scheduler(opt, recipe)
    size = (cfg.height, cfg.width)
    curve, diag, snaps = [], [], []
    step, t0 = 0, time.perf_counter()
    net.train()
    for epoch in range(recipe.epochs):
        sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        n, correct, seen = 0, 0, 0
        for indices in SeededBatches(sampler):
            x, d, y = train_batch(cache, train_items, indices, transform, use_dsap)
            out = net(x, d, **loss_fn.step_kwargs(epoch, step))
            total, terms = loss_fn(out, y)
            if diagnostics and step % diag_every == 0:
                diag.append({"step": step, "epoch": epoch, **grad_diagnostics(loss_fn, out)})
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sampler.advance()
            step, n = step + 1, n + 1
            for k, v in {**terms, "loss": float(total.detach())}.items():
                sums[k] = sums.get(k, 0.0) + v
            logits = out["logits_fG"] if "logits_fG" in out else out["logits_fL"][0]
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        sched.step()
        curve.append({"epoch": epoch + 1, **{k: round(v / max(n, 1), 4) for k, v in sums.items()},
                      "train_acc_f": round(correct / max(seen, 1), 4)})
        if snapshot_every and ((epoch + 1) % snapshot_every == 0 or epoch + 1 == recipe.epochs):
            snaps.append({"epoch": epoch + 1, **flat(evaluate_all(net, cache, *eval_sets, size))})
            print(f"  epoch {epoch + 1}: loss {curve[-1]['loss']:.3f}, "
                  + ", ".join(f"{k} {100 * v:.1f}" for k, v in snaps[-1].items() if k != "epoch"), flush=True)
    train_s = time.perf_counter() - t0
    res = evaluate_all(net, cache, *eval_sets, size)
    out = {"seed": seed, "train_s": round(train_s, 1), "steps": step, "metrics": res, "curve": curve}
    if diagnostics:
        out["diagnostics"], out["snapshots"] = diag, snaps
    return out


def flat(res: dict) -> dict[str, float]:
    return {f"{k}_{m}": v for k, d in res.items() for m, v in d.items()}


# ----------------------------------------------------------------------------- statistics


def mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def summarise(runs: dict[str, list[dict]], reference: str, split: str, hist: dict, tag: str):
    """Per configuration the per-seed lists, the paired differences against ``reference`` and the
    verdict lines; prints the table.  Seeds are paired by value (only seeds every run has count)."""
    variants: dict[str, dict] = {}
    for name, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        v = {"variant": CONFIGS[name][0], "recipe_changes": CONFIGS[name][1],
             "store_tag": CONFIGS[name][2] or tag, "seeds": [r["seed"] for r in rs],
             "train_s": [r["train_s"] for r in rs]}
        for feat in ("mf", "d", "z"):
            if feat in rs[0]["metrics"]:
                v[f"{feat}_rank1"] = [r["metrics"][feat]["rank1"] for r in rs]
                v[f"{feat}_mAP"] = [r["metrics"][feat]["mAP"] for r in rs]
        variants[name] = v
    ref = variants.get(reference)
    diffs = paired_by_seed(variants, reference, {"rank1": "mf_rank1", "mAP": "mf_mAP"})
    n_seeds = max((len(v["seeds"]) for v in variants.values()), default=0)
    print(f"\n{split} split, MF features (kept at inference), {n_seeds} seeds, "
          f"mean ± std; Δ = paired difference vs {reference} with its 95% interval")
    print(f"{'configuration':<22}{'R1':>13}{'mAP':>13}{'ΔmAP [95% CI]':>26}{'d R1':>8}{'z R1':>8}{'train s':>9}")
    print(f"{'colour histogram':<22}{100 * hist['rank1']:>13.1f}{100 * hist['mAP']:>13.1f}")
    for name, v in variants.items():
        r1, mp = mean_std(v["mf_rank1"]), mean_std(v["mf_mAP"])
        dtxt = ""
        if name in diffs:
            dm = diffs[name]["mAP"]
            dtxt = f"{100 * dm['mean']:+.1f} {interval_text(dm)}"
        dr1 = f"{100 * np.mean(v['d_rank1']):.1f}" if "d_rank1" in v else "–"
        zr1 = f"{100 * np.mean(v['z_rank1']):.1f}" if "z_rank1" in v else "–"
        print(f"{name:<22}{100 * r1[0]:>7.1f} ± {100 * r1[1]:<3.1f}{100 * mp[0]:>7.1f} ± {100 * mp[1]:<3.1f}"
              f"{dtxt:>26}{dr1:>8}{zr1:>8}{np.mean(v['train_s']):>9.0f}")
    verdicts = []
    if ref is not None:
        spread = mean_std(ref["mf_mAP"])[1]
        for name, dd in diffs.items():
            dm = dd["mAP"]
            beats = dm["mean"] > spread and dm["n"] > 1
            verdicts.append(f"{name}: MF features {'BEAT' if beats else 'do NOT beat'} {reference} by more "
                            f"than the seed spread (mAP {100 * dm['mean']:+.1f} vs spread ±{100 * spread:.1f}; "
                            + (f"95% interval {interval_text(dm)}, {dm['n']} seeds)" if dm["ci95"]
                               else "1 seed: no interval)")
                            + ("; the interval still contains 0: not shown at this number of seeds"
                               if beats and dm["ci95"][0] <= 0 else ""))
    for line in verdicts:
        print(line)
    return variants, diffs, verdicts


def runs_from_entry(entry: dict) -> dict[str, list[dict]]:
    """The per-run records of a results entry, with each run's metrics taken from the variant lists."""
    runs: dict[str, list[dict]] = {}
    for name, rs in entry["runs"].items():
        v = entry["variants"][name]
        out = []
        for r in rs:
            i = v["seeds"].index(r["seed"])
            metrics = {f: {"rank1": v[f"{f}_rank1"][i], "mAP": v[f"{f}_mAP"][i]}
                       for f in ("mf", "d", "z") if f"{f}_rank1" in v}
            out.append({**r, "metrics": metrics})
        runs[name] = out
    return runs


def combine(paths: list[str], args) -> None:
    """Merge partial results (same split and settings, other seeds or configurations) into one entry."""
    entries = [json.loads(Path(p).read_text())[args.dataset_key] for p in paths]
    first = entries[0]
    for e in entries[1:]:
        for key in ("split", "preset", "recipe", "store_tag", "num_train_ids", "num_query"):
            if e[key] != first[key]:
                raise SystemExit(f"cannot combine: {key} differs ({e[key]!r} vs {first[key]!r})")
    runs: dict[str, list[dict]] = {}
    for e in entries:
        for name, rs in runs_from_entry(e).items():
            have = {r["seed"] for r in runs.get(name, [])}
            runs.setdefault(name, []).extend(r for r in rs if r["seed"] not in have)
    variants, diffs, verdicts = summarise(runs, args.reference, first["split"], first["colour_histogram"],
                                          first["store_tag"])
    entry = {**first, "seeds": sorted({r["seed"] for rs in runs.values() for r in rs}),
             "variants": variants, "reference": args.reference, "paired_diffs": diffs,
             "paired_diff": diffs.get("dsa"), "verdicts": verdicts,
             "total_s": round(sum(e["total_s"] for e in entries), 1),
             "uptime_before": [e["uptime_before"] for e in entries], "uptime_after": [e["uptime_after"] for e in entries],
             "command": [e["command"] for e in entries] + ["python bench/bench_reid_gain.py " + " ".join(sys.argv[1:])],
             "runs": {name: [{k: r[k] for k in r if k != "metrics"} for r in rs] for name, rs in runs.items()}}
    write_entry(args, entry, first["split"])


def write_entry(args, entry: dict, split: str) -> None:
    out = Path(args.results_dir) / f"{args.out or ('reid_gain' if split == 'test' else 'reid_gain_val')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(out.read_text()) if out.is_file() else {}
    data[args.dataset_key] = entry
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out} [{args.dataset_key}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="datasets")
    ap.add_argument("--tag", default="bench16", help="store tag of the synthetic estimator's DSAP store")
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--configs", nargs="+", default=["two-branch", "dsa"], choices=sorted(CONFIGS))
    ap.add_argument("--reference", default="two-branch", help="the configuration differences are taken against")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="recipe field overrides for every configuration, e.g. weight_decay=5e-5")
    ap.add_argument("--model", dest="model_overrides", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="model config overrides, e.g. base_width=16 trunk_blocks=1,1,1")
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--val-ids", type=int, default=50, help="training identities held out in --split val")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--diagnostics", action="store_true", help="per-term gradients, norms, snapshots")
    ap.add_argument("--diag-every", type=int, default=10, help="steps between gradient records")
    ap.add_argument("--snapshot-every", type=int, default=0, help="epochs between evaluation snapshots")
    ap.add_argument("--out", default=None, help="results name (default reid_gain / reid_gain_val)")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--dataset-key", default="synthetic", help="the entry of the results file written")
    ap.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                    help="merge these partial results files (other seeds/configurations) instead of training")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine, args)
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    preset = get_preset(args.preset)
    cfg, base_recipe = preset.model, preset.recipe
    if args.epochs is not None:
        base_recipe = base_recipe.replace(epochs=args.epochs)
    model_changes = {}
    for kv in args.model_overrides:
        key, _, value = kv.partition("=")
        model_changes[key] = (tuple(int(x) for x in value.split(",")) if key == "trunk_blocks"
                              else type(getattr(cfg, key))(value))
    if model_changes:
        cfg = dataclasses.replace(cfg, **model_changes)
    for kv in args.overrides:
        key, _, value = kv.partition("=")
        kind = type(getattr(base_recipe, key))
        base_recipe = base_recipe.replace(**{key: kind(value)})
    root = Path(args.root)
    ds = build_dataset("synthetic", root)
    if args.split == "val":
        train_items, query, gallery, num_classes = validation_split(ds, args.val_ids)
    else:
        train_items, query, gallery, num_classes = ds.train, ds.query, ds.gallery, ds.num_train_pids
    stores: dict[str, Cache] = {}

    def cache_for(tag: str) -> Cache:
        if tag not in stores:
            stores[tag] = Cache(ds.root, DSAPStore(store_dir(root, "synthetic", "synthetic", tag)))
        return stores[tag]

    load_before = uptime()
    print(f"{args.split} split: {num_classes} training ids ({len(train_items)} images), {len(query)} queries, "
          f"{len(gallery)} gallery; preset {preset.name}, {base_recipe.epochs} epochs; {load_before}", flush=True)
    hist = colour_histogram(cache_for(args.tag), query, gallery)
    print(f"colour histogram (whole crop): R1 {100 * hist['rank1']:.1f} mAP {100 * hist['mAP']:.1f}", flush=True)
    runs: dict[str, list[dict]] = {c: [] for c in args.configs}
    t_all = time.perf_counter()
    for seed in args.seeds:
        for name in args.configs:
            variant, changes, tag = CONFIGS[name]
            recipe = base_recipe.replace(**changes)
            cache = cache_for(tag or args.tag)
            r = run_one(cfg, recipe, variant, seed, train_items, num_classes, cache, (query, gallery),
                        diagnostics=args.diagnostics, diag_every=args.diag_every,
                        snapshot_every=args.snapshot_every)
            runs[name].append(r)
            m = r["metrics"]
            extra = "".join(f"  {k} R1 {100 * m[k]['rank1']:.1f}" for k in ("d", "z") if k in m)
            print(f"seed {seed} {name:<22} mf R1 {100 * m['mf']['rank1']:5.1f} mAP {100 * m['mf']['mAP']:5.1f}"
                  f"{extra}  ({r['train_s']:.0f} s, final loss {r['curve'][-1]['loss']:.3f}, "
                  f"train acc {r['curve'][-1]['train_acc_f']:.2f})", flush=True)

    variants, diffs, verdicts = summarise(runs, args.reference, args.split, hist, args.tag)
    entry = {
        "benchmark": "reid_gain", "split": args.split, "preset": preset.name, "model": cfg.to_dict(),
        "recipe": base_recipe.to_dict(), "store_tag": args.tag, "seeds": args.seeds,
        "num_train_ids": num_classes, "num_train_images": len(train_items), "num_query": len(query),
        "num_gallery": len(gallery), "threads": args.threads, "colour_histogram": hist,
        "variants": variants, "reference": args.reference, "paired_diffs": diffs,
        "paired_diff": diffs.get("dsa"), "verdicts": verdicts,
        "total_s": round(time.perf_counter() - t_all, 1), "uptime_before": load_before, "uptime_after": uptime(),
        "machine": platform.platform(), "torch": torch.__version__,
        "command": "python bench/bench_reid_gain.py " + " ".join(sys.argv[1:]),
        "runs": {name: [{k: r[k] for k in r if k != "metrics"} for r in rs] for name, rs in runs.items()},
    }
    write_entry(args, entry, args.split)


if __name__ == "__main__":
    main()
