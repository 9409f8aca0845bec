"""Look inside a DSAP store: summary statistics, verification and montages.

- :func:`summarise` — settings, image count, found rate, per-part and per-group coverage (mean fraction
  of the S×S cells written, over all images and over the images where a person was found), problems.
- :func:`verify` — checksums, readability of every array, keys versus the dataset.
- :func:`draw_montage` — one PNG per image: the image, its part-label map (colour-coded with a
  legend), its 24 DSAP images labelled by part name (unwritten cells faded), and the 8 merged groups
  (each cell the average of the member parts' *written* cells, via :func:`dsa.dsap.merge_groups`, so
  front/back and left/right faces overlay as the DSAG-Stream's element-wise merge does).
- :func:`draw_coverage` — bar chart of per-part coverage, coloured by merged group.
- :func:`inspect_store` — all of it for ``python -m precompute inspect``: summary, verification, montages
  with part-label maps from the store's own estimator (:func:`label_map_estimator`).
"""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.io import ImageReadError, atomic_output, read_image
from data.store import DSAPStore, StoreError, describe_differences
from dsa.dsap import merge_groups
from dsa.parts import GROUP_NAMES, NUM_PARTS, PART_NAMES, PART_TO_GROUP, part_colours

log = logging.getLogger(__name__)

#: Faded display of unwritten (mean-filled) cells: blend towards white by this much.
FADE = 0.6


def store_warnings(settings: dict[str, Any]) -> list[str]:
    """What a reader must know before using a store, from its estimator settings: an estimator marks a store
    that is only fit for testing (e.g. DensePose with random weights) with a ``testing_only`` sentence."""
    note = settings.get("testing_only") if isinstance(settings, dict) else None
    return [f"this store is for testing only: {note}"] if note else []


def summarise(store: DSAPStore, dataset_keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Settings, counts, coverage tables and problems of ``store`` (JSON-able)."""
    found = store.table("found").astype(bool) if len(store) else np.zeros(0, bool)
    cov = store.table("coverage") if len(store) else np.zeros((0, NUM_PARTS), np.float32)
    mean_all = cov.mean(axis=0) if len(cov) else np.zeros(NUM_PARTS)
    mean_found = cov[found].mean(axis=0) if found.any() else np.zeros(NUM_PARTS)
    parts = [
        {"part": p + 1, "name": PART_NAMES[p + 1], "group": GROUP_NAMES[PART_TO_GROUP[p]],
         "coverage": round(float(mean_all[p]), 4), "coverage_found": round(float(mean_found[p]), 4)}
        for p in range(NUM_PARTS)
    ]
    groups = [
        {"group": name, "coverage": round(float(mean_all[PART_TO_GROUP == g].mean()), 4),
         "coverage_found": round(float(mean_found[PART_TO_GROUP == g].mean()), 4)}
        for g, name in enumerate(GROUP_NAMES)
    ]
    problems: dict[str, Any] = {"failures": store.failures}
    if dataset_keys is not None:
        in_store = set(store.keys)
        wanted = set(dataset_keys)
        missing, extra = sorted(wanted - in_store), sorted(in_store - wanted)
        problems.update(missing_keys=len(missing), missing_examples=missing[:5],
                        extra_keys=len(extra), extra_examples=extra[:5])
    m = store.manifest
    return {
        "folder": str(store.folder), "dataset": m.get("dataset"), "estimator": store.estimator, "kind": store.kind,
        "size": store.size, "settings": store.settings, "num_images": len(store), "num_found": int(found.sum()),
        "found_rate": round(float(found.mean()), 4) if len(found) else 0.0, "num_shards": len(m["shards"]),
        "summary": m.get("summary"), "parts": parts, "groups": groups, "problems": problems,
        "warnings": store_warnings(store.settings), "provenance": store.provenance,
    }


def format_summary(s: dict[str, Any]) -> str:
    """A readable text report of :func:`summarise`'s dict."""
    lines = [
        f"store      {s['folder']}",
        f"dataset    {s['dataset']}   estimator {s['estimator']} {s['settings']}   kind {s['kind']}   S={s['size']}",
        f"images     {s['num_images']} in {s['num_shards']} shards, person found in {s['num_found']} "
        f"({100 * s['found_rate']:.1f}%)",
    ]
    lines += [f"WARNING    {w}" for w in s.get("warnings", [])]
    lines += [f"computed   {provenance_line(r)}" for r in s.get("provenance", [])]
    lines += ["", f"{'part':>4}  {'name':<22} {'group':<11} {'coverage':>8} {'(found)':>8}"]
    for p in s["parts"]:
        lines.append(f"{p['part']:>4}  {p['name']:<22} {p['group']:<11} {100 * p['coverage']:>7.1f}% "
                     f"{100 * p['coverage_found']:>7.1f}%")
    lines += ["", f"{'group':<11} {'coverage':>8} {'(found)':>8}"]
    for g in s["groups"]:
        lines.append(f"{g['group']:<11} {100 * g['coverage']:>7.1f}% {100 * g['coverage_found']:>7.1f}%")
    pr = s["problems"]
    lines.append("")
    fails = pr["failures"]
    lines.append(f"failures   {len(fails)}" + "".join(f"\n  {f['key']}: {f['reason']}" for f in fails[:10]))
    if "missing_keys" in pr:
        lines.append(f"missing    {pr['missing_keys']} dataset images not in the store"
                     + (f" (e.g. {', '.join(pr['missing_examples'][:3])})" if pr["missing_keys"] else ""))
        lines.append(f"extra      {pr['extra_keys']} store keys not in the dataset"
                     + (f" (e.g. {', '.join(pr['extra_examples'][:3])})" if pr["extra_keys"] else ""))
    return "\n".join(lines)


def provenance_line(record: dict[str, Any]) -> str:
    """One provenance record of a store in a line: its shards, the process's threads, workers and batch size,
    and where the estimator's model files came from."""
    shards = record.get("shards", [])
    process = record.get("process") or {}
    versions = record.get("versions") or {}
    est = record.get("estimator") or {}
    parts = [f"{len(shards)} shard(s)"]
    if process:
        parts.append(f"{process.get('intra_op_threads')} thread(s) per process, {process.get('workers')} worker(s), "
                     f"batch {process.get('batch_size')}, rank {process.get('rank')}/{process.get('world_size')}")
    if versions:
        parts.append(f"torch {versions.get('torch')}")
    parts += [f"{k} {est[k]}" for k in ("config", "weights", "model_zoo") if est.get(k)]
    return "; ".join(parts) if len(parts) > 1 else parts[0] + " (no record: written by an older version)"


def verify(store: DSAPStore, dataset_keys: Sequence[str] | None = None, dataset_root: Path | None = None) -> list[str]:
    """Problems found by checking checksums, every array and (when given) the keys against the dataset,
    and (with ``dataset_root``) the images that changed since the store was computed."""
    problems = store.verify()
    if dataset_root is not None:
        stale = store.stale_keys(dataset_root, [k for k in (dataset_keys or store.keys) if k in store])
        if stale:
            problems.append(f"{len(stale)} images changed since the store was computed (e.g. {', '.join(stale[:3])}); "
                            f"rerun `make precompute` to recompute them")
    if dataset_keys is not None:
        keys = sorted(set(dataset_keys))
        missing = [k for k in keys if k not in store]
        extra = sorted(set(store.keys) - set(keys))
        if missing:
            problems.append(f"{len(missing)} of {len(keys)} dataset images missing from the store (e.g. {', '.join(missing[:3])})")
        if extra:
            problems.append(f"{len(extra)} store keys are not in the dataset (e.g. {', '.join(extra[:3])})")
    return problems


# --------------------------------------------------------------------------- the inspect command
#: Estimator options naming files that are unpickled or executed when the estimator is built (an apply_net
#: dump, detectron2 weights and configs). A store's manifest may come from anyone: these are taken from the
#: command line (``inspect -o``) only, never from the store's settings.
EXPLICIT_ONLY_OPTIONS = ("dump", "weights", "config")


class OtherModelError(StoreError):
    """``inspect -o config=… -o weights=…`` names another model than the one the store was computed with."""


def label_map_estimator(estimator: str, dataset_root: Path, settings: dict, options: dict[str, Any],
                        provenance: Sequence[dict] = ()) -> Any:
    """The store's estimator, rebuilt to draw part-label maps that match the store's DSAP images.

    The store's settings that are options of the estimator are reused (simulated errors, seeds, thresholds),
    except :data:`EXPLICIT_ONLY_OPTIONS`; ``options`` (``inspect -o``) override them. Returns ``None`` with a
    warning when it cannot be built: the montages are drawn without label maps rather than with wrong ones.
    An estimator whose model differs from the store's (its ``model_settings``, e.g. the SHA-256s of the
    config and weights) is refused with :class:`OtherModelError`, naming the files the store was computed
    with (from its ``provenance``); other differences are a warning."""
    from precompute.estimators import build_estimator, estimator_options

    if options:  # asked for explicitly: a wrong option is the user's to fix (one sentence, exit 2)
        unknown = sorted(set(options) - set(estimator_options(estimator)))
        if unknown:
            return build_estimator(estimator, dataset_root, **options)  # raises EstimatorError naming the options
    try:
        accepted = estimator_options(estimator)
        reused = {k: v for k, v in settings.items() if k in accepted and k not in EXPLICIT_ONLY_OPTIONS}
        est = build_estimator(estimator, dataset_root, **{**reused, **options})
    except Exception as e:  # noqa: BLE001 - the montage is still useful without the label map
        log.warning("montages without part-label maps: the %s estimator cannot be rebuilt (%s); pass its options "
                    "with -o KEY=VALUE", estimator, e)
        return None
    check_same_model(est, settings, provenance)
    return est


def check_same_model(est: Any, settings: dict, provenance: Sequence[dict] = ()) -> None:
    """Refuse an estimator whose model is not the store's; warn when only other settings differ."""
    ours = est.settings()
    keys = [k for k in getattr(est, "model_settings", ()) if k in settings]  # a store may predate a key
    model = describe_differences({k: settings[k] for k in keys}, {k: ours.get(k) for k in keys})
    if model:
        files = sorted({f"{r['estimator'].get(k)}" for r in provenance for k in ("config", "weights")
                        if isinstance(r.get("estimator"), dict) and r["estimator"].get(k)})
        where = f" (the store's provenance names {', '.join(files)})" if files else ""
        raise OtherModelError(
            f"the part-label maps would come from another model than the one the store was computed with: {model}; "
            f"pass the store's own config and weights with -o config=... -o weights=...{where}")
    rest = describe_differences(settings, ours)
    if rest:
        log.warning("the part-label maps are drawn with other settings than the store's: %s", rest)


def label_map(est: Any, image: Any, path: Path, key: str) -> Any:
    """The part-label map of one image (None when there is no estimator or it fails on this image)."""
    if est is None:
        return None
    try:
        iuv = est.estimate([image], [path], [key])[0]
    except Exception as e:  # noqa: BLE001
        log.warning("no part-label map for %s (%s)", key, e)
        return None
    return None if iuv is None else iuv.I



def inspect_store(store: DSAPStore, dataset: Any, *, check: bool = False, montage_keys: Sequence[str] = (),
                  montage_random: int = 0, seed: int = 0, out: Path | None = None,
                  options: dict[str, Any] | None = None, title: str = "") -> dict[str, Any]:
    """Summary of ``store`` against ``dataset`` (a ``ReidDataset``), its verification problems when asked
    (``check``: ``summary["verify"]``) and montages of the chosen and ``montage_random`` random keys
    (``summary["montages"]``: the files written, by default under ``STORE/inspect``)."""
    keys = [it.key for it in dataset.all_items()]
    summary = summarise(store, keys)
    if check:
        summary["verify"] = verify(store, keys, dataset.root)
    chosen = list(montage_keys)
    if montage_random:
        rng = np.random.default_rng(seed)
        chosen += [store.keys[i] for i in rng.choice(len(store), min(montage_random, len(store)), replace=False)]
    for key in chosen:
        if key not in store:
            raise StoreError(f"{key!r} is not a key of the store; keys are paths relative to the dataset folder")
    est = (label_map_estimator(store.estimator, dataset.root, store.settings, options or {}, store.provenance)
           if chosen else None)
    written_files = []
    for key in chosen:
        try:
            image = read_image(dataset.root / key)
        except ImageReadError as e:  # e.g. an image the run recorded as a failure
            log.warning("no montage for %s: %s", key, e.reason)
            continue
        labels = label_map(est, image, dataset.root / key, key)
        folder = out or store.folder / "inspect"
        path = draw_montage(folder / f"{safe_name(key)}.png", image, store.get(key), store.get_written(key), labels,
                            title=f"{title} / {store.estimator} ({store.kind})  {key}  found={store.found(key)}")
        written_files.append(str(path))
    summary["montages"] = written_files
    return summary


# --------------------------------------------------------------------------- figures
def _faded(dsap_chw: np.ndarray, written: np.ndarray) -> np.ndarray:
    img = dsap_chw.transpose(1, 2, 0).astype(np.float32) / 255.0
    return np.where(written[..., None], img, img * (1 - FADE) + FADE)


def draw_montage(
    out: str | Path,
    image: np.ndarray,
    dsap: np.ndarray,
    written: np.ndarray,
    labels: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Write a montage PNG: image, part-label map + legend, 24 DSAP images, 8 merged groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = part_colours() / 255.0
    fig = plt.figure(figsize=(17, 7.2), dpi=100)
    outer = fig.add_gridspec(1, 4, width_ratios=[1.25, 1.6, 4.4, 2.4], wspace=0.12)
    left = outer[0].subgridspec(2, 1, hspace=0.15)
    ax = fig.add_subplot(left[0])
    ax.imshow(image, interpolation="nearest")
    ax.set_title("image", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(left[1])
    present = []
    if labels is not None:
        ax.imshow(colours[labels], interpolation="nearest")
        present = [int(p) for p in np.unique(labels) if p > 0]
        ax.set_title("part labels", fontsize=9)
    else:
        ax.text(0.5, 0.5, "label map\nunavailable", ha="center", va="center", fontsize=9)
    ax.axis("off")
    lax = fig.add_subplot(outer[1])
    lax.axis("off")
    handles = [Patch(color=colours[p], label=f"{p:2d} {PART_NAMES[p]}") for p in range(1, NUM_PARTS + 1)]
    leg = lax.legend(handles=handles, loc="center left", fontsize=7, frameon=False, handlelength=1.2,
                     title="parts (bold: visible)", title_fontsize=8)
    for p, text in zip(range(1, NUM_PARTS + 1), leg.get_texts()):
        if p in present:
            text.set_fontweight("bold")
    cov = written.reshape(NUM_PARTS, -1).mean(axis=1)
    grid = outer[2].subgridspec(4, 6, hspace=0.55, wspace=0.1)
    for p in range(NUM_PARTS):
        ax = fig.add_subplot(grid[p // 6, p % 6])
        ax.imshow(_faded(dsap[p], written[p]), interpolation="nearest")
        name = "\n".join(textwrap.wrap(PART_NAMES[p + 1], 14)[:2])
        ax.set_title(f"{p + 1} {name}\n{100 * cov[p]:.0f}%", fontsize=6.5, color="black" if cov[p] else "grey")
        ax.set_xticks([]), ax.set_yticks([])
    merged, union = merge_groups(dsap, written)
    gcov = union.reshape(len(GROUP_NAMES), -1).mean(axis=1)
    grid = outer[3].subgridspec(4, 2, hspace=0.45, wspace=0.1)
    for g, name in enumerate(GROUP_NAMES):
        ax = fig.add_subplot(grid[g // 2, g % 2])
        ax.imshow(_faded(merged[g], union[g]), interpolation="nearest")
        ax.set_title(f"{name} {100 * gcov[g]:.0f}%", fontsize=7.5)
        ax.set_xticks([]), ax.set_yticks([])
    fig.text(0.5, 0.015, "DSAP images: rows = U, columns = V; faded cells were not written (mean fill).  "
             "Merged groups: average of the member parts' written cells (union shown).", ha="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def draw_coverage(out: str | Path, coverage: np.ndarray, title: str = "") -> Path:
    """Bar chart of per-part coverage (fraction of cells written), bars coloured by merged group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = [matplotlib.colormaps["tab10"](int(g)) for g in PART_TO_GROUP]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    ax.bar(np.arange(NUM_PARTS), 100 * np.asarray(coverage), color=colours)
    ax.set_xticks(np.arange(NUM_PARTS), [f"{p + 1} {PART_NAMES[p + 1]}" for p in range(NUM_PARTS)],
                  rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("cells written (%)")
    ax.set_ylim(0, 100)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=matplotlib.colormaps["tab10"](g), label=n) for g, n in enumerate(GROUP_NAMES)],
              fontsize=7, ncol=4, loc="upper right", frameon=False)
    ax.set_title(title or "per-part coverage", fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def _save(fig: Any, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def safe_name(key: str) -> str:
    """A file name for a dataset key (folders flattened)."""
    return key.replace("/", "__").rsplit(".", 1)[0]
