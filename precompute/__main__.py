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
                         ("precompute.estimators.base", "EstimatorError")):
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
    from data.cli import parse_options as parse_pairs

    out: dict[str, Any] = {}
    for key, value in parse_pairs(pairs).items():
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
@click.option("--compression", default="lzf", show_default=True, type=click.Choice(["none", "lzf", "gzip"]),
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


#: Estimator options naming files that are unpickled or executed when the estimator is built (an apply_net
#: dump, detectron2 weights and configs). A store's manifest may come from anyone: these are taken from the
#: command line (``inspect -o``) only, never from the store's settings.
EXPLICIT_ONLY_OPTIONS = ("dump", "weights", "config")


def label_map_estimator(estimator: str, dataset_root: Path, settings: dict, options: dict[str, Any]) -> Any:
    """The store's estimator, rebuilt to draw part-label maps that match the store's DSAP images.

    The store's settings that are options of the estimator are reused (simulated errors, seeds, thresholds),
    except :data:`EXPLICIT_ONLY_OPTIONS`; ``options`` (``inspect -o``) override them. Returns ``None`` with a
    warning when it cannot be built: the montages are drawn without label maps rather than with wrong ones."""
    from precompute.estimators import build_estimator, estimator_options

    if options:  # asked for explicitly: a wrong option is the user's to fix (one sentence, exit 2)
        unknown = sorted(set(options) - set(estimator_options(estimator)))
        if unknown:
            return build_estimator(estimator, dataset_root, **options)  # raises EstimatorError naming the options
    try:
        accepted = estimator_options(estimator)
        reused = {k: v for k, v in settings.items() if k in accepted and k not in EXPLICIT_ONLY_OPTIONS}
        return build_estimator(estimator, dataset_root, **{**reused, **options})
    except Exception as e:  # noqa: BLE001 - the montage is still useful without the label map
        log.warning("montages without part-label maps: the %s estimator cannot be rebuilt (%s); pass its options "
                    "with -o KEY=VALUE", estimator, e)
        return None


def _label_map(est: Any, image: Any, path: Path, key: str) -> Any:
    """The part-label map of one image (None when there is no estimator or it fails on this image)."""
    if est is None:
        return None
    try:
        iuv = est.estimate([image], [path], [key])[0]
    except Exception as e:  # noqa: BLE001
        log.warning("no part-label map for %s (%s)", key, e)
        return None
    return None if iuv is None else iuv.I


@cli.command("inspect")
@click.option("--dataset", required=True, help="Dataset name.")
@click.option("--root", default="datasets", show_default=True, type=click.Path(path_type=Path), help="Data root.")
@click.option("--estimator", required=True, help="Estimator the store was computed with.")
@click.option("--tag", default=None, help="Store variant name (as given to `run --tag`).")
@click.option("--verify", "do_verify", is_flag=True, help="Check checksums, every array, keys vs the dataset; exit 1 on problems.")
@click.option("--montage", "montage_keys", multiple=True, help="Write a montage PNG for this key (repeatable).")
@click.option("--montage-random", default=0, type=int, help="Write montages for N random keys.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for --montage-random.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Folder for montages (default: STORE/inspect).")
@click.option("-o", "--option", "options", multiple=True,
              help="Estimator option key=value for the montages' part-label maps (repeatable); the store's own "
                   "settings are used otherwise, except dump=, weights= and config=, which must be given here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_cmd(dataset: str, root: Path, estimator: str, tag: str | None, do_verify: bool,
                montage_keys: tuple[str, ...], montage_random: int, seed: int, out: Path | None,
                options: tuple[str, ...], as_json: bool) -> None:
    """Summarise a DSAP store (coverage per part and group, problems); verify it; draw montages."""
    import numpy as np

    from data.datasets import build_dataset
    from data.io import ImageReadError, read_image
    from data.store import DSAPStore, StoreError, store_dir
    from precompute import inspect as insp

    def go() -> int:
        store = DSAPStore(store_dir(root, dataset, estimator, tag))
        ds = build_dataset(dataset, root)
        keys = [it.path for it in ds.all_items()]
        summary = insp.summarise(store, keys)
        for warning in summary["warnings"] if as_json else []:  # the text report shows them itself
            log.warning("%s", warning)
        code = 0
        if do_verify:
            problems = insp.verify(store, keys)
            summary["verify"] = problems
            code = 1 if problems else 0
        chosen = list(montage_keys)
        if montage_random:
            rng = np.random.default_rng(seed)
            chosen += [store.keys[i] for i in rng.choice(len(store), min(montage_random, len(store)), replace=False)]
        written_files = []
        for key in chosen:
            if key not in store:
                raise StoreError(f"{key!r} is not a key of the store; keys are paths relative to the dataset folder")
        est = label_map_estimator(store.estimator, ds.root, store.settings, parse_options(options)) if chosen else None
        for key in chosen:
            try:
                image = read_image(ds.root / key)
            except ImageReadError as e:  # e.g. an image the run recorded as a failure
                log.warning("no montage for %s: %s", key, e.reason)
                continue
            labels = _label_map(est, image, ds.root / key, key)
            folder = out or store.folder / "inspect"
            path = insp.draw_montage(folder / f"{insp.safe_name(key)}.png", image, store.get(key),
                                     store.get_written(key), labels,
                                     title=f"{dataset} / {store.estimator} ({store.kind})  {key}  found={store.found(key)}")
            written_files.append(str(path))
        summary["montages"] = written_files
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            click.echo(insp.format_summary(summary))
            if do_verify:
                click.echo("verify     " + ("OK" if not summary["verify"] else "\n  ".join(["FAILED", *summary["verify"]])))
            for f in written_files:
                click.echo(f"montage    {f}")
        return code

    sys.exit(_guard(go))


@cli.command("inspect-iuv")
@click.option("--image", "image_path", required=True, type=click.Path(path_type=Path), help="Scene image (e.g. demo_im.jpg).")
@click.option("--iuv", "iuv_path", required=True, type=click.Path(path_type=Path), help="Its DensePose *_IUV.png.")
@click.option("--inds", "inds_path", required=True, type=click.Path(path_type=Path), help="Its *_INDS.png (person index).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder for the PNGs.")
@click.option("--size", default=32, show_default=True, type=int, help="DSAP image size S.")
@click.option("--kind", default="dsap", show_default=True, type=click.Choice(["dsap", "csa"]))
@click.option("--max-persons", default=6, show_default=True, type=int, help="At most this many persons (largest first).")
def inspect_iuv_cmd(image_path: Path, iuv_path: Path, inds_path: Path, out: Path, size: int, kind: str,
                    max_persons: int) -> None:
    """Montages and coverage figures of the persons in one image with its DensePose IUV + INDS output."""
    from data.io import read_image, read_iuv_png
    from dsa.dsap import coverage, crop_csa, warp_dsap
    from precompute import inspect as insp
    from precompute.estimators.iuv import persons_from_inds, read_inds_png

    def go() -> None:
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

    _guard(go)


def main() -> None:
    cli(prog_name="python -m precompute")


if __name__ == "__main__":
    main()
