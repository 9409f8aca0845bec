"""``python -m precompute``: build (``run``) and examine (``inspect``, ``inspect-iuv``) DSAP stores."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

log = logging.getLogger("precompute")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that carry a sentence for the user (printed, exit code 2)."""
    from data.store import StoreError
    from precompute.runner import PrecomputeError

    errors: list[type[BaseException]] = [PrecomputeError, StoreError]
    for module, name in (("data.datasets", "DatasetError"), ("data.io", "ImageReadError"),
                         ("precompute.estimators", "EstimatorError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except _user_errors() as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-o key=value`` pairs → dict; values are JSON when they parse (numbers, true/false, lists), else strings."""
    from precompute.runner import PrecomputeError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PrecomputeError(f"estimator options are key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Precompute DSAP images for a dataset, and inspect the store."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@cli.command("run")
@click.option("--dataset", required=True, help="Dataset name (synthetic, market1501, ...).")
@click.option("--root", default="datasets", show_default=True, type=click.Path(path_type=Path), help="Data root.")
@click.option("--estimator", required=True, help="Estimator (synthetic, iuv, densepose, pose).")
@click.option("--workers", default=1, show_default=True, type=int, help="Worker processes on this machine.")
@click.option("--kind", default="dsap", show_default=True, type=click.Choice(["dsap", "csa"]))
@click.option("--size", default=32, show_default=True, type=int, help="DSAP image size S.")
@click.option("--shard-size", default=500, show_default=True, type=int, help="Images per shard.")
@click.option("--batch-size", default=None, type=int, help="Estimator batch size (default: the estimator's).")
@click.option("-o", "--option", "options", multiple=True, help="Estimator option key=value (repeatable).")
@click.option("--tag", default=None, help="Store variant name: the store goes to <estimator>-<tag>.")
@click.option("--force", is_flag=True, help="Replace an existing store computed with other settings.")
@click.option("--compression", default="none", show_default=True, type=click.Choice(["none", "lzf", "gzip"]),
              help="HDF5 compression of the DSAP arrays.")
def run_cmd(dataset: str, root: Path, estimator: str, workers: int, kind: str, size: int, shard_size: int,
            batch_size: int | None, options: tuple[str, ...], tag: str | None, force: bool, compression: str) -> None:
    """Compute the DSAP store of DATASET with ESTIMATOR (resumable; parallel with --workers or torchrun)."""
    from precompute.runner import PrecomputeConfig, run_precompute

    def go() -> None:
        cfg = PrecomputeConfig(
            dataset=dataset, root=root, estimator=estimator, options=parse_options(options), workers=workers,
            kind=kind, size=size, shard_size=shard_size, batch_size=batch_size, tag=tag, force=force,
            compression=None if compression == "none" else compression,
        )
        s = run_precompute(cfg)
        if s.get("up_to_date"):
            return
        line = (f"precompute {dataset}/{estimator}: computed {s['computed_images']} images "
                f"({s['computed_found']} persons found, {s['computed_failures']} failed) in {s['elapsed_s']:.1f} s, "
                f"{s['images_per_s']:.1f} images/s")
        if s.get("complete"):
            line += f"; store complete: {s['num_images']} images, {s['num_found']} found, {len(s['failures'])} failures"
            for f in s["failures"][:5]:
                log.warning("failed: %s (%s)", f["key"], f["reason"])
        else:
            line += "; store not complete yet (other ranks still running)"
        log.info("%s -> %s", line, s["folder"])

    _guard(go)


def main() -> None:
    cli(prog_name="python -m precompute")


if __name__ == "__main__":
    main()
