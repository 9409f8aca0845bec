"""Market-1501-style datasets: Market-1501, DukeMTMC-reID and the embedded synthetic dataset.

Layout: ``bounding_box_train/``, ``bounding_box_test/`` (gallery) and ``query/`` of ``*.jpg`` named
``<pid>_c<cam>...``. pid −1 images are junk and are dropped; pid 0 images are distractors: kept in the
gallery, dropped from train and query (they have no true match). Camera ids become 0-based.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .base import MARKET_PATTERN, DatasetError, ReidDataset, Triple, find_dataset_dir, scan_images

__all__ = ["MarketLike", "Market1501", "DukeMTMCreID", "Synthetic"]

_SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")


class MarketLike(ReidDataset):
    """Base for the Market layout; subclasses set the folder names to look for and the camera count."""

    #: sub-folders of ROOT tried in order ("" = ROOT itself)
    folder_candidates: Sequence[str] = ("",)
    #: camera ids in the names are 1..max_cameras (None: no limit)
    max_cameras: int | None = None
    layout_name = "Market-1501 layout"

    def __init__(self, root: str | os.PathLike) -> None:
        folder = self.locate(Path(root))
        train, query, gallery = (self.keep(self._list(folder, d)) for d in _SPLIT_DIRS)
        train = [t for t in train if t[1] > 0]
        query = [t for t in query if t[1] > 0]
        gallery = [t for t in gallery if t[1] >= 0]
        super().__init__(folder, train, query, gallery)

    def keep(self, triples: list[Triple]) -> list[Triple]:
        """The triples this dataset uses (all of them; subclasses may select identities)."""
        return triples

    def locate(self, root: Path) -> Path:
        layout = f"{self.layout_name} ({', '.join(d + '/' for d in _SPLIT_DIRS)})"
        return find_dataset_dir(root, self.folder_candidates, _SPLIT_DIRS, layout)

    def _list(self, folder: Path, sub: str) -> list[Triple]:
        triples = scan_images(folder, sub, MARKET_PATTERN, exts=(".jpg", ".jpeg", ".png"))
        if self.max_cameras is not None:
            bad = [p for p, _, c in triples if not 0 <= c < self.max_cameras]
            if bad:
                raise DatasetError(
                    f"{len(bad)} image(s) in {folder / sub} have a camera outside c1..c{self.max_cameras} "
                    f"for {self.name} (e.g. {', '.join(bad[:3])})."
                )
        return triples


class Market1501(MarketLike):
    """Market-1501 (Zheng et al., ICCV 2015): 751/750 ids, 6 cameras; folders as torchreid/fast-reid use them."""

    name = "market1501"
    folder_candidates = (
        "market1501/Market-1501-v15.09.15",
        "market1501",
        "Market-1501-v15.09.15",
        "Market-1501",
        "",
    )
    max_cameras = 6


class DukeMTMCreID(MarketLike):
    """DukeMTMC-reID (Zheng et al., ICCV 2017): 702/1110 ids (408 gallery distractors), 8 cameras."""

    name = "dukemtmcreid"
    layout_name = "DukeMTMC-reID layout"
    folder_candidates = (
        "dukemtmc-reid/DukeMTMC-reID",
        "dukemtmc-reid",
        "DukeMTMC-reID",
        "dukemtmcreid/DukeMTMC-reID",
        "dukemtmcreid",
        "",
    )
    max_cameras = 8


class Synthetic(MarketLike):
    """The embedded synthetic dataset written by ``data.synthetic`` (Market layout under ROOT/synthetic/).

    ``ids`` selects identities: ``all`` (default), ``first`` (pids 1..N/2 of the N generated) or ``second``
    (the others).  The two halves are disjoint sets of people, each with train and test identities: a
    source and a target dataset for a fine-tuning recipe (``synthetic:ids=first`` -> ``synthetic:ids=second``,
    as CUHK03 -> CUHK01).
    """

    name = "synthetic"
    layout_name = "synthetic dataset (Market-1501 layout)"
    ID_SUBSETS = ("all", "first", "second")

    def __init__(self, root: str | os.PathLike, ids: str = "all") -> None:
        if ids not in self.ID_SUBSETS:
            raise DatasetError(f"Option ids of dataset 'synthetic' must be one of {', '.join(self.ID_SUBSETS)}, "
                               f"not {ids!r}.")
        self.ids = ids
        super().__init__(root)

    def keep(self, triples: list[Triple]) -> list[Triple]:
        if self.ids == "all":
            return triples
        half = _num_ids(self._meta) // 2
        first = self.ids == "first"
        return [t for t in triples if t[1] <= 0 or (t[1] <= half) == first]

    def locate(self, root: Path) -> Path:
        root = root.expanduser()
        for folder in (root / "synthetic", root):
            if (folder / "synthetic.json").is_file() and all((folder / d).is_dir() for d in _SPLIT_DIRS):
                self._meta = folder / "synthetic.json"
                return folder
        raise DatasetError(
            f"No synthetic dataset at {root / 'synthetic'}: run `make synth` (or `make demo`) to generate it."
        )


def _num_ids(path: Path) -> int:
    """The number of identities ``data.synthetic`` generated (from its ``synthetic.json``)."""
    import json

    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        return int((meta.get("settings") or meta)["num_ids"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"Cannot read the number of identities from {path} ({e}); regenerate with `make synth`.") from None
