"""A generic folder dataset: three image folders and a file-name pattern giving pid and camera."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .base import MARKET_PATTERN, DatasetError, ReidDataset, inside_folder, scan_images

__all__ = ["FolderDataset"]


class FolderDataset(ReidDataset):
    """``ROOT/<train_dir>``, ``ROOT/<query_dir>``, ``ROOT/<gallery_dir>`` (searched recursively).

    ``pattern`` is a regular expression searched in each file name, with named groups ``pid`` and
    ``camid`` (default: the Market pattern ``<pid>_c<cam>``); ``camid_base`` is the first camera number in
    the names (1 for Market-style names). Negative pids are junk and are dropped; pid 0 is an ordinary id.
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike,
        pattern: str = MARKET_PATTERN,
        train_dir: str = "train",
        query_dir: str = "query",
        gallery_dir: str = "gallery",
        camid_base: int | str = 1,
    ) -> None:
        folder = Path(root).expanduser()
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise DatasetError(f"The file-name pattern {pattern!r} is not a valid regular expression ({e}).") from None
        dirs = tuple(inside_folder(d, f"{name} option", folder)
                     for d, name in ((train_dir, "train_dir"), (query_dir, "query_dir"), (gallery_dir, "gallery_dir")))
        missing = [d for d in dirs if not (folder / d).is_dir()]
        if missing:
            raise DatasetError(
                f"No folder dataset at {folder}: expected the sub-folders {', '.join(d + '/' for d in dirs)} "
                f"(missing {', '.join(d + '/' for d in missing)})."
            )
        train, query, gallery = (
            [t for t in scan_images(folder, d, regex, recursive=True, camid_base=int(camid_base)) if t[1] >= 0]
            for d in dirs
        )
        super().__init__(folder, train, query, gallery, protocol="market")
