"""Growth of evaluation and search with the gallery size: time and peak memory, today's path beside the new.

    nice -n 10 python -m bench.bench_scale [--quick] [--threads 2] [--out bench/results/scale.json]
                                          [--plot docs/scale.png] [--workdir bench/.cache/scale]

Synthetic features (float32, identities: each feature is its identity's centre plus Gaussian noise of the
same scale; ``G / 27`` identities, 15 cameras, as MSMT17's gallery has about 27 images per identity) at
gallery sizes 10^4, 10^5, 10^6 and 512 / 2048 dimensions.  Every case runs in its own subprocess, whose peak
resident memory (``VmHWM`` of /proc, reset after the setup by ``/proc/self/clear_refs`` where Linux allows,
else ``ru_maxrss``) is its own; ``above`` is the peak minus the resident memory once the setup is done (the
features in memory for the evaluation and for today's search; nothing but the queries for the streamed
search and the index, which read the gallery features file by blocks).  Cases:

* ``eval-stream``: ``evaluate.metrics.evaluate_features`` (distances by blocks, default memory budget),
  1000 queries (11,659 at the MSMT17 size);
* ``eval-today``: the one-shot path (``pairwise_distance``, the whole Q x G matrix, then
  ``evaluate_distances``), where the matrix fits; its figures are compared with eval-stream's bit for bit;
* ``search-exact``: ``evaluate.search.top_k`` (top-10 of 100 queries) streaming a gallery features file
  (float16 storage for 2048-d at 10^6: 4 GB instead of 8);
* ``search-today``: the previous ``rank``: the gallery in memory, the Q x G matrix and a full stable sort;
* ``index-flat`` / ``index-ivf``: a FAISS index built from the file (time to build, to search, memory) and
  its recall@10 against search-exact's answer (ivf: sqrt(G) cells, 8-bit vectors; nprobe 16, 64, 256,
  the default (a quarter of the cells) and every cell, which leaves only the 8-bit loss).

Cases that cannot fit the machine (24 GB shared) are listed as skipped with the reason.  Writes a table,
the JSON (``--out``) with the machine's load before and after, and the plot (``--plot``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from data.runtime import quiet_openmp

quiet_openmp()  # before torch starts (the entry-point rule)

import numpy as np  # noqa: E402

from data.io import atomic_write_json  # noqa: E402
from data.runtime import apply_threads  # noqa: E402

MSMT = (11659, 82161)
EVAL_QUERIES, SEARCH_QUERIES, TOP = 1000, 100, 10
GiB = 1 << 30


# --------------------------------------------------------------------------------------------
# data


def _features(n: int, dim: int, pids: np.ndarray, seed: int, dtype=np.float32) -> np.ndarray:
    """Identity centres (seed 0, shared by query and gallery) plus noise of the same scale, made in blocks."""
    ids = int(pids.max()) + 1
    centres = np.random.default_rng(0).standard_normal((ids, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype)
    for s in range(0, n, 65536):
        block = rng.standard_normal((min(65536, n - s), dim), dtype=np.float32)
        block += centres[pids[s : s + 65536]]
        out[s : s + len(block)] = block
    return out


def labels(g: int, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(query pids, gallery pids, query cameras, gallery cameras): G / 27 identities, 15 cameras."""
    rng = np.random.default_rng(1)
    ids = max(10, g // 27)
    return rng.integers(0, ids, q), rng.integers(0, ids, g), rng.integers(0, 15, q), rng.integers(0, 15, g)


def gallery_file(workdir: Path, g: int, dim: int, storage: str) -> Path:
    """The gallery features file of a size (written once, by blocks, kept in ``workdir``)."""
    from evaluate.features import GalleryWriter

    path = workdir / f"gallery-{g}-{dim}-{storage}.h5"
    if path.is_file():
        return path
    _, gp, _, _ = labels(g, 1)
    w = GalleryWriter(path, [f"{i}" for i in range(g)], dim, resume_key=f"bench-{g}-{dim}", storage=storage)
    for s in range(w.done, g, 131072):
        e = min(g, s + 131072)
        block = _features(e - s, dim, gp[s:e], seed=1000 + s)
        w.write(s, block)
    w.finish()
    w.close()
    return path


def queries(g: int, q: int, dim: int) -> np.ndarray:
    qp, _, _, _ = labels(g, q)
    return _features(q, dim, qp, seed=7)


# --------------------------------------------------------------------------------------------
# one case, in its own process


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_case(spec: dict) -> dict:
    import torch

    apply_threads(spec["threads"])
    from evaluate.features import GalleryFile
    from evaluate.metrics import evaluate_distances, evaluate_features, pairwise_distance
    from evaluate.search import top_k

    kind, g, dim, q = spec["case"], spec["gallery"], spec["dim"], spec["queries"]
    path = Path(spec["file"])
    qf = queries(g, q, dim)
    out: dict = {}
    if kind.startswith("eval") or kind == "search-today":
        gfile = GalleryFile(path, verify=False)
        gf = np.concatenate([b for _, b in gfile.blocks()])
        gfile.close()
    if kind.startswith("index"):
        import faiss

        faiss.omp_set_num_threads(spec["threads"])
        from evaluate.index import GalleryIndex, default_nprobe
    base = _status("VmRSS")
    reset = _reset_peak()
    t = time.perf_counter()
    if kind == "eval-stream":
        qp, gp, qc, gc = labels(g, q)
        m = evaluate_features(qf, gf, qp, gp, qc, gc, chunk_size=256)
        out["metrics"] = {"cmc": m.cmc_curve, "mAP": m.mAP, "mINP": m.mINP, "evaluated": m.num_evaluated}
    elif kind == "eval-today":
        qp, gp, qc, gc = labels(g, q)
        m = evaluate_distances(pairwise_distance(qf, gf), qp, gp, qc, gc, chunk_size=256)
        out["metrics"] = {"cmc": m.cmc_curve, "mAP": m.mAP, "mINP": m.mINP, "evaluated": m.num_evaluated}
    elif kind == "search-exact":
        gfile = GalleryFile(path, verify=False)
        idx, _ = top_k(qf, gfile, TOP)
        np.save(spec["answer"], idx)
    elif kind == "search-today":  # the previous evaluate.api.rank
        dist = pairwise_distance(qf, gf)
        order = torch.sort(dist, dim=1, stable=True).indices[:, :TOP]
        idx = order.numpy()
        exact = np.load(spec["answer"])
        out["same_as_exact"] = bool(np.array_equal(idx, exact))
    else:
        gfile = GalleryFile(path, verify=False)
        index = GalleryIndex.build(gfile, kind.split("-")[1], "cosine")
        out["build_s"] = time.perf_counter() - t
        exact = np.load(spec["answer"])
        if kind == "index-ivf":
            out["nlist"] = int(index.index.nlist)
        sweep = sorted({16, 64, 256, default_nprobe(out.get("nlist", 1)), out.get("nlist", 1)})
        for nprobe in (sweep if kind == "index-ivf" else [0]):
            index.nprobe = nprobe
            t1 = time.perf_counter()
            idx, _ = index.search(qf, TOP)
            key = f"nprobe{nprobe}" if nprobe else "flat"
            out[f"search_s_{key}"] = time.perf_counter() - t1
            out[f"recall_at_{TOP}_{key}"] = float(np.mean([len(set(a) & set(b)) / TOP for a, b in zip(idx, exact)]))
    out["seconds"] = time.perf_counter() - t
    peak = _status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(base_mib=base, peak_mib=peak, above_mib=peak - base, peak_reset=reset,
               threads=torch.get_num_threads())
    return out


# --------------------------------------------------------------------------------------------
# the run


def load_line() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"loadavg_1_5_15": [one, five, fifteen], "uptime": subprocess.run(["uptime"], capture_output=True,
                                                                             text=True).stdout.strip()}


def plan(args) -> list[dict]:
    """The cases of the run, each with a skip reason where it cannot fit."""
    sizes = [10**4, 10**5] if args.quick else [10**4, 10**5, 10**6]
    dims = [512] if args.quick else [512, 2048]
    cases = []
    if not args.quick:
        for kind in ("eval-stream", "eval-today"):
            cases.append({"case": kind, "gallery": MSMT[1], "dim": 512, "queries": MSMT[0], "label": "msmt17"})
    for dim in dims:
        for g in sizes:
            for kind in ("eval-stream", "eval-today"):
                c = {"case": kind, "gallery": g, "dim": dim, "queries": EVAL_QUERIES}
                if g * dim * 4 * 2 > 8 * GiB:
                    c["skip"] = (f"the gallery features alone are {g * dim * 4 / GiB:.0f} GB of float32 in memory, "
                                 f"twice with the normalised copy: over what this shared 24 GB machine can give")
                cases.append(c)
            for kind in ("search-exact", "search-today", "index-flat", "index-ivf"):
                c = {"case": kind, "gallery": g, "dim": dim, "queries": SEARCH_QUERIES}
                if kind in ("search-today", "index-flat") and g * dim * 4 > 4 * GiB:
                    c["skip"] = f"holds the {g * dim * 4 / GiB:.0f} GB of float32 features in memory"
                cases.append(c)
    return cases


def table(rows: list[dict]) -> str:
    head = f"{'case':<13} {'gallery':>9} {'dim':>5} {'queries':>7} {'seconds':>8} {'peak MiB':>9} {'above':>7}  notes"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skip" in r:
            lines.append(f"{r['case']:<13} {r['gallery']:>9} {r['dim']:>5} {r['queries']:>7} {'-':>8} {'-':>9} "
                         f"{'-':>7}  skipped: {r['skip']}")
            continue
        notes = []
        if "identical_to_today" in r:
            notes.append(f"metrics identical to today's: {r['identical_to_today']}")
        if "same_as_exact" in r:
            notes.append(f"top-{TOP} = exact: {r['same_as_exact']}")
        for k, v in r.items():
            if k.startswith("recall"):
                notes.append(f"{k.replace('recall_at_', 'recall@')}={v:.3f}")
            if k.startswith("search_s") or k == "build_s":
                notes.append(f"{k}={v:.1f}")
        lines.append(f"{r['case']:<13} {r['gallery']:>9} {r['dim']:>5} {r['queries']:>7} {r['seconds']:>8.1f} "
                     f"{r['peak_mib']:>9.0f} {r['above_mib']:>7.0f}  {'; '.join(notes)}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=80)
    styles = {"eval-stream": "C0", "eval-today": "C1", "search-exact": "C2", "search-today": "C3",
              "index-flat": "C4", "index-ivf": "C5"}
    for (case, dim), colour in ((k, v) for k in sorted({(r["case"], r["dim"]) for r in rows}) for v in [styles[k[0]]]):
        pts = sorted((r["gallery"], r["seconds"], r["above_mib"]) for r in rows
                     if r["case"] == case and r["dim"] == dim and "skip" not in r and r.get("label") != "msmt17")
        if not pts:
            continue
        x = [p[0] for p in pts]
        ls = "-" if dim == 512 else "--"
        axes[0].plot(x, [p[1] for p in pts], ls, color=colour, marker="o", label=f"{case} {dim}-d")
        axes[1].plot(x, [max(p[2], 1) for p in pts], ls, color=colour, marker="o", label=f"{case} {dim}-d")
    for ax, title in zip(axes, ("time (s)", "peak memory above setup (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gallery size")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"evaluation: {EVAL_QUERIES} queries; search and index: {SEARCH_QUERIES} queries, top-{TOP}; "
                 f"solid 512-d, dashed 2048-d", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10^4 and 10^5 at 512-d only, no MSMT17-size case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="[bench/results/scale.json, scale-quick.json with --quick]")
    ap.add_argument("--plot", default=None, help="[docs/scale.png; none with --quick]")
    ap.add_argument("--workdir", default="bench/.cache/scale", help="where the gallery features files are kept")
    ap.add_argument("--cases", nargs="*", default=None, help="only these cases (e.g. index-ivf)")
    ap.add_argument("--sizes", nargs="*", type=int, default=None, help="only these gallery sizes")
    ap.add_argument("--dims", nargs="*", type=int, default=None, help="only these dimensions")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return
    partial = args.quick or args.cases or args.sizes or args.dims
    out = Path(args.out or f"bench/results/scale{'-quick' if partial else ''}.json")
    plot_path = Path(args.plot) if args.plot else (None if partial else Path("docs/scale.png"))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python -m bench.bench_scale", *sys.argv[1:]]), "threads": args.threads,
              "load_before": load_line(), "cases": []}
    rows = record["cases"]
    for spec in plan(args):
        if (args.cases and spec["case"] not in args.cases) or (args.sizes and spec["gallery"] not in args.sizes) \
                or (args.dims and spec["dim"] not in args.dims):
            continue
        print(f"... {spec['case']} G={spec['gallery']} D={spec['dim']}", file=sys.stderr, flush=True)
        if "skip" in spec:
            rows.append(spec)
            continue
        storage = "float16" if spec["gallery"] * spec["dim"] * 4 > 4 * GiB else "float32"
        spec.update(threads=args.threads, storage=storage,
                    file=str(gallery_file(workdir, spec["gallery"], spec["dim"], storage)),
                    answer=str(workdir / f"exact-{spec['gallery']}-{spec['dim']}.npy"))
        res = subprocess.run([sys.executable, "-m", "bench.bench_scale", "--child", json.dumps(spec)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            spec["skip"] = f"failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"
            rows.append(spec)
            continue
        spec.update(json.loads(res.stdout.strip().splitlines()[-1]))
        rows.append(spec)
        if spec["case"] == "eval-today":
            stream = [r for r in rows if r["case"] == "eval-stream" and r["gallery"] == spec["gallery"]
                      and r["dim"] == spec["dim"] and "metrics" in r]
            if stream:
                same = stream[0]["metrics"] == spec["metrics"]
                stream[0]["identical_to_today"] = spec["identical_to_today"] = same
    record["load_after"] = load_line()
    text = table(rows)
    print(text)
    print(f"load before: {record['load_before']['uptime']}\nload after:  {record['load_after']['uptime']}")
    atomic_write_json(out, record)
    if plot_path:
        plot(rows, plot_path)
        print(f"plot: {plot_path} ({plot_path.stat().st_size // 1024} KB)")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
