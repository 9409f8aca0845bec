"""A generic folder dataset: three image folders, identities from the file names or from sub-folders.

Two layouts (``layout``; ``auto`` tells them apart):

* ``names``: ``ROOT/<train_dir>``, ``ROOT/<query_dir>``, ``ROOT/<gallery_dir>`` (searched recursively), the
  pid and camera read from each file name with ``pattern`` (default: Market's ``<pid>_c<cam>``);
* ``folders``: one sub-folder per identity, ``ROOT/train/<pid>/*.jpg`` (layumi's Person_reID_baseline
  layout, ``prepare.py`` output): the pid is the folder's name, the camera comes from the file name when
  ``pattern`` finds one.

Camera ids are optional: an image whose name gives no camera (a pattern without a ``camid`` group, or a
name it does not match in the ``folders`` layout) gets camera 0 in train and query and camera 1 in the
gallery, so that query and gallery count as two cameras and the same-camera junk rule of the Market
protocol removes nothing (see docs/DESIGN.md, "Protocols").  Negative pids are junk and are dropped; pid 0
is an ordinary identity.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..scan import entry_kind, list_files, read_folder
from .base import IMAGE_EXTS, MARKET_PATTERN, DatasetError, ReidDataset, Triple, inside_folder

__all__ = ["FolderDataset"]

LAYOUTS = ("auto", "names", "folders")
_INT = re.compile(r"^-?\d+$")
#: camera given to images without a camera id, by split: query and gallery are two "cameras"
NO_CAMERA = {"train": 0, "query": 0, "gallery": 1}


def _looks_per_identity(base: Path) -> bool:
    """Sub-folders with integer names and no images at the top: one folder per identity."""
    entries = read_folder(base)
    has_id_dirs = any(entry_kind(e) == "dir" and _INT.match(e.name) for e in entries)
    top_images = any(entry_kind(e) == "file" and e.name.lower().endswith(IMAGE_EXTS) for e in entries)
    return has_id_dirs and not top_images


class FolderDataset(ReidDataset):
    """``ROOT/<train_dir>``, ``ROOT/<query_dir>``, ``ROOT/<gallery_dir>`` in either layout (module docstring).

    ``pattern`` is a regular expression searched in each file name, with a named group ``pid`` (``names``
    layout) and optionally ``camid``; ``camid_base`` is the first camera number in the names (1 for
    Market-style names).
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
        layout: str = "auto",
    ) -> None:
        folder = Path(root).expanduser()
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise DatasetError(f"The file-name pattern {pattern!r} is not a valid regular expression ({e}).") from None
        if layout not in LAYOUTS:
            raise DatasetError(f"The folder layout must be one of {', '.join(LAYOUTS)}, not {layout!r}.")
        dirs = {split: inside_folder(d, f"{split}_dir option", folder)
                for split, d in (("train", train_dir), ("query", query_dir), ("gallery", gallery_dir))}
        missing = [d for d in dirs.values() if not (folder / d).is_dir()]
        if missing:
            raise DatasetError(
                f"No folder dataset at {folder}: expected the sub-folders {', '.join(d + '/' for d in dirs.values())} "
                f"(missing {', '.join(d + '/' for d in missing)})."
            )
        self.layout = layout
        splits = {split: [t for t in self._scan(folder, d, regex, layout, int(camid_base), NO_CAMERA[split]) if t[1] >= 0]
                  for split, d in dirs.items()}
        super().__init__(folder, splits["train"], splits["query"], splits["gallery"], protocol="market")

    @staticmethod
    def _scan(folder: Path, sub: str, regex: re.Pattern[str], layout: str, camid_base: int,
              no_camera: int) -> list[Triple]:
        base = folder / sub
        per_identity = layout == "folders" or (layout == "auto" and _looks_per_identity(base))
        if not per_identity and "pid" not in regex.groupindex:
            raise DatasetError(f"The file-name pattern '{regex.pattern}' lacks the named group pid "
                               f"(or use the one-folder-per-identity layout, layout=folders).")
        triples: list[Triple] = []
        bad: list[str] = []
        not_numbers: list[str] = []
        for f in list_files(base, IMAGE_EXTS):  # loops and unreadable folders are sentences (data.scan)
            rel = f.relative_to(folder).as_posix()
            m = regex.search(f.name)
            has_pid = m is not None and "pid" in regex.groupindex
            pid_text = m.group("pid") if has_pid else None
            cam = m.group("camid") if m is not None and "camid" in regex.groupindex else None
            if per_identity:
                parts = f.relative_to(base).parts
                if len(parts) < 2 or not _INT.match(parts[0]):
                    bad.append(f.relative_to(base).as_posix())
                    continue
                pid_text = parts[0]
            elif pid_text is None:
                bad.append(f.name)
                continue
            if not _INT.match(pid_text) or (cam is not None and not cam.isdigit()):
                not_numbers.append(f"{f.name} (pid {pid_text!r}, camid {cam!r})")
                continue
            camid = int(cam) - camid_base if cam is not None else no_camera
            triples.append((rel, int(pid_text), camid))
        if bad:
            what = ("are not inside a sub-folder named by an integer pid" if per_identity
                    else f"have names that do not match the pattern '{regex.pattern}'")
            raise DatasetError(f"{len(bad)} image(s) in {base} {what} (e.g. {', '.join(bad[:3])}).")
        if not_numbers:
            raise DatasetError(
                f"The pattern '{regex.pattern}' gives pid or camid that are not integers for {len(not_numbers)} "
                f"file(s) in {base} (e.g. {', '.join(not_numbers[:3])}).")
        return triples
