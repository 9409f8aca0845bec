"""``python -m precompute``: build (``run``) and examine (``inspect``, ``inspect-iuv``) DSAP stores."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from data.console import CONTEXT, ROOT_ENV, Group, IntRange
from data.store import DSAP_SIZES
from dsa.config import MIN_FOUND
from precompute.runner import EARLY_IMAGES
from data.runtime import apply_threads, quiet_openmp

quiet_openmp()  # before torch starts: OMP_WAIT_POLICY=PASSIVE unless set (data.runtime)

log = logging.getLogger("precompute")


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-o key=value`` pairs → dict; values are JSON when they parse (numbers, true/false, lists), else strings."""
    from data.cli import parse_options as parse_pairs

    out: dict[str, Any] = {}
    for key, value in parse_pairs(pairs).items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@click.group(cls=Group, context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Precompute DSAP images for a dataset, and inspect the store."""
    apply_threads()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@cli.command("run")
@click.option("--dataset", required=True, help="Dataset name (synthetic, market1501, ...); A+B: each one's store in turn.")
@click.option("--root", default="datasets", show_default=True, envvar=ROOT_ENV, show_envvar=True,
              type=click.Path(path_type=Path), help="Data root.")
@click.option("--estimator", required=True, help="Estimator (synthetic, iuv, densepose, pose).")
@click.option("--workers", default=1, show_default=True, type=IntRange(min=1), help="Worker processes on this machine.")
@click.option("--kind", default="dsap", show_default=True, type=click.Choice(["dsap", "csa"]))
@click.option("--size", default=32, show_default=True, type=IntRange(**DSAP_SIZES),
              help="DSAP image size S (a multiple of 8, at most 256).")
@click.option("--shard-size", default=500, show_default=True, type=IntRange(min=1), help="Images per shard.")
@click.option("--batch-size", default=None, type=IntRange(min=1), help="Estimator batch size (default: the estimator's).")
@click.option("-o", "--option", "options", multiple=True, help="Estimator option key=value (repeatable).")
@click.option("--tag", default=None, help="Store variant name: the store goes to <estimator>-<tag>.")
@click.option("--force", is_flag=True, help="Replace an existing store computed with other settings.")
@click.option("--min-found", default=MIN_FOUND, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="The least share of images with a person found: below it the run stops (early, after "
                   f"{EARLY_IMAGES} images without anybody) or answers exit 2, as training refuses such a store "
                   "(data.min_found); almost always the wrong estimator for the images. 0 accepts any.")
@click.option("--compression", default="lz4", show_default=True, type=click.Choice(["lz4", "lzf", "none", "gzip"]),
              help="HDF5 compression of the DSAP arrays (lz4: as small as lzf, reads as fast as none; "
                   "needs hdf5plugin, which `make install` installs).")
@click.option("--threads", default=0, type=click.IntRange(min=0),
              help="Intra-op CPU threads of this process (0: the available cores; --workers N > 1 "
                   "processes use 1 each). Scheduling only: an estimator whose output depends on its thread "
                   "count pins it as a setting (densepose: -o threads=N, default 1), so the store's bytes do not "
                   "depend on --threads, --workers or --batch-size.")
def run_cmd(dataset: str, root: Path, estimator: str, workers: int, kind: str, size: int, shard_size: int,
            batch_size: int | None, options: tuple[str, ...], tag: str | None, force: bool, min_found: float,
            compression: str, threads: int) -> None:
    """Compute the DSAP store of DATASET with ESTIMATOR (resumable; parallel with --workers or torchrun); for
    several datasets (A+B), the store of each in turn."""
    from data.datasets import split_union
    from precompute.runner import PrecomputeConfig, run_precompute

    apply_threads(threads)

    for spec in split_union(dataset):
        cfg = PrecomputeConfig(
            dataset=spec, root=root, estimator=estimator, options=parse_options(options), workers=workers,
            kind=kind, size=size, shard_size=shard_size, batch_size=batch_size, tag=tag, force=force,
            compression=None if compression == "none" else compression, min_found=min_found,
        )
        s = run_precompute(cfg)
        if s.get("up_to_date"):
            continue
        line = (f"precompute {spec}/{estimator}: computed {s['computed_images']} images "
                f"({s['computed_found']} persons found, {s['computed_failures']} failed) in {s['elapsed_s']:.1f} s, "
                f"{s['images_per_s']:.1f} images/s")
        if s.get("complete"):
            line += f"; store complete: {s['num_images']} images, {s['num_found']} found, {len(s['failures'])} failures"
            for f in s["failures"][:5]:
                log.warning("failed: %s (%s)", f["key"], f["reason"])
        else:
            line += "; store not complete yet (other ranks still running)"
        log.info("%s -> %s", line, s["folder"])


@cli.command("inspect")
@click.option("--dataset", required=True, help="Dataset name.")
@click.option("--root", default="datasets", show_default=True, envvar=ROOT_ENV, show_envvar=True,
              type=click.Path(path_type=Path), help="Data root.")
@click.option("--estimator", required=True, help="Estimator the store was computed with.")
@click.option("--tag", default=None, help="Store variant name (as given to `run --tag`).")
@click.option("--verify", "do_verify", is_flag=True, help="Check checksums, every array, keys vs the dataset; exit 1 on problems.")
@click.option("--montage", "montage_keys", multiple=True, help="Write a montage PNG for this key (repeatable).")
@click.option("--montage-random", default=0, type=IntRange(min=0), help="Write montages for N random keys.")
@click.option("--seed", default=0, show_default=True, type=IntRange(0, 2**32 - 1), help="Seed for --montage-random.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Folder for montages (default: STORE/inspect).")
@click.option("-o", "--option", "options", multiple=True,
              help="Estimator option key=value for the montages' part-label maps (repeatable); the store's own "
                   "settings are used otherwise, except dump=, weights= and config=, which must be given here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_cmd(dataset: str, root: Path, estimator: str, tag: str | None, do_verify: bool,
                montage_keys: tuple[str, ...], montage_random: int, seed: int, out: Path | None,
                options: tuple[str, ...], as_json: bool) -> None:
    """Summarise a DSAP store (coverage per part and group, problems); verify it; draw montages."""
    from data.datasets import build_dataset
    from data.store import DSAPStore, store_dir
    from precompute import inspect as insp

    store = DSAPStore(store_dir(root, dataset, estimator, tag))
    try:
        summary = insp.inspect_store(store, build_dataset(dataset, root), check=do_verify, montage_keys=montage_keys,
                                     montage_random=montage_random, seed=seed, out=out,
                                     options=parse_options(options), title=dataset)
    finally:
        store.close()  # no HDF5 handle outlives the command (the library would serve a later open from it)
    if as_json:
        for warning in summary.get("warnings", []):  # the text report shows them itself
            log.warning("%s", warning)
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(insp.format_summary(summary))
        if do_verify:
            click.echo("verify     " + ("OK" if not summary["verify"] else "\n  ".join(["FAILED", *summary["verify"]])))
        for f in summary["montages"]:
            click.echo(f"montage    {f}")
    sys.exit(1 if do_verify and summary["verify"] else 0)


@cli.command("inspect-iuv")
@click.option("--image", "image_path", required=True, type=click.Path(path_type=Path), help="Scene image (e.g. demo_im.jpg).")
@click.option("--iuv", "iuv_path", required=True, type=click.Path(path_type=Path), help="Its DensePose *_IUV.png.")
@click.option("--inds", "inds_path", required=True, type=click.Path(path_type=Path), help="Its *_INDS.png (person index).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder for the PNGs.")
@click.option("--size", default=32, show_default=True, type=IntRange(**DSAP_SIZES),
              help="DSAP image size S (a multiple of 8, at most 256).")
@click.option("--kind", default="dsap", show_default=True, type=click.Choice(["dsap", "csa"]))
@click.option("--max-persons", default=6, show_default=True, type=IntRange(min=1),
              help="At most this many persons (largest first).")
def inspect_iuv_cmd(image_path: Path, iuv_path: Path, inds_path: Path, out: Path, size: int, kind: str,
                    max_persons: int) -> None:
    """Montages and coverage figures of the persons in one image with its DensePose IUV + INDS output."""
    from data.io import read_image, read_iuv_png
    from dsa.dsap import coverage, crop_csa, warp_dsap
    from precompute import inspect as insp
    from precompute.estimators.iuv import persons_from_inds, read_inds_png

    image = read_image(image_path)
    persons = persons_from_inds(image, read_iuv_png(iuv_path), read_inds_png(inds_path))[:max_persons]
    if not persons:
        log.warning("no person with enough body pixels in %s", inds_path)
    for n, (crop, iuv, box) in enumerate(persons):
        if kind == "csa":
            dsap, written = crop_csa(crop, iuv.I, size)
        else:
            dsap, written = warp_dsap(crop, iuv.I, iuv.U, iuv.V, size)
        stem = f"{image_path.stem}_person{n}"
        title = f"{image_path.name}  person {n}  box {box}"
        m = insp.draw_montage(out / f"{stem}_montage.png", crop, dsap, written, iuv.I, title=title)
        c = insp.draw_coverage(out / f"{stem}_coverage.png", coverage(written), title=f"{title}: per-part coverage")
        click.echo(f"person {n}: box {box}, {int((iuv.I > 0).sum())} body pixels, "
                   f"{100 * float(written.mean()):.1f}% cells written -> {m.name}, {c.name}")
    log.info("inspect-iuv: %d person(s) drawn to %s", len(persons), out)


def main() -> None:
    cli(prog_name="python -m precompute")


if __name__ == "__main__":
    main()
