"""Listing the images of a folder: one walk for every dataset layout and for search.

:func:`list_files` walks a folder (into its sub-folders, or not) and follows symbolic links to folders,
and it says, in one sentence (:class:`ScanError`), what a walk must not pass over in silence:

* a link that leads back into a folder being walked (``train/loopdir -> .``: a loop, whose images would
  be listed again and again), or to a folder listed already (the same images twice);
* a folder that cannot be read (its permissions), whose images would be missing.

A symbolic link that cannot be followed (dangling, or a link to itself) whose name is an image's is listed
like a file, in every layout: each stage then names it as an unreadable image (``data.io.read_image``
says why, with :func:`link_reason`), as it does any other file it cannot read.

Kept free of heavy imports: every dataset adapter and ``evaluate.search`` use it.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Sequence

from dsa.errors import UserError

#: DensePose side files, never images of their own
SIDE_FILE_SUFFIXES = ("_iuv.png", "_inds.png")


class ScanError(UserError):
    """A folder that cannot be listed as it is: a loop, a folder reached twice, a folder that cannot be read."""


def read_folder(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder``, sorted by name; a folder that cannot be read is a ScanError."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise ScanError(f"cannot read the folder {folder} ({e.strerror or e}): its images would be left out; fix its "
                        f"permissions (or move it out of the dataset) and rerun") from None


def entry_kind(entry: os.DirEntry) -> str:
    """'dir', 'file', or 'other' (a socket, a device...); a link that cannot be followed is a 'file'."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError:  # a link to itself (ELOOP), a link through a folder that cannot be read
        pass
    return "file" if entry.is_symlink() else "other"


def list_files(base: str | os.PathLike, exts: Sequence[str], *, recursive: bool = True,
               skip_suffixes: Sequence[str] = SIDE_FILE_SUFFIXES) -> list[Path]:
    """The files under ``base`` whose names end with one of ``exts`` (any case), except ``skip_suffixes``,
    sorted; sub-folders (and links to folders) are walked when ``recursive``.  Loops, folders reached twice
    and folders that cannot be read are ScanErrors (module docstring)."""
    base = Path(base)
    exts, skip = tuple(e.lower() for e in exts), tuple(s.lower() for s in skip_suffixes)
    files: list[Path] = []
    seen: dict[tuple[int, int], Path] = {}
    stack: list[tuple[Path, tuple[tuple[int, int], ...]]] = [(base, ())]
    while stack:
        folder, chain = stack.pop()
        try:
            st = folder.stat()
        except OSError as e:
            raise ScanError(f"cannot read the folder {folder} ({e.strerror or e}); fix it and rerun") from None
        ident = (st.st_dev, st.st_ino)
        if ident in chain:
            raise ScanError(f"the folder {folder} leads back into {seen[ident]} through a symbolic link (a loop: "
                            f"its images would be listed again and again); remove the link {_link_of(folder, base)} "
                            f"and rerun")
        if ident in seen:
            link = next((p for p in (_link_of(folder, base), _link_of(seen[ident], base)) if p.is_symlink()), folder)
            raise ScanError(f"the folder {seen[ident]} is reached a second time as {folder} through a symbolic link "
                            f"(its images would be listed twice); remove the link {link} and rerun")
        seen[ident] = folder
        subfolders = []
        for entry in read_folder(folder):
            kind = entry_kind(entry)
            if kind == "dir":
                if recursive:
                    subfolders.append(Path(entry.path))
            elif kind == "file":
                name = entry.name.lower()
                if name.endswith(exts) and not name.endswith(skip):
                    files.append(Path(entry.path))
        stack.extend((f, (*chain, ident)) for f in reversed(subfolders))
    return sorted(files)


def _link_of(folder: Path, base: Path) -> Path:
    """The symbolic link on the way from ``base`` to ``folder`` (the nearest one to ``folder``)."""
    p = folder
    while p != base and p != p.parent:
        if p.is_symlink():
            return p
        p = p.parent
    return folder


def link_reason(path: str | os.PathLike) -> str | None:
    """Why the symbolic link ``path`` cannot be followed, in words (None when it is not such a link)."""
    p = Path(path)
    try:
        target = os.readlink(p)
    except OSError:
        return None
    try:
        p.stat()
    except FileNotFoundError:
        return f"is a symbolic link to {target}, which does not exist"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link that loops (it points back to itself)"
        return f"is a symbolic link to {target}, which cannot be read ({e.strerror})"
    return None


def is_utf8(name: str) -> bool:
    """Whether ``name`` (a file name as Python decodes it: undecodable bytes become surrogates) is UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
