"""``python -m data``: dataset statistics and image checks (``stats``), synthetic generation (``synth``).

User-fixable errors (:class:`DatasetError`, bad ``-o`` options) print one sentence and exit 2.
``stats --check-images`` exits 1 when some images cannot be read, after listing them with reasons.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from tqdm import tqdm

from .console import CONTEXT, ROOT_ENV, Group, IntRange
from .datasets import DATASETS, DatasetError, ReidDataset, build_dataset
from .io import ImageReadError, read_image

log = logging.getLogger("data")



class LazyGroup(Group):
    """A group whose ``synth`` command is imported only when used, so ``stats`` never depends on it."""

    lazy = {"synth": ("data.synthetic", "synth_command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, attr = self.lazy[name]
            try:
                return getattr(__import__(module, fromlist=[attr]), attr)
            except (ImportError, AttributeError) as e:
                return _unavailable(name, f"{module}.{attr} is not available ({e})")
        return super().get_command(ctx, name)


def _unavailable(name: str, why: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help=f"(unavailable: {why})")
    def cmd() -> None:
        raise DatasetError(f"The {name} command is unavailable: {why}.")
    return cmd


def parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("split=1", "seed=3")`` → ``{"split": "1", "seed": "3"}``; typing is left to ``build_dataset``."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DatasetError(f"Option {pair!r} is not of the form key=value.")
        options[key.strip()] = value
    return options


def find_unreadable_images(dataset: ReidDataset, workers: int = 4) -> tuple[int, list[tuple[str, str]]]:
    """Read every image of ``dataset``; return (number checked, [(relative path, reason), ...] of failures)."""
    items = dataset.all_items()

    def check(path: str) -> tuple[str, str] | None:
        try:
            read_image(dataset.root / path)
        except ImageReadError as e:
            return path, e.reason
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV decodes without the GIL
        results = list(tqdm(pool.map(check, (it.key for it in items)), total=len(items),
                            desc="check images", unit="img", leave=False))
    bad = [r for r in results if r is not None]
    log.info("checked %d images of %s: %d unreadable", len(items), dataset.name, len(bad))
    return len(items), bad


def format_table(stats: dict[str, Any]) -> str:
    """The split | ids | images | cameras table of :meth:`ReidDataset.stats`."""
    rows = [("split", "ids", "images", "cameras")]
    rows += [(s, str(v["ids"]), str(v["images"]), str(v["cameras"])) for s, v in stats["splits"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{stats['dataset']} ({stats['protocol']}) at {stats['root']}"]
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """DSA-reID data tools: dataset statistics, image checks and the synthetic dataset."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--dataset", "name", required=True, metavar="NAME[:KEY=VALUE,...]",
              help=f"Dataset adapter ({', '.join(sorted(DATASETS))}); 'name:key=value,...' passes adapter options "
                   "as every stage takes them (e.g. cuhk01:split=3).")
@click.option("--root", default="datasets", show_default=True, envvar=ROOT_ENV, show_envvar=True,
              type=click.Path(file_okay=False), help="Data root (or the dataset folder itself).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--check-images", is_flag=True, help="Read every image and report unreadable ones.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Adapter option, e.g. -o split=1 -o seed=0 (cuhk01) or -o pattern=... (folder).")
@click.option("--workers", default=min(4, os.cpu_count() or 1), show_default=True, type=IntRange(min=1),
              help="Threads for --check-images.")
def stats(name: str, root: str, as_json: bool, check_images: bool, options: tuple[str, ...], workers: int) -> None:
    """Ids, images and cameras per split of a dataset (table or --json)."""
    dataset = build_dataset(name, root, **parse_options(options))
    result = dataset.stats()
    bad: list[tuple[str, str]] = []
    if check_images:
        checked, bad = find_unreadable_images(dataset, workers)
        result["check_images"] = {"checked": checked, "unreadable": len(bad),
                                  "examples": [{"key": p, "reason": r} for p, r in bad[:10]]}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(result))
        if check_images:
            click.echo(f"checked {result['check_images']['checked']} images: {len(bad)} unreadable")
            for p, r in bad[:10]:
                click.echo(f"  {p}: {r}")
            if len(bad) > 10:
                click.echo(f"  ... and {len(bad) - 10} more")
    if bad:
        sys.exit(1)


def main() -> None:
    cli(prog_name="python -m data")
