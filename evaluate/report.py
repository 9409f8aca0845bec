"""Evaluation of a run or a features file: metrics.json, the printed table, CMC plot, ranked lists.

Outputs of ``evaluate_run`` go to ``runs/<RUN>/eval/<dataset>/`` for the default settings (MF features,
no flip, no re-ranking) and to a sub-folder named after the settings otherwise (``fused/``, ``mf-flip/``;
:func:`evaluation_name`): ``features.h5``, ``metrics.json``, ``cmc.png`` and ``ranked/<query>.png``.  An
evaluation with other settings never overwrites another; metrics.json names every setting it was made with.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.datasets import build_dataset, split_union
from data.io import atomic_write_json, file_sha256
from data.names import dataset_dirname, derived_name, union_dirname
from data.runs import RunFolder, check_name, open_checkpoint
from data.runtime import default_workers, resolve_device
from data.store import describe_differences, open_store
from evaluate.features import (
    DSAP_FEATURE_SETS,
    EvaluationError,
    Features,
    ImageList,
    build_model,
    extract,
    load_features,
    now_iso,
    save_features,
)
from evaluate.metrics import SAME_CAMERA_JUNK, Metrics, distance_rows, evaluate_distances, evaluate_features
from evaluate.plots import plot_cmc, ranked_list
from evaluate.rerank import k_reciprocal_rerank

log = logging.getLogger(__name__)

RERANK = {"k1": 20, "k2": 6, "lambda": 0.3}
#: queries summed together (``evaluate_distances``' default, which the figures written so far used)
CHUNK = 128


def measure(feats: Features, distance: str = "cosine", rerank: bool = False, ap: str = "standard", *,
            pictures: Sequence[int] = (), block_size: int | None = None, max_memory: int | None = None,
            progress: bool = True) -> tuple[Metrics, dict[int, np.ndarray]]:
    """The metrics of a features set and the distance rows of the queries in ``pictures``.

    Without re-ranking the distances are streamed by blocks (``block_size`` queries, or as many as
    ``max_memory`` bytes hold: ``evaluate.metrics.evaluate_features``), never the whole matrix; re-ranking
    makes the whole re-ranked matrix (it refuses, with the memory it needs, where that does not fit)."""
    labels = (feats.q_pids, feats.g_pids, feats.q_camids, feats.g_camids)
    if rerank:
        dist = k_reciprocal_rerank(feats.query, feats.gallery, k1=RERANK["k1"], k2=RERANK["k2"],
                                   lambda_value=RERANK["lambda"], metric=distance, max_memory=max_memory,
                                   progress=progress)
        m = evaluate_distances(dist, *labels, protocol=feats.protocol, ap=ap, block_size=block_size)
        return m, {qi: dist[qi] for qi in pictures}
    m = evaluate_features(feats.query, feats.gallery, *labels, metric=distance, protocol=feats.protocol, ap=ap,
                          chunk_size=CHUNK, block_size=block_size, max_memory=max_memory, progress=progress)
    rows = distance_rows(feats.query, feats.gallery, list(pictures), distance) if pictures else []
    return m, dict(zip(pictures, rows))


def score(feats: Features, m: Metrics, *, distance: str, rerank: bool) -> dict[str, Any]:
    """metrics.json content for a features set and its metrics."""
    a = feats.attrs
    out = {
        "dataset": a.get("dataset", ""),
        "protocol": m.protocol,
        "feature_set": a.get("feature_set", ""),
        "feature_dim": int(feats.query.shape[1]),
        "flip": bool(a.get("flip", False)),
        "distance": distance,
        "rerank": dict(RERANK) if rerank else False,
        "ap": m.ap,
        "ap_definition": m.to_dict()["ap_definition"],
        "checkpoint": a.get("checkpoint", ""),
        "checkpoint_sha256": a.get("checkpoint_sha256", ""),
        "step": a.get("step", ""),
        "complete": _flag(a.get("complete", "")),
        "num_queries": m.num_queries,
        "num_evaluated": m.num_evaluated,
        "num_skipped": m.num_skipped,
        "num_gallery": int(len(feats.g_pids)),
        "rank1": m.cmc.get(1), "rank5": m.cmc.get(5), "rank10": m.cmc.get(10), "rank20": m.cmc.get(20),
        "mAP": m.mAP,
        "mINP": m.mINP,
        "cmc": m.cmc_curve,
        "created": now_iso(),
    }
    return out


def _flag(value: Any) -> bool | None:
    """A features file's ``complete`` attribute (None: not recorded)."""
    return None if value in ("", None) else bool(value)


def unfinished_note(name: str, r: dict[str, Any]) -> str | None:
    """The line that says a row's checkpoint belongs to an unfinished run, or None."""
    if r.get("complete") is False:
        return (f"note: {name} is a checkpoint of an unfinished run (step {r.get('step', '?')}): its figures are "
                f"not those of the trained network; finish the run (rerun `make train`) and evaluate again")
    return None


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """Side-by-side table of metrics dicts (percentages)."""
    cols = ["rank1", "rank5", "rank10", "rank20", "mAP", "mINP"]
    name_w = max([4] + [len(n) for n in rows])
    lines = [f"{'':{name_w}}  " + "  ".join(f"{c:>7}" for c in cols) + "  settings"]
    for name, r in rows.items():
        vals = "  ".join(f"{100 * r[c]:7.2f}" if isinstance(r.get(c), (int, float)) else f"{'-':>7}" for c in cols)
        rr = "+rerank" if r.get("rerank") else ""
        flip = "+flip" if r.get("flip") else ""
        settings = (f"{r.get('dataset', '')}/{r.get('protocol', '')} {r.get('feature_set', '')}{flip} "
                    f"{r.get('distance', '')}{rr} AP={r.get('ap', '')} q={r.get('num_evaluated')}"
                    f"(-{r.get('num_skipped')})")
        lines.append(f"{name:{name_w}}  {vals}  {settings}")
    notes = (unfinished_note(r.get("run") or name, r) for name, r in rows.items())
    lines += list(dict.fromkeys(n for n in notes if n))  # a run's note once, however many of its sets are rows
    return "\n".join(lines)


def evaluate_file(path: str | os.PathLike, *, distance: str = "cosine", rerank: bool = False,
                  ap: str = "standard", block_size: int | None = None, max_memory: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Metrics of a features file (no model, no images); ``block_size`` / ``max_memory``: see :func:`measure`."""
    feats = load_features(path)
    m, _ = measure(feats, distance, rerank, ap, block_size=block_size, max_memory=max_memory, progress=progress)
    out = score(feats, m, distance=distance, rerank=rerank)
    out["features_file"] = str(path)
    return out


def _pick_queries(keys: Sequence[str], num: int, chosen: Sequence[str] | None, seed: int = 0) -> list[int]:
    if chosen:
        index = {k: i for i, k in enumerate(keys)}
        missing = [k for k in chosen if k not in index]
        if missing:
            raise EvaluationError(f"{len(missing)} query key(s) are not in the query set, e.g. {missing[0]!r}.")
        return [index[k] for k in chosen]
    return sorted(random.Random(seed).sample(range(len(keys)), min(num, len(keys))))


def draw_ranked_lists(feats: Features, dist: Any, root: Path, out_dir: Path, queries: list[int],
                      top_k: int = 10) -> list[Path]:
    """One picture per query: query + top-k (green correct, red wrong, grey junk); ``dist[qi]`` is query
    ``qi``'s distance row (a matrix, or a dict of the drawn rows)."""
    written = []
    for qi in queries:
        order = np.argsort(dist[qi], kind="stable")[:top_k]
        status, captions = [], []
        for gi in order:
            same = feats.g_pids[gi] == feats.q_pids[qi]
            junk = same and feats.g_camids[gi] == feats.q_camids[qi] \
                and feats.protocol in SAME_CAMERA_JUNK
            status.append("junk" if junk else "correct" if same else "wrong")
            captions.append(f"{int(feats.g_pids[gi])} c{int(feats.g_camids[gi]) + 1}")
        name = Path(feats.q_keys[qi]).stem + ".png"
        path = out_dir / name
        ranked_list(root / feats.q_keys[qi], [root / feats.g_keys[i] for i in order], status, captions, path,
                    query_caption=f"{int(feats.q_pids[qi])} c{int(feats.q_camids[qi]) + 1}")
        written.append(path)
    return written


def evaluate_run(
    run: str,
    dataset: str | None,
    root: str | os.PathLike,
    *,
    runs_dir: str | os.PathLike = "runs",
    feature_set: str = "mf",
    distance: str = "cosine",
    rerank: bool = False,
    flip: bool = False,
    ap: str = "standard",
    num_pictures: int = 5,
    query_keys: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    workers: int | None = None,
    block_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Extract features with the run's checkpoint, score them, write the outputs; returns metrics.
    ``dataset`` None: the dataset the run was trained on.
    ``workers`` None: up to 8 DataLoader workers on a GPU, none on a CPU (the cores compute).
    ``block_size`` / ``max_memory``: the evaluation's blocks (:func:`measure`)."""
    device = resolve_device(device)
    if workers is None:
        workers = default_workers(device) if device.type == "cuda" else 0
    ckpt = open_checkpoint(run, runs_dir)
    ckpt_path, info = ckpt.path, ckpt.info
    if dataset is None:  # the dataset the run was trained on
        if not info.dataset:
            raise EvaluationError(f"The run {run!r} does not name the dataset it was trained on; pass --dataset.")
        if len(info.datasets) > 1:
            raise EvaluationError(f"The run {run!r} was trained on the union {info.dataset}; name the set to "
                                  f"evaluate on, or evaluate on all of them with evaluate_sets.")
        dataset = info.dataset
    if not info.complete:
        log.warning("%s is a checkpoint of an unfinished run (epoch %d, step %d): the figures are not final",
                    ckpt_path, info.epoch, info.step)
    model, size = build_model(ckpt, feature_set)
    ds = build_dataset(dataset, root)
    store = _open_store(ckpt, root, dataset, ds, feature_set) if feature_set in DSAP_FEATURE_SETS else None
    setting = evaluation_name(feature_set=feature_set, flip=flip, rerank=rerank, distance=distance, ap=ap)
    out_dir = RunFolder(ckpt_path.parent).eval_dir(dataset) / setting
    splits = {}
    for split, items in (("query", ds.query), ("gallery", ds.gallery)):
        keys = [it.key for it in items]
        data = ImageList(keys, size, root=ds.root, store=store, keys=keys)
        splits[split] = extract(model, data, batch_size=batch_size, device=device, flip=flip, workers=workers,
                                desc=f"{split} features", progress=progress)
    feats = Features(
        splits["query"], splits["gallery"],
        np.array([it.pid for it in ds.query]), np.array([it.pid for it in ds.gallery]),
        np.array([it.camid for it in ds.query]), np.array([it.camid for it in ds.gallery]),
        [it.key for it in ds.query], [it.key for it in ds.gallery],
        attrs={"checkpoint": str(ckpt_path), "checkpoint_sha256": file_sha256(ckpt_path),
               "step": info.step, "epoch": info.epoch, "complete": bool(info.complete),
               "feature_set": feature_set, "flip": bool(flip), "dataset": dataset, "protocol": ds.protocol,
               "height": size[0], "width": size[1], "created": now_iso()},
    )
    save_features(out_dir / "features.h5", feats)
    picks = _pick_queries(feats.q_keys, num_pictures, query_keys)
    m, dist = measure(feats, distance, rerank, ap, pictures=picks, block_size=block_size, max_memory=max_memory,
                      progress=progress)
    metrics = score(feats, m, distance=distance, rerank=rerank)
    metrics.update(run=str(run), features_file=str(out_dir / "features.h5"), setting=setting or "default")
    plot_cmc({f"{Path(str(run)).name} ({feature_set})": metrics["cmc"]}, out_dir / "cmc.png",
             title=f"CMC: {dataset} ({ds.protocol})")
    metrics["ranked_lists"] = [str(p) for p in draw_ranked_lists(feats, dist, ds.root, out_dir / "ranked", picks)]
    atomic_write_json(out_dir / "metrics.json", metrics)
    log.info("evaluated %s on %s: rank-1 %.2f%%, mAP %.2f%% (%d queries, %d skipped) -> %s", run, dataset,
             100 * metrics["rank1"], 100 * metrics["mAP"], metrics["num_evaluated"], metrics["num_skipped"], out_dir)
    return metrics


def evaluation_name(*, feature_set: str = "mf", flip: bool = False, rerank: bool = False, distance: str = "cosine",
                    ap: str = "standard") -> str:
    """The sub-folder of ``eval/<dataset>/`` that an evaluation with these settings writes: ``""`` for the
    defaults (MF features, no flip, no re-ranking, cosine, standard AP), else the settings that differ
    joined by ``-`` (``fused``, ``mf-flip``, ``mf-rerank-euclidean``): evaluations with other settings are
    kept apart, never overwritten."""
    parts = [] if (feature_set == "mf" and not (flip or rerank) and distance == "cosine" and ap == "standard") \
        else [feature_set]
    parts += (["flip"] if flip else []) + (["rerank"] if rerank else [])
    parts += ([distance] if distance != "cosine" else []) + ([f"ap-{ap}"] if ap != "standard" else [])
    return "-".join(parts)


def _open_store(ckpt, root: str | os.PathLike, dataset: str, ds, feature_set: str = "fused") -> Any:
    """The DSAP store the run was trained with, for ``dataset`` under ``root`` (the fused and dsag feature
    sets; a union's own store of that dataset), checked as training checks it (``DSAPStore.check_fresh``:
    checksums, coverage of query and gallery, no image changed since) and, when the run recorded them,
    computed with the settings it was trained with."""
    info = ckpt.info
    estimator, tag = info.store_of(dataset)
    if not estimator:
        raise EvaluationError(f"The {feature_set!r} feature set needs the run's DSAP store, but its checkpoint names "
                              f"no one estimator for {dataset}.")
    store = open_store(root, dataset, estimator, tag, kind=info.input_kind, size=info.model.dsap_size)
    store.check_fresh(ds.root, [it.key for it in (*ds.query, *ds.gallery)], "query or gallery ")
    own, records = info.dataset_index(dataset), (ckpt.config or {}).get("datasets")
    trained = records[own].get("store_settings") if own is not None and isinstance(records, list) \
        and own < len(records) and isinstance(records[own], dict) else None
    if trained:
        now = {k: store.settings_record.get(k) for k in trained}
        if now != trained:
            diffs = describe_differences(trained, now, sides=("at training", "in the store"))
            raise EvaluationError(f"The store {store.folder} was computed with other settings than the store the run was "
                                  f"trained with ({diffs}); its {feature_set!r} features would not be the trained "
                                  f"network's: recompute the store with the run's settings (or a --tag), or evaluate "
                                  f"the mf feature set.")
    return store


#: the one table of an evaluation on several sets, beside their own folders (``eval/<a>+<b>/[<settings>/]``)
SETS_NAME = "sets.json"


def evaluate_sets(run: str, datasets: str | Sequence[str] | None, root: str | os.PathLike, *,
                  runs_dir: str | os.PathLike = "runs", **settings: Any) -> list[dict[str, Any]]:
    """Evaluate ``run`` on each of several test sets (``"a+b"``, a list, or None: every dataset the run was
    trained on), each one as :func:`evaluate_run` does (its own features, metrics and pictures in
    ``eval/<set>/``, never mixed with another's), and, for more than one, write their table ``sets.json``
    (one row per set, in order) to ``eval/<a>+<b>/[<settings>/]``; returns the metrics of each set."""
    if datasets is None:
        specs = list(open_checkpoint(run, runs_dir).info.datasets) or [None]
    else:
        specs = split_union([datasets] if isinstance(datasets, str) else list(datasets))
    rows = [evaluate_run(run, spec, root, runs_dir=runs_dir, **settings) for spec in specs]
    if len(rows) > 1:
        path = sets_path(RunFolder(Path(rows[0]["checkpoint"]).parent), specs, rows[0]["setting"])
        record = {"run": str(run), "datasets": specs, "setting": rows[0]["setting"], "created": now_iso(),
                  "sets": [{k: v for k, v in r.items() if k != "ranked_lists"} for r in rows]}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
        log.info("table of %d sets -> %s", len(rows), path)
    return rows


def sets_path(run: RunFolder, specs: Sequence[str], setting: str = "") -> Path:
    """Where the table of ``run``'s evaluation on the sets ``specs`` with ``setting`` is."""
    return run.eval_dir(list(specs)) / ("" if setting == "default" else setting) / SETS_NAME


def load_sets(run: str, specs: Sequence[str], runs_dir: str | os.PathLike = "runs", setting: str = "") -> list[dict]:
    """The rows of ``run``'s table on the sets ``specs`` (a sentence when it has none)."""
    candidates = [sets_path(RunFolder(run), specs, setting), sets_path(RunFolder(Path(runs_dir) / run), specs, setting)]
    for p in candidates:
        if p.is_file():
            return json.loads(p.read_text(encoding="utf-8"))["sets"]
    joined = "+".join(specs)
    raise EvaluationError(f"No evaluation of run {run!r} on the sets {joined} ({candidates[-1]}); run "
                          f"`make eval RUN={run} DATASET={joined}` first.")


def compare_runs(runs: Sequence[str], dataset: str, *, runs_dir: str | os.PathLike = "runs",
                 plot: str | os.PathLike | None = None, setting: str = "") -> tuple[str, Path]:
    """The side-by-side table of the runs' metrics on ``dataset`` (the evaluations with ``setting``, see
    :func:`evaluation_name`) and one plot of their CMC curves (mAP and rank-1 in the legend); returns
    (table, plot path).  The table ends with the metrics file it read for each run and the other settings
    that run was evaluated with.  On several sets (``a+b``) each run's table of them (``sets.json``) is read:
    a row per run and set, grouped by set."""
    if setting:
        check_name(setting, "evaluation setting")
    specs = split_union(dataset)
    read = []
    if len(specs) > 1:
        tables = {r: load_sets(r, specs, runs_dir, setting) for r in runs}
        rows = {f"{r} on {s}": tables[r][i] for i, s in enumerate(specs) for r in runs}
        dataset = "+".join(specs)
    else:
        rows = {r: load_metrics(r, dataset, runs_dir, setting) for r in runs}
        for r in runs:
            path = metrics_path(r, dataset, runs_dir, setting)
            others = _other_settings(path, setting)
            also = f"; also evaluated with: {', '.join(others)}" if others else ""
            read.append(f"{r}: read {path} ({setting or 'default settings'}{also})")
    if plot is None:
        names = "_vs_".join(derived_name(Path(str(r)).name) for r in runs)
        plot = Path(runs_dir) / "compare" / (union_dirname(specs) if len(specs) > 1 else dataset_dirname(dataset)) \
            / f"{names[:180]}.png"
    curves = {}
    for r, m in rows.items():
        flip = "+flip" if m.get("flip") else ""
        rr = "+rerank" if m.get("rerank") else ""
        label = (f"{Path(str(r)).name} ({m.get('feature_set', '')}{flip}{rr}): mAP {100 * m['mAP']:.1f}%, "
                 f"R1 {100 * m['rank1']:.1f}%")
        curves[label] = m.get("cmc") or [m[k] for k in ("rank1",)]
    protocols = sorted({str(m.get("protocol", "")) for m in rows.values()})
    plot = Path(plot)
    plot_cmc(curves, plot, title=f"CMC: {dataset} ({', '.join(protocols)})")
    return "\n".join([format_table(rows), *read]), plot


def _other_settings(path: Path, setting: str) -> list[str]:
    """The other evaluations beside the metrics file ``path`` (of ``setting``): their settings' names."""
    eval_dir = path.parent.parent if setting else path.parent
    default = ["the defaults (no --setting)"] if setting and (eval_dir / "metrics.json").is_file() else []
    return default + [f"--setting {p.parent.name}" for p in sorted(eval_dir.glob("*/metrics.json"))
                      if p.parent.name != setting]


def metrics_path(run: str, dataset: str, runs_dir: str | os.PathLike = "runs", setting: str = "") -> Path:
    """Where the metrics of ``run`` on ``dataset`` with ``setting`` are (a run folder or a name under
    ``runs_dir``); a sentence when there are none."""
    p = RunFolder(run).eval_dir(dataset) / setting / "metrics.json"
    if not p.is_file():
        p = RunFolder(Path(runs_dir) / run).eval_dir(dataset) / setting / "metrics.json"
    if not p.is_file():
        what = f" with the settings {setting!r}" if setting else ""
        raise EvaluationError(f"No metrics for run {run!r} on {dataset!r}{what} ({p}); run `make eval RUN={run}` first.")
    return p


def load_metrics(run: str, dataset: str, runs_dir: str | os.PathLike = "runs", setting: str = "") -> dict[str, Any]:
    """runs/<RUN>/eval/<dataset>/[<setting>/]metrics.json (a sentence when it is missing, unreadable or not
    the metrics of an evaluation: rank-1 and mAP numbers, a CMC list of numbers)."""
    path = metrics_path(run, dataset, runs_dir, setting)
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EvaluationError(f"Cannot read the metrics file {path} ({e}); evaluate the run again "
                              f"(`make eval RUN={run}`).") from None
    number = (int, float)
    problem = ("it holds a JSON " + type(m).__name__ + ", not an object" if not isinstance(m, dict) else
               next((f"its {k} is {m.get(k)!r}, not a number" for k in ("rank1", "mAP")
                     if not isinstance(m.get(k), number) or isinstance(m.get(k), bool)), None) or
               ("its cmc is not a list of numbers" if not isinstance(m.get("cmc", []), list)
                or not all(isinstance(x, number) for x in m.get("cmc", [])) else None))
    if problem:
        raise EvaluationError(f"The metrics file {path} is not the metrics of an evaluation ({problem}); evaluate "
                              f"the run again (`make eval RUN={run}`).")
    return m
