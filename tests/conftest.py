"""Shared pytest fixtures: tiny fabricated image trees (no real data, no network)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_tiny_image(path: Path, value: int = 128, size: tuple[int, int] = (8, 4)) -> Path:
    """Write a small valid image (format from the suffix) at ``path``, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((*size, 3), value, np.uint8)
    img[0, 0] = (255, 0, 0)
    ok, buf = cv2.imencode(path.suffix or ".jpg", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture
def make_images() -> Callable[[Path, Iterable[str]], list[Path]]:
    """``make_images(folder, names)`` writes a tiny valid image for each relative name under ``folder``."""

    def make(folder: Path, names: Iterable[str]) -> list[Path]:
        return [write_tiny_image(Path(folder) / n, value=10 + 7 * k % 200) for k, n in enumerate(names)]

    return make


@pytest.fixture
def market_tree(tmp_path: Path, make_images) -> Path:
    """A tiny Market-1501 tree at ``tmp_path/market1501``: 3 train ids, 2 test ids, junk and distractors.

    train: ids 1, 2, 5 (2 images each, cameras 1 and 2) + one pid −1 junk;
    query: ids 7, 9 on camera 1; gallery: ids 7, 9 on cameras 2 and 3, 2 pid-0 distractors, 1 junk.
    """
    root = tmp_path / "market1501"
    make_images(root / "bounding_box_train", [
        "0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg",
        "0002_c1s1_000003_00.jpg", "0002_c2s1_000004_00.jpg",
        "0005_c1s1_000005_00.jpg", "0005_c2s1_000006_00.jpg",
        "-1_c1s1_000007_00.jpg",
    ])
    make_images(root / "query", ["0007_c1s1_000010_00.jpg", "0009_c1s1_000011_00.jpg"])
    make_images(root / "bounding_box_test", [
        "0007_c2s1_000012_00.jpg", "0007_c3s1_000013_00.jpg", "0009_c2s1_000014_00.jpg",
        "0000_c1s1_000015_00.jpg", "0000_c3s1_000016_00.jpg", "-1_c2s1_000017_00.jpg",
    ])
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"x")  # non-image files are ignored
    return root


def write_tiny_run(folder: Path, variant: str = "dsa", num_classes: int = 3, *, epoch: int = 1, step: int = 7,
                   complete: bool = True, seed: int = 0) -> Path:
    """A run folder holding a checkpoint of a randomly initialised ``tiny`` network (format of data.runs)."""
    import torch

    from data.runs import RunFolder
    from dsa.model import DSANet
    from dsa.config import get_preset

    torch.manual_seed(seed)
    p = get_preset("tiny")
    net = DSANet(p.model, num_classes, variant=variant)
    config = {"dataset": "market1501", "estimator": "synthetic", "tag": None, "input": "dsap", "preset": "tiny",
              "variant": variant, "num_classes": num_classes, "model": p.model.to_dict(), "recipe": p.recipe.to_dict()}
    return RunFolder(folder).write_checkpoint(config=config, model_state=net.state_dict(), training={},
                                              epoch=epoch, step=step, complete=complete)
