"""``python -m evaluate``: run | features | compare | search | export.

Errors a user can fix are printed as one sentence and exit with status 2.
"""

from __future__ import annotations

import json
import logging

import click

from data.console import CONTEXT, Group, IntRange, root_option
from data.runtime import apply_threads, quiet_openmp

quiet_openmp()  # before torch starts: OMP_WAIT_POLICY=PASSIVE unless set (data.runtime)

from evaluate.export import OPSETS  # noqa: E402
from evaluate.features import DSAP_FEATURE_SETS, FEATURE_SETS  # noqa: E402
from evaluate.metrics import AP_DEFINITIONS, DISTANCES  # noqa: E402

log = logging.getLogger("evaluate")


@click.group(cls=Group, context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def cli(verbose: bool) -> None:
    """Evaluate DSA-reID runs: features, CMC / mAP / mINP, re-ranking, pictures, ONNX export."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


_distance = click.option("--distance", type=click.Choice(DISTANCES), default="cosine", show_default=True)
_rerank = click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
_ap = click.option("--ap", type=click.Choice(AP_DEFINITIONS), default="standard", show_default=True,
                   help="standard: non-interpolated AP; market: the official Market-1501 trapezoid AP")
_json = click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
_device = click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda or cuda:N")
_workers = click.option("--workers", default=None, type=click.IntRange(min=0),
                        help="DataLoader worker processes [default: up to 8 on a GPU, 0 on a CPU]")


class Memory(click.ParamType):
    """A memory size: bytes, or a number with K, M, G or T (powers of 1024; ``B``/``iB`` suffixes allowed)."""

    name = "size"
    UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in self.UNITS and text[-1:] else ""
        try:
            size = int(float(text[: len(text) - len(unit)]) * self.UNITS[unit])
        except ValueError:
            size = 0
        if size <= 0:
            self.fail(f"{value!r} is not a memory size (e.g. 512M, 2G)", param, ctx)
        return size


_block_size = click.option("--block-size", default=None, type=click.IntRange(min=1),
                           help="queries ranked at once [default: as many as --max-memory holds]")
_max_memory = click.option("--max-memory", default=None, type=Memory(),
                           help="memory for the evaluation's blocks, e.g. 512M or 2G [default: a quarter of the "
                                "available memory, at most 512M]; re-ranking refuses when it needs more")
_threads = click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0),
                        help="intra-op CPU threads (0: the available cores minus --workers, at least 1)")


def _print(metrics: dict, name: str, as_json: bool) -> None:
    from evaluate.report import format_table

    if as_json:
        click.echo(json.dumps({k: v for k, v in metrics.items() if k != "cmc"}, indent=2))
    else:
        click.echo(format_table({name: metrics}))


@cli.command()
@click.option("--run", required=True, help="run name under --runs-dir, a run folder or a checkpoint.pt")
@click.option("--dataset", "datasets", multiple=True,
              help="dataset name or spec (data.datasets registry); several (repeated, or a+b) are evaluated one by one "
                   "into one table, written to eval/A+B/sets.json [default: the dataset(s) the run was trained on]")
@root_option()
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--feature-set", "feature_set", type=click.Choice(FEATURE_SETS), default="mf", show_default=True,
              help="mf = f_G + f_L (the paper's inference), global, local; fused (z = f + d) or dsag (d alone) "
                   "need the DSAP store; other settings than the defaults go to eval/DATASET/<settings>/")
@click.option("--features", "old_feature_set", type=click.Choice(FEATURE_SETS), default=None, hidden=True)
@_distance
@_rerank
@click.option("--flip", is_flag=True, help="average features with the mirrored image")
@_ap
@click.option("--queries", default=5, show_default=True, type=click.IntRange(min=0), help="random queries to draw ranked lists for")
@click.option("--query-keys", multiple=True, help="query keys to draw ranked lists for (repeatable)")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@_device
@_workers
@_block_size
@_max_memory
@_threads
@_json
def run(run, datasets, root, runs_dir, feature_set, old_feature_set, distance, rerank, flip, ap, queries, query_keys,
        batch_size, device, workers, block_size, max_memory, threads, as_json) -> None:
    """Extract features with RUN's MF-Stream, score them on DATASET, write runs/RUN/eval/DATASET/ (each set's
    own folder when there are several, and their table)."""
    from evaluate.report import evaluate_sets, format_table

    apply_threads(threads, workers or 0)
    feature_set = old_feature_set or feature_set  # --features: the earlier name of --feature-set

    rows = evaluate_sets(run, list(datasets) or None, root, runs_dir=runs_dir, feature_set=feature_set,
                         distance=distance, rerank=rerank, flip=flip, ap=ap, num_pictures=queries,
                         query_keys=query_keys, batch_size=batch_size, device=device, workers=workers,
                         block_size=block_size, max_memory=max_memory)
    if len(rows) == 1:
        _print(rows[0], run, as_json)
    elif as_json:
        click.echo(json.dumps([{k: v for k, v in m.items() if k != "cmc"} for m in rows], indent=2))
    else:
        click.echo(format_table({m["dataset"]: m for m in rows}))


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@_distance
@_rerank
@_ap
@_block_size
@_max_memory
@_threads
@_json
def features(path, distance, rerank, ap, block_size, max_memory, threads, as_json) -> None:
    """Evaluate a features file (HDF5 written by `run`) without the model."""
    from evaluate.report import evaluate_file

    apply_threads(threads)
    m = evaluate_file(path, distance=distance, rerank=rerank, ap=ap, block_size=block_size, max_memory=max_memory)
    _print(m, path, as_json)


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--dataset", required=True, help="the test set the runs were evaluated on, or several (a+b): then "
              "each run's table of them (`evaluate run --dataset a+b`), a row per run and set")
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--plot", default=None, type=click.Path(dir_okay=False),
              help="CMC plot of the runs [default: RUNS_DIR/compare/DATASET/<run>_vs_<run>.png]")
@click.option("--setting", default="", help="which evaluation of each run: its settings' folder name under "
              "eval/DATASET/ (e.g. fused, mf-flip, mf-rerank) [default: the default settings]")
def compare(runs, dataset, runs_dir, plot, setting) -> None:
    """Side-by-side table of the runs' metrics.json on DATASET and their CMC curves in one plot (mAP in the legend)."""
    from evaluate.report import compare_runs

    table, path = compare_runs(runs, dataset, runs_dir=runs_dir, plot=plot, setting=setting)
    click.echo(table)
    click.echo(f"CMC curves: {path}")


@cli.command()
@click.option("--run", required=True, help="run name under --runs-dir, a run folder or a checkpoint.pt")
@click.option("--query", required=True, type=click.Path(exists=False), help="a query image or a folder of them")
@click.option("--gallery", required=True, type=click.Path(exists=False), help="a folder of gallery crops (searched recursively)")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1), help="gallery images per query")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="where ranking.csv, ranking.json and pictures/ go [default: RUNS_DIR/RUN/search/<gallery folder>]")
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--feature-set", type=click.Choice([f for f in FEATURE_SETS if f not in DSAP_FEATURE_SETS]), default="mf")
@_distance
@click.option("--flip", is_flag=True, help="average features with the mirrored image")
@click.option("--no-cache", is_flag=True, help="recompute the gallery features and hold them in memory (no features file: small galleries)")
@click.option("--no-pictures", is_flag=True, help="write only ranking.csv and ranking.json")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--index", "index", type=click.Choice(["flat", "ivf"]), default=None,
              help="rank with a FAISS index (needs `pip install faiss-cpu`): flat = exact, ivf = approximate "
                   "(8-bit vectors, --nprobe cells per query) [default: exact streamed ranking, no index]")
@click.option("--nprobe", default=None, type=click.IntRange(min=1),
              help="ivf: cells scanned per query (more: slower, closer to exact) [default: a quarter of the cells]")
@click.option("--max-memory", default=None, type=Memory(),
              help="memory for a block of distances, e.g. 512M [default: a quarter of the available memory, at most 512M]")
@_device
@_threads
def search(run, query, gallery, top, out, runs_dir, feature_set, distance, flip, no_cache, no_pictures,
           batch_size, index, nprobe, max_memory, device, threads) -> None:
    """Rank a folder of unlabeled crops for each query image (no pids or cameras in the file names)."""
    from pathlib import Path

    from evaluate.api import ReidModel
    from evaluate.search import search as run_search

    model = ReidModel.from_run(run, device=device, feature_set=feature_set, runs_dir=runs_dir, threads=threads)
    if out is None:  # a name derived from the gallery folder's: checked to be a plain name (data.names)
        from data.names import derived_name

        out = Path(model.checkpoint).parent / "search" / derived_name(Path(gallery).resolve().name or "gallery")
    record = run_search(model, query, gallery, top=top, out=out, distance=distance, flip=flip,
                        batch_size=batch_size, cache_dir=None if no_cache else "auto", index=index, nprobe=nprobe,
                        max_memory=max_memory, pictures=not no_pictures)
    for q in record["queries"]:
        best = ", ".join(f"{r['file']} ({r['distance']:.4g})" for r in q["results"][:3])
        click.echo(f"{q['query']}: {best}{' ...' if len(q['results']) > 3 else ''}")
    cached = " (gallery features from the cache)" if record["gallery_cached"] else ""
    cached += f", {index} index" if index else ""
    click.echo(f"{len(record['queries'])} queries x {record['num_gallery']} gallery images{cached}; "
               f"ranking.csv, ranking.json{'' if no_pictures else ', pictures/'} in {out}")


@cli.command()
@click.option("--run", required=True, help="run name under --runs-dir, a run folder or a checkpoint.pt")
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--feature-set", type=click.Choice([f for f in FEATURE_SETS if f not in DSAP_FEATURE_SETS]), default="mf",
              show_default=True)
@click.option("--out", default=None, help="ONNX path (default runs/RUN/model-<feature set>.onnx)")
@click.option("--opset", default=17, show_default=True, type=IntRange(*OPSETS),
              help=f"ONNX opset ({OPSETS[0]} to {OPSETS[1]}: those of PyTorch's TorchScript exporter)")
@click.option("--input", "input_kind", type=click.Choice(["float", "uint8"]), default="float", show_default=True,
              help="float: normalised float RGB [B,3,H,W]; uint8: raw RGB bytes [B,H,W,3], normalised inside the graph")
@click.option("--no-check", is_flag=True, help="skip the onnxruntime equality check")
@_threads
def export(run, runs_dir, feature_set, out, opset, input_kind, no_check, threads) -> None:
    """Export RUN's inference model (MF-Stream) to ONNX with a dynamic batch axis, and its input spec as JSON beside it."""
    from evaluate.export import export_onnx

    apply_threads(threads)
    info = export_onnx(run, runs_dir=runs_dir, feature_set=feature_set, out=out, opset=opset,
                       check=not no_check, input_kind=input_kind)
    click.echo(json.dumps(info, indent=2))
    if not info["complete"]:
        click.echo(f"note: {run} is a checkpoint of an unfinished run (step {info['step']}): the exported model is not "
                   f"the trained network; finish the run (rerun `make train`) and export again", err=True)


if __name__ == "__main__":
    cli()
