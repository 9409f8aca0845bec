"""The DSAP store: HDF5 shards of DSAP images plus a manifest (docs/DESIGN.md §6).

Layout of one store folder ``ROOT/dsap/<dataset>/<estimator>[-<tag>]/``::

    shard-00000.h5, shard-00001.h5, ...   complete shards (written to a temporary name, then renamed)
    manifest.json                          written last, atomically: the store is complete when it exists

Each shard holds ``keys`` (image paths relative to the dataset folder), ``dsap`` uint8
[N, 24, 3, S, S] chunked one image per chunk, ``found`` bool [N], ``written`` uint8
[N, 24, S, S/8] (``np.packbits`` over the last axis) and ``coverage`` float32 [N, 24], with the
attributes ``format_version``, ``size``, ``kind``, ``estimator``, ``settings`` (JSON),
``failures`` (JSON list of {key, reason} for the images of this shard that could not be read) and
``provenance`` (JSON: how the shard was computed, see below; absent in shards of older versions).

**Settings and provenance.**  ``settings`` is what decides whether two stores are interchangeable: the
estimator's options and everything else that changes the stored bytes (model content by SHA-256, library
versions where they matter, pinned thread counts), never a path.  ``provenance`` is the record: where
the model files were read from, the versions of the libraries, the process's thread policy, workers and
batch size; it never decides anything, and the manifest lists each distinct one with its shards.

Readers (:class:`DSAPStore`) open HDF5 files lazily and per process: h5py handles do not survive
``fork``, so a store object handed to DataLoader workers re-opens its files in each worker.

What the store guarantees:

- **atomicity**: a shard is built in memory, written to a temporary name, fsynced, read back and
  checked against the sha256 of what was meant to be written, and only then renamed into place, with
  its checksum beside it (``shard-00000.sha256``); a write error (a full disk) is a sentence, never a
  shard.  ``manifest.json`` is written last, atomically, and the store is complete when it exists.
- **checksums**: every shard's sha256 is in the manifest; readers check a shard against it before
  first use in each process (once; a later change of the file's size, mtime or inode re-checks it),
  and ``precompute run`` recomputes every shard that is missing, damaged or unreadable.
- **staleness**: each shard records, per image, the size and mtime of the image and of its DensePose
  side files (``<stem>_IUV.png``, ``<stem>_INDS.png``); ``precompute run`` recomputes the shards
  whose images changed, and training refuses a store whose images changed since it was computed.
- a store folder is locked (``.lock``) by the precompute run writing it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from data.io import (atomic_write_json, atomic_write_text, disk_full_error, file_sha256, library_output, make_folder,
                     process_alive)
from data.names import check_name, dataset_dirname, without_split_options
from dsa.errors import UserError
from dsa.dsap import coverage
from dsa.parts import NUM_PARTS

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.h5$")
LOCK_NAME = ".lock"
#: DensePose side files an estimator may read beside an image: part of what a store key depends on
SIDE_FILE_SUFFIXES = ("_IUV.png", "_INDS.png")
KINDS = ("dsap", "csa")
COMPRESSIONS = (None, "lz4", "lzf", "gzip")
#: what ``precompute run`` writes: LZ4 (HDF5 filter 32004, from ``hdf5plugin``) is as small as lzf on real
#: DSAP images and reads as fast as uncompressed ones (``bench/bench_loader.py``, ``bench/bench_store.py``)
DEFAULT_COMPRESSION = "lz4"
#: the DSAP image sizes S a store may hold: ``written`` masks are packed 8 cells to a byte, and the
#: network's ``model.dsap_size`` goes up to 256 (``precompute run --size`` is declared with these)
DSAP_SIZES = {"min": 8, "max": 256, "multiple_of": 8}
#: HDF5 filter ids the ``hdf5plugin`` package provides and this store may use
PLUGIN_FILTERS = {32004: "lz4"}


class StoreError(UserError):
    """A DSAP store problem a user can fix (missing, incomplete, mismatched or not covering)."""


def load_filter_plugins() -> None:
    """Register the HDF5 compression filters of ``hdf5plugin`` (LZ4) with h5py; a sentence when it is missing."""
    try:
        import hdf5plugin  # noqa: F401  (importing it registers the filters)
    except ImportError:
        raise StoreError("LZ4-compressed DSAP stores need the hdf5plugin package: `pip install hdf5plugin` "
                         "(`make install` installs it), or write the store with `--compression lzf`") from None


def compression_options(compression: str | None) -> dict[str, Any]:
    """``h5py.create_dataset`` keyword arguments of one of :data:`COMPRESSIONS`."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
    if compression == "lz4":
        load_filter_plugins()
        import hdf5plugin

        return dict(hdf5plugin.LZ4())
    return {"compression": compression} if compression else {}


def _needs_plugins(ds: h5py.Dataset) -> bool:
    plist = ds.id.get_create_plist()
    ids = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
    return any(i in PLUGIN_FILTERS and not h5py.h5z.filter_avail(i) for i in ids)


def store_dir(root: str | os.PathLike, dataset: str, estimator: str, tag: str | None = None) -> Path:
    """The folder of the store for ``dataset`` and ``estimator``: ``ROOT/dsap/<dataset>/<estimator>[-<tag>]``
    (names checked to be names; a dataset spec with options becomes ``<name>+<digest of the options>``; the
    options that only choose a split of the same images, such as ``val_ids``, are left out: one store
    serves the dataset and its validation splits)."""
    check_name(estimator, "estimator name")
    name = f"{estimator}-{check_name(tag, 'store tag')}" if tag else estimator
    return Path(root) / "dsap" / dataset_dirname(without_split_options(dataset)) / name


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard-00000.h5``)."""
    return f"shard-{index:05d}.h5"


def fingerprint(keys: Iterable[str]) -> str:
    """sha256 of the sorted keys joined by newlines: identifies the set of images a store covers."""
    return hashlib.sha256("\n".join(sorted(keys)).encode("utf-8")).hexdigest()


def checksum_path(shard: Path) -> Path:
    """Where the sha256 of ``shard`` is kept beside it (``shard-00000.sha256``)."""
    return shard.with_suffix(".sha256")


def recorded_checksum(shard: Path) -> str | None:
    """The sha256 recorded beside ``shard`` when it was written, or None."""
    try:
        text = checksum_path(shard).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def source_signature(dataset_root: str | os.PathLike, key: str) -> str:
    """What identifies the content of image ``key`` cheaply: a digest of the size and mtime (ns) of the
    image and of the DensePose side files beside it (``<stem>_IUV.png``, ``<stem>_INDS.png``).  A file
    that is missing or unreadable counts as such, so a rerun after it is fixed sees the change."""
    path = Path(dataset_root) / key
    parts = []
    for p in (path, *(path.with_name(path.stem + suffix) for suffix in SIDE_FILE_SUFFIXES)):
        try:
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError as e:
            parts.append(f"{p.name}:-{e.errno}")
    return hashlib.blake2b("|".join(parts).encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def content_fingerprint(signatures: dict[str, str]) -> str:
    """sha256 over the sorted (key, source signature) pairs: identifies the content a store was computed from."""
    return hashlib.sha256("\n".join(f"{k}\t{signatures[k]}" for k in sorted(signatures)).encode("utf-8")).hexdigest()


def existing_shards(folder: Path) -> dict[int, Path]:
    """Complete shard files in ``folder`` by index (temporary files are ignored)."""
    out: dict[int, Path] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = SHARD_PATTERN.match(p.name)
            if m:
                out[int(m.group(1))] = p
    return out


_TEMPORARY = re.compile(r"\.tmp-(\d+)")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files a killed writer left in a store folder (``shard-N.h5.tmp-PID``,
    ``.shard-N.sha256.tmp-PID-...``, ``.manifest.json.tmp-PID-...``) whose process no longer runs; returns them."""
    removed = []
    for p in Path(folder).iterdir() if Path(folder).is_dir() else []:
        m = _TEMPORARY.search(p.name)
        if m is None or not p.is_file() or int(m.group(1)) == os.getpid() or process_alive(int(m.group(1))):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def read_shard_header(path: Path) -> dict[str, Any]:
    """Attributes and keys of one shard: {format_version, size, kind, estimator, settings, failures, keys}."""
    with h5py.File(path, "r") as f:
        a = f.attrs
        return {
            "format_version": int(a["format_version"]),
            "size": int(a["size"]),
            "kind": str(a["kind"]),
            "estimator": str(a["estimator"]),
            "settings": json.loads(a["settings"]),
            "failures": json.loads(a.get("failures", "[]")),
            "keys": [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in f["keys"][()]],
            "sources": list(f["sources"].asstr()[()]) if "sources" in f else None,
            "provenance": json.loads(a["provenance"]) if "provenance" in a else None,
        }


@dataclass(frozen=True)
class StoreSettings:
    """What makes two stores interchangeable: estimator name and settings, DSAP size and kind."""

    estimator: str
    settings: dict
    size: int = 32
    kind: str = "dsap"

    def as_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "settings": self.settings, "size": self.size, "kind": self.kind}

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Names of the fields where ``other`` (a manifest or shard header) differs from these settings."""
        mine = json.loads(json.dumps(self.as_dict()))  # normalise tuples etc. as JSON would
        return [k for k in ("estimator", "settings", "size", "kind") if mine[k] != other.get(k)]

    def explain(self, other: dict[str, Any], most: int = 3) -> str:
        """The differences from ``other`` (a manifest or shard header) in words, down to the estimator setting:
        e.g. ``settings.threads is 2 in the store and 1 now``."""
        return describe_differences(*self._pair(other), most)

    def unrecorded(self, other: dict[str, Any]) -> list[str]:
        """The settings of this run that ``other`` does not record at all (a store of an older version)."""
        return [path for path, theirs, _ in _leaf_differences(*self._pair(other)) if theirs is _ABSENT]

    def _pair(self, other: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        fields = ("estimator", "settings", "size", "kind")
        mine = json.loads(json.dumps(self.as_dict()))  # normalise tuples etc. as JSON would
        return {k: other.get(k, _ABSENT) for k in fields}, {k: mine[k] for k in fields}


def describe_differences(stored: dict[str, Any], current: dict[str, Any], most: int = 3,
                         sides: tuple[str, str] = ("in the store", "now")) -> str:
    """Where two JSON dicts differ, leaf by leaf: ``settings.threads is 2 in the store and 1 now`` (the first
    ``most``, then how many more; ``sides`` words the two); a value one side lacks is "not recorded" there.
    Empty when they agree."""
    found = _leaf_differences(stored, current)
    words = [f"{path} is {_shown(theirs)} {sides[0]} and {_shown(ours)} {sides[1]}" for path, theirs, ours in found[:most]]
    if len(found) > most:
        words.append(f"{len(found) - most} more")
    return "; ".join(words)


_ABSENT = object()


def _leaf_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted path, stored value, current value) of every leaf where two JSON dicts differ."""
    found: list[tuple[str, Any, Any]] = []

    def walk(path: str, theirs: Any, ours: Any) -> None:
        if isinstance(theirs, dict) or isinstance(ours, dict):
            if isinstance(theirs, dict) == isinstance(ours, dict) or _ABSENT in (theirs, ours):
                a = theirs if isinstance(theirs, dict) else {}
                b = ours if isinstance(ours, dict) else {}
                for k in sorted(set(a) | set(b)):
                    walk(f"{path}.{k}" if path else k, a.get(k, _ABSENT), b.get(k, _ABSENT))
                return
        if theirs != ours:
            found.append((path, theirs, ours))

    walk("", stored, current)
    return found


def _shown(value: Any) -> str:
    """A setting's value in a sentence: digests shortened, absent said as such."""
    if value is _ABSENT:
        return "not recorded"
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40,64}", value):
        return value[:12] + "..."
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class StoreWriter:
    """Writes the shards and the manifest of one store folder.

    Every shard is written whole, to ``<name>.tmp-<pid>``, flushed and fsynced, then renamed: a
    reader or a resumed run sees either no shard or a complete one.
    """

    def __init__(self, folder: str | os.PathLike, settings: StoreSettings, compression: str | None = None) -> None:
        if settings.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {settings.kind!r}")
        if not (DSAP_SIZES["min"] <= settings.size <= DSAP_SIZES["max"]) or settings.size % DSAP_SIZES["multiple_of"]:
            raise ValueError(f"the DSAP size must be a multiple of 8 from 8 to 256, not {settings.size}")
        self.comp_options = compression_options(compression)
        self.folder = Path(folder)
        self.settings = settings
        self.compression = compression
        make_folder(self.folder)

    def shard_path(self, index: int) -> Path:
        return self.folder / shard_name(index)

    def remove_stale_tmp(self, index: int) -> None:
        """Remove temporary files left for shard ``index`` by a killed run (this process owns the shard)."""
        for p in self.folder.glob(shard_name(index) + ".tmp-*"):
            p.unlink(missing_ok=True)

    def write_shard(
        self,
        index: int,
        keys: Sequence[str],
        dsap: np.ndarray,
        written: np.ndarray,
        found: np.ndarray,
        failures: Sequence[dict] = (),
        sources: Sequence[str] | None = None,
        provenance: dict | None = None,
    ) -> Path:
        """Write shard ``index`` atomically and return its final path.

        The HDF5 file is built in memory (so an HDF5 error is an exception here, not a message lost in a
        destructor), written with plain writes (a full disk raises), fsynced, read back and compared
        with the sha256 of the bytes meant to be written; only then are its checksum file and the shard
        itself renamed into place.  ``sources`` are the images' :func:`source_signature` values;
        ``provenance`` (JSON-able) how the shard was computed.
        """
        n, s = len(keys), self.settings.size
        if dsap.shape != (n, NUM_PARTS, 3, s, s) or dsap.dtype != np.uint8:
            raise ValueError(f"dsap must be uint8 {(n, NUM_PARTS, 3, s, s)}, got {dsap.dtype} {dsap.shape}")
        if written.shape != (n, NUM_PARTS, s, s):
            raise ValueError(f"written must be {(n, NUM_PARTS, s, s)}, got {written.shape}")
        if sources is not None and len(sources) != n:
            raise ValueError(f"sources must have {n} entries, got {len(sources)}")
        written = written.astype(bool, copy=False)
        final = self.shard_path(index)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        self.remove_stale_tmp(index)
        comp = self.comp_options
        buffer = io.BytesIO()
        with h5py.File(buffer, "w", libver="latest") as f:
            f.create_dataset("keys", data=np.array(list(keys), dtype=object), dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("dsap", data=dsap, chunks=(1, NUM_PARTS, 3, s, s) if n else None, **comp)
            f.create_dataset("found", data=np.asarray(found, dtype=bool))
            f.create_dataset("written", data=np.packbits(written, axis=-1), chunks=(1, NUM_PARTS, s, s // 8) if n else None)
            f.create_dataset("coverage", data=coverage(written))
            if sources is not None:
                f.create_dataset("sources", data=np.array(list(sources), dtype=object),
                                 dtype=h5py.string_dtype("utf-8"))
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["size"] = s
            f.attrs["kind"] = self.settings.kind
            f.attrs["estimator"] = self.settings.estimator
            f.attrs["settings"] = json.dumps(self.settings.settings, sort_keys=True)
            f.attrs["failures"] = json.dumps(list(failures))
            if provenance is not None:
                f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        data = buffer.getbuffer()
        digest = hashlib.sha256(data).hexdigest()
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if file_sha256(tmp) != digest:  # read back: what is on disk is what was meant
                raise StoreError(f"the shard {final.name} read back differently from what was written to {self.folder} "
                                 f"(a failing disk?); check the disk and rerun `make precompute`")
            atomic_write_text(checksum_path(final), digest + "\n")
            os.replace(tmp, final)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            full = disk_full_error(e, tmp)
            if full is not None:
                raise full from None
            raise
        _fsync_dir(self.folder)
        return final

    def write_manifest(self, dataset: str, all_keys: Sequence[str], num_shards: int, extra: dict | None = None,
                       signatures: dict[str, str] | None = None) -> dict:
        """Gather the shards' counts, checksums and failures and write ``manifest.json`` (last, atomically)."""
        shards, failures, num_images, num_found = [], [], 0, 0
        provenance: dict[str, list[str]] = {}  # distinct provenance (JSON text) -> its shards
        for i in range(num_shards):
            path = self.shard_path(i)
            with h5py.File(path, "r") as f:
                count = int(f["keys"].shape[0])
                num_found += int(np.count_nonzero(f["found"][()]))
                failures.extend(json.loads(f.attrs.get("failures", "[]")))
                provenance.setdefault(str(f.attrs.get("provenance", "null")), []).append(path.name)
            num_images += count
            digest = file_sha256(path)
            if recorded_checksum(path) not in (None, digest):
                raise StoreError(f"the shard {path} changed after it was written (its checksum differs from "
                                 f"{checksum_path(path).name}); rerun `make precompute` to recompute it")
            shards.append({"name": path.name, "num_images": count, "sha256": digest})
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            **self.settings.as_dict(),
            "fingerprint": fingerprint(all_keys),
            "content_fingerprint": content_fingerprint(signatures) if signatures is not None else None,
            "num_images": num_images,
            "num_found": num_found,
            "shards": shards,
            "failures": failures,
            "provenance": [{"shards": names, **(json.loads(text) or {})} for text, names in provenance.items()],
            **(extra or {}),
        }
        atomic_write_json(self.folder / MANIFEST_NAME, manifest)
        return manifest


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of a store folder, or None when there is none (the store is absent or incomplete)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StoreError(f"the store manifest {path} cannot be read ({e}); rerun `make precompute`, which "
                         f"rebuilds it from the intact shards and recomputes only what is missing") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise StoreError(f"the store manifest {path} is not a manifest of this program ({problem}); rerun "
                         f"`make precompute`, which rebuilds it from the intact shards and recomputes only what is missing")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    """What makes ``manifest`` unusable, in words, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return "no list of shards"
    for entry in shards:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and SHARD_PATTERN.match(entry["name"])
                and isinstance(entry.get("sha256"), str) and isinstance(entry.get("num_images"), int)):
            return f"a shard entry {str(entry)[:80]} without a shard name, sha256 and image count"
    for name, kind in (("size", int), ("kind", str), ("estimator", str)):
        if not isinstance(manifest.get(name), kind):
            return f"no {name}"
    if not isinstance(manifest.get("failures", []), list):
        return "failures that are not a list"
    return None


def low_found_sentence(folder: str | os.PathLike, estimator: str, num_found: int, num_images: int,
                       failures: Sequence[dict], min_found: float, required: str, way_out: str) -> str | None:
    """A store (or a run's count of it) in which the estimator found a person in fewer than ``min_found``
    of the images, in one sentence: almost always the wrong estimator for the images (``synthetic`` reads
    the ground truth the synthetic generator writes beside its images; real crops need ``densepose`` or
    ``pose``).  None when the share is reached (or there are no images)."""
    if num_images == 0 or num_found >= min_found * num_images:
        return None
    example = ""
    if failures and isinstance(failures[0], dict):
        example = f"; {len(failures)} image(s) failed, e.g. {failures[0].get('key')}: {failures[0].get('reason')}"
    return (f"the {estimator} estimator found a person in only {num_found} of {num_images} images of the store "
            f"{folder} ({100 * num_found / num_images:.1f}%, below the {100 * min_found:g}% {required}){example}; "
            f"this is most likely the wrong estimator for these images (synthetic reads the ground truth the "
            f"synthetic generator writes beside its images, real crops need densepose or pose): {way_out}")


def open_store(root: str | os.PathLike, dataset: str, estimator: str, tag: str | None = None, *,
               kind: str = "dsap", size: int | None = None) -> "DSAPStore":
    """The complete store of ``dataset`` by ``estimator`` (and ``tag``) under ``root``, checked to hold
    ``kind`` part images of ``size`` pixels: what training and the fused evaluation read."""
    store = DSAPStore(store_dir(root, dataset, estimator, tag))
    if store.kind != kind:
        raise StoreError(f"the store at {store.folder} holds {store.kind!r} part images, not {kind!r}; precompute "
                         f"with --kind {kind} (and a --tag), or ask for --input {store.kind}")
    if size is not None and store.size != size:
        raise StoreError(f"the store at {store.folder} has {store.size}x{store.size} part images but the network "
                         f"expects S={size}; precompute with --size {size} (and a --tag), or choose another preset")
    if store.estimator != estimator:
        raise StoreError(f"the store at {store.folder} was computed by estimator {store.estimator!r}, "
                         f"not {estimator!r}")
    store.check_checksums()
    store.check_reads = True
    return store


class DSAPStore:
    """Reader of a complete DSAP store: look up DSAP images, written masks and found flags by key."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            if existing_shards(self.folder):
                raise StoreError(f"the DSAP store at {self.folder} is incomplete (no manifest yet); finish it with `make precompute`")
            raise StoreError(f"no DSAP store at {self.folder}; create it with `make precompute`")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"the DSAP store at {self.folder} has format version {version}, this code reads version "
                f"{FORMAT_VERSION}; rebuild it with `make precompute ARGS=--force`"
            )
        self.manifest = manifest
        self._index: dict[str, tuple[int, int]] = {}
        self._shard_paths: list[Path] = []
        for s, shard in enumerate(manifest["shards"]):
            path = self.folder / shard["name"]
            if not path.is_file():
                raise StoreError(f"the DSAP store at {self.folder} lacks its shard {shard['name']}; rerun `make precompute`, "
                                 f"which recomputes missing shards")
            self._shard_paths.append(path)
            try:
                with h5py.File(path, "r") as f:
                    for row, key in enumerate(f["keys"].asstr()[()]):
                        self._index[key] = (s, row)
            except (OSError, KeyError, ValueError) as e:
                raise StoreError(
                    f"the shard {path} is damaged ({e}); rerun `make precompute`, which recomputes damaged shards"
                ) from None
        self._verified: dict[int, tuple[int, int, int]] = {}  # shard -> (size, mtime_ns, inode) when checked
        self.check_reads = False  # open_store: check each shard's checksum before its first read in a process
        self._pid: int | None = None
        self._files: dict[int, h5py.File] = {}
        self._datasets: dict[tuple[int, str], h5py.Dataset] = {}

    # ----------------------------------------------------------------- metadata
    @property
    def keys(self) -> list[str]:
        """All keys, sorted."""
        return sorted(self._index)

    @property
    def settings(self) -> dict:
        """The estimator's settings the store was computed with."""
        return self.manifest["settings"]

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def estimator(self) -> str:
        return str(self.manifest["estimator"])

    @property
    def provenance(self) -> list[dict]:
        """How the shards were computed: each distinct record with its ``shards`` (empty: an older store)."""
        return list(self.manifest.get("provenance", []))

    @property
    def failures(self) -> list[dict]:
        return list(self.manifest.get("failures", []))

    @property
    def settings_record(self) -> dict[str, Any]:
        """What the store was computed with (estimator, its settings, DSAP size and kind): a run records it
        per dataset, and the fused evaluation refuses a store whose record differs."""
        return {k: self.manifest.get(k) for k in ("estimator", "settings", "size", "kind")}

    @property
    def digest(self) -> str:
        """sha256 over the manifest's settings, key-set fingerprint and shard checksums: identifies the
        store's exact content (a run records it, so that resuming on a recomputed store is refused)."""
        m = self.manifest
        record = {**self.settings_record, "fingerprint": m.get("fingerprint")}
        record["shards"] = [shard["sha256"] for shard in m["shards"]]
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __repr__(self) -> str:
        return f"DSAPStore({str(self.folder)!r}, {len(self)} images, {self.kind} S={self.size}, {self.estimator})"

    # ----------------------------------------------------------------- checksums and staleness
    def _check_shard(self, shard: int) -> None:
        """Check shard ``shard`` against the manifest's sha256 unless it was checked (in this process or
        the one that handed this store over) and its size, mtime and inode have not changed since."""
        path = self._shard_paths[shard]
        try:
            st = path.stat()
        except OSError as e:
            raise StoreError(f"the shard {path} cannot be read ({e.strerror}); rerun `make precompute`, which "
                             f"recomputes missing shards") from None
        ident = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._verified.get(shard) == ident:
            return
        if file_sha256(path) != self.manifest["shards"][shard]["sha256"]:
            raise StoreError(f"the shard {path} is damaged (its sha256 differs from the manifest's); rerun "
                             f"`make precompute`, which recomputes damaged shards")
        self._verified[shard] = ident

    def check_checksums(self) -> None:
        """Check every shard against the manifest (a StoreError naming the first damaged one)."""
        for shard in range(len(self._shard_paths)):
            self._check_shard(shard)

    def source_signatures(self) -> dict[str, str | None]:
        """Per key, the :func:`source_signature` recorded when it was computed (None: not recorded, a store
        written before they were)."""
        out: dict[str, str | None] = {}
        for path in self._shard_paths:
            with h5py.File(path, "r") as f:
                keys = f["keys"].asstr()[()]
                sources = f["sources"].asstr()[()] if "sources" in f else [None] * len(keys)
                out.update(zip(keys, sources))
        return out

    def stale_keys(self, dataset_root: str | os.PathLike, keys: Iterable[str]) -> list[str]:
        """The keys whose image (or side files) changed since the store was computed (keys without a
        recorded signature, in stores of older versions of this program, are not counted)."""
        recorded = self.source_signatures()
        return [k for k in keys if recorded.get(k) is not None and recorded[k] != source_signature(dataset_root, k)]

    def check_fresh(self, dataset_root: str | os.PathLike, keys: Iterable[str], what: str = "") -> None:
        """What a reader checks before it uses the store for ``keys`` (training, the fused evaluation and
        ``precompute run``'s "up to date" alike): every shard against the manifest's checksum, every key in
        the store, no image (or side file) changed since it was computed.  A StoreError names the first
        problem; ``what`` words the images (``"training "``)."""
        keys = list(keys)
        self.check_checksums()
        self.check_covers(keys)
        stale = self.stale_keys(dataset_root, keys)
        if stale:
            raise StoreError(f"{len(stale)} {what}image(s) changed since the store {self.folder} was computed "
                             f"(e.g. {', '.join(stale[:3])}); rerun `make precompute`, which recomputes them")

    def low_found(self, min_found: float, required: str, way_out: str) -> str | None:
        """The sentence of a store whose share of images with a person found is below ``min_found`` (None when
        it is not): the likely cause, one recorded failure, ``required`` (which setting asks for the share)
        and ``way_out``."""
        return low_found_sentence(self.folder, self.estimator, int(self.manifest.get("num_found", 0)), len(self),
                                  self.failures, min_found, required, way_out)

    def unreadable(self) -> list[dict]:
        """The failures recorded for images that could not be read at all ({key, reason})."""
        return [f for f in self.failures if isinstance(f, dict)
                and (f.get("kind") == "unreadable" or str(f.get("reason", "")).startswith("cannot read image"))]

    # ----------------------------------------------------------------- lazy per-process handles
    def _dataset(self, shard: int, name: str) -> h5py.Dataset:
        if self._pid != os.getpid():  # first use, or we are in a forked child: never reuse a parent's handle
            self._files, self._datasets, self._pid = {}, {}, os.getpid()
        ds = self._datasets.get((shard, name))
        if ds is None:
            f = self._files.get(shard)
            if f is None:
                if self.check_reads:
                    self._check_shard(shard)
                f = self._files[shard] = h5py.File(self._shard_paths[shard], "r")
            ds = f[name]
            if _needs_plugins(ds):
                load_filter_plugins()
            self._datasets[(shard, name)] = ds
        return ds

    def close(self) -> None:
        """Close this process's open files (they re-open on the next lookup)."""
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files, self._datasets, self._pid = {}, {}, None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_pid=None, _files={}, _datasets={})
        return state

    def _locate(self, key: str) -> tuple[int, int]:
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in the DSAP store at {self.folder}") from None

    # ----------------------------------------------------------------- lookups
    def get(self, key: str) -> np.ndarray:
        """DSAP images of ``key``: uint8 [24, 3, S, S] (RGB)."""
        s, row = self._locate(key)
        return self._dataset(s, "dsap")[row]

    def get_written(self, key: str) -> np.ndarray:
        """Which cells of ``key``'s DSAP images were written: bool [24, S, S]."""
        s, row = self._locate(key)
        return np.unpackbits(self._dataset(s, "written")[row], axis=-1, count=self.size).astype(bool)

    def found(self, key: str) -> bool:
        """Whether the estimator found a person in ``key``'s image."""
        s, row = self._locate(key)
        return bool(self._dataset(s, "found")[row])

    def table(self, name: str) -> np.ndarray:
        """A per-image column (``found`` or ``coverage``) for all images, in :attr:`keys` order."""
        columns = [self._dataset(s, name)[()] for s in range(len(self._shard_paths))]
        offsets = np.cumsum([0] + [len(c) for c in columns])
        rows = [offsets[s] + row for s, row in (self._index[k] for k in self.keys)]
        return np.concatenate(columns)[rows] if columns else np.zeros((0,))

    def check_covers(self, keys: Iterable[str]) -> None:
        """Raise :class:`StoreError` (with counts and a few examples) unless every key is in the store."""
        keys = list(keys)
        missing = [k for k in keys if k not in self._index]
        if missing:
            examples = ", ".join(missing[:3])
            raise StoreError(
                f"the DSAP store at {self.folder} does not cover the dataset: {len(missing)} of {len(keys)} "
                f"images missing (e.g. {examples}); rerun `make precompute` for this dataset and estimator"
            )

    def verify(self, progress: bool | None = None) -> list[str]:
        """Check checksums against the manifest and read every array; returns a list of problems (empty = fine).

        A progress bar (in images) runs on a terminal, or always with ``progress=True``; never with ``False``.
        """
        from tqdm import tqdm

        problems: list[str] = []
        total = sum(int(shard["num_images"]) for shard in self.manifest["shards"])
        with tqdm(total=total, unit="img", desc="verify", leave=False,
                  disable=None if progress is None else not progress) as bar:
            for s, shard in enumerate(self.manifest["shards"]):
                path = self._shard_paths[s]
                if file_sha256(path) != shard["sha256"]:
                    problems.append(f"{shard['name']}: checksum differs from the manifest")
                said: list[str] = []
                try:
                    with h5py.File(path, "r") as f:
                        n = f["keys"].shape[0]
                        if n != shard["num_images"]:
                            problems.append(f"{shard['name']}: {n} images, the manifest says {shard['num_images']}")
                        for name in ("dsap", "found", "written", "coverage"):
                            if f[name].shape[0] != n:
                                problems.append(f"{shard['name']}: {name} has {f[name].shape[0]} rows, expected {n}")
                        if _needs_plugins(f["dsap"]):
                            load_filter_plugins()
                        for row in range(n):  # chunk by chunk, so a damaged chunk is found
                            with library_output() as said:  # a filter's own line goes into the problem
                                f["dsap"][row]
                                f["written"][row]
                            bar.update(1)
                except (OSError, KeyError, ValueError) as e:
                    detail = f"; the decompressor said: {said[0]}" if said else ""
                    problems.append(f"{shard['name']}: unreadable ({e}{detail})")
        return problems
