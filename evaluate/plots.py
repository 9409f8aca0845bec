"""Pictures of an evaluation: the CMC curve and ranked lists (query + top-k gallery)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data.io import atomic_output, atomic_write_bytes, read_image  # noqa: E402

GREEN, RED, GREY, BLUE, DARK = (40, 170, 40), (210, 40, 40), (150, 150, 150), (40, 90, 210), (70, 70, 70)
TILE_H, TILE_W, BORDER = 128, 64, 4


def plot_cmc(curves: dict[str, Sequence[float]], path: str | os.PathLike, title: str = "CMC") -> None:
    """One CMC curve per label (values in [0, 1]) into a PNG, written atomically."""
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    for label, curve in curves.items():
        ranks = np.arange(1, len(curve) + 1)
        ax.plot(ranks, 100 * np.asarray(curve), marker="o", markersize=3, label=label)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _tile(image: np.ndarray, colour: tuple[int, int, int], greyed: bool, caption: str) -> np.ndarray:
    img = cv2.resize(image, (TILE_W, TILE_H), interpolation=cv2.INTER_AREA)
    if greyed:  # junk: desaturated and washed out
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        img = (0.5 * np.repeat(g[..., None], 3, 2) + 0.5 * 200).astype(np.uint8)
        cv2.line(img, (0, 0), (TILE_W - 1, TILE_H - 1), GREY, 1)
    tile = np.full((TILE_H + 2 * BORDER + 14, TILE_W + 2 * BORDER), 255, np.uint8)
    tile = np.repeat(tile[..., None], 3, 2)
    tile[: TILE_H + 2 * BORDER] = colour
    tile[BORDER : BORDER + TILE_H, BORDER : BORDER + TILE_W] = img
    cv2.putText(tile, caption, (2, TILE_H + 2 * BORDER + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1,
                cv2.LINE_AA)
    return tile


def ranked_list(
    query_path: str | os.PathLike,
    gallery_paths: Sequence[str | os.PathLike],
    status: Sequence[str],
    captions: Sequence[str],
    path: str | os.PathLike,
    query_caption: str = "query",
) -> None:
    """Query (blue border) then the ranked gallery items: ``status`` per item is ``correct``
    (green border), ``wrong`` (red), ``junk`` (grey border, washed out, crossed) or ``unlabelled``
    (dark grey border: a search without identities).  PNG, atomic."""
    colours = {"correct": GREEN, "wrong": RED, "junk": GREY, "unlabelled": DARK}
    tiles = [_tile(read_image(query_path), BLUE, False, query_caption)]
    gap = np.full_like(tiles[0][:, :8], 255)
    tiles.append(gap)
    for p, s, c in zip(gallery_paths, status, captions):
        tiles.append(_tile(read_image(p), colours[s], s == "junk", c))
    strip = np.concatenate(tiles, 1)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode the ranked list for {path}")
    atomic_write_bytes(Path(path), buf.tobytes())
