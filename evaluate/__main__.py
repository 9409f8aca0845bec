"""``python -m evaluate``: run | features | compare | export.

Errors a user can fix are printed as one sentence and exit with status 2.
"""

from __future__ import annotations

import json
import logging

import click

from data.console import CONTEXT, Group
from data.runtime import apply_threads, quiet_openmp

quiet_openmp()  # before torch starts: OMP_WAIT_POLICY=PASSIVE unless set (data.runtime)

from evaluate.features import FEATURE_SETS  # noqa: E402
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
@click.option("--dataset", required=True, help="dataset name (data.datasets registry)")
@click.option("--root", default="datasets", show_default=True, help="data root")
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--features", "feature_set", type=click.Choice(FEATURE_SETS), default="mf", show_default=True)
@_distance
@_rerank
@click.option("--flip", is_flag=True, help="average features with the mirrored image")
@_ap
@click.option("--queries", default=5, show_default=True, type=click.IntRange(min=0), help="random queries to draw ranked lists for")
@click.option("--query-keys", multiple=True, help="query keys to draw ranked lists for (repeatable)")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="DataLoader worker processes")
@_threads
@_json
def run(run, dataset, root, runs_dir, feature_set, distance, rerank, flip, ap, queries, query_keys,
        batch_size, device, workers, threads, as_json) -> None:
    """Extract features with RUN's MF-Stream, score them on DATASET, write runs/RUN/eval/DATASET/."""
    from evaluate.report import evaluate_run

    apply_threads(threads, workers)
    m = evaluate_run(run, dataset, root, runs_dir=runs_dir, feature_set=feature_set, distance=distance,
                     rerank=rerank, flip=flip, ap=ap, num_pictures=queries, query_keys=query_keys,
                     batch_size=batch_size, device=device, workers=workers)
    _print(m, run, as_json)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@_distance
@_rerank
@_ap
@_threads
@_json
def features(path, distance, rerank, ap, threads, as_json) -> None:
    """Evaluate a features file (HDF5 written by `run`) without the model."""
    from evaluate.report import evaluate_file

    apply_threads(threads)
    m = evaluate_file(path, distance=distance, rerank=rerank, ap=ap)
    _print(m, path, as_json)


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--dataset", required=True)
@click.option("--runs-dir", default="runs", show_default=True)
def compare(runs, dataset, runs_dir) -> None:
    """Side-by-side table of the runs' metrics.json on DATASET."""
    from evaluate.report import format_table, load_metrics

    rows = {r: load_metrics(r, dataset, runs_dir) for r in runs}
    click.echo(format_table(rows))


@cli.command()
@click.option("--run", required=True, help="run name under --runs-dir, a run folder or a checkpoint.pt")
@click.option("--runs-dir", default="runs", show_default=True)
@click.option("--feature-set", type=click.Choice([f for f in FEATURE_SETS if f != "fused"]), default="mf",
              show_default=True)
@click.option("--out", default=None, help="ONNX path (default runs/RUN/model-<feature set>.onnx)")
@click.option("--opset", default=17, show_default=True)
@click.option("--no-check", is_flag=True, help="skip the onnxruntime equality check")
@_threads
def export(run, runs_dir, feature_set, out, opset, no_check, threads) -> None:
    """Export RUN's inference model (MF-Stream) to ONNX with a dynamic batch axis."""
    from evaluate.export import export_onnx

    apply_threads(threads)
    info = export_onnx(run, runs_dir=runs_dir, feature_set=feature_set, out=out, opset=opset,
                       check=not no_check)
    click.echo(json.dumps(info, indent=2))


if __name__ == "__main__":
    cli()
