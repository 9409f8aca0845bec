"""The DSAP store: HDF5 shards of DSAP images plus a manifest (docs/DESIGN.md §6).

Layout of one store folder ``ROOT/dsap/<dataset>/<estimator>[-<tag>]/``::

    shard-00000.h5, shard-00001.h5, ...   complete shards (written to a temporary name, then renamed)
    manifest.json                          written last, atomically: the store is complete when it exists

Each shard holds ``keys`` (image paths relative to the dataset folder), ``dsap`` uint8
[N, 24, 3, S, S] chunked one image per chunk, ``found`` bool [N], ``written`` uint8
[N, 24, S, S/8] (``np.packbits`` over the last axis) and ``coverage`` float32 [N, 24], with the
attributes ``format_version``, ``size``, ``kind``, ``estimator``, ``settings`` (JSON) and
``failures`` (JSON list of {key, reason} for the images of this shard that could not be read).

Readers (:class:`DSAPStore`) open HDF5 files lazily and per process: h5py handles do not survive
``fork``, so a store object handed to DataLoader workers re-opens its files in each worker.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from data.io import atomic_write_json, file_sha256
from dsa.errors import UserError
from dsa.dsap import coverage
from dsa.parts import NUM_PARTS

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.h5$")
KINDS = ("dsap", "csa")
COMPRESSIONS = (None, "lzf", "gzip")


class StoreError(UserError):
    """A DSAP store problem a user can fix (missing, incomplete, mismatched or not covering)."""


def store_dir(root: str | os.PathLike, dataset: str, estimator: str, tag: str | None = None) -> Path:
    """The folder of the store for ``dataset`` and ``estimator``: ``ROOT/dsap/<dataset>/<estimator>[-<tag>]``."""
    name = f"{estimator}-{tag}" if tag else estimator
    return Path(root) / "dsap" / dataset / name


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard-00000.h5``)."""
    return f"shard-{index:05d}.h5"


def fingerprint(keys: Iterable[str]) -> str:
    """sha256 of the sorted keys joined by newlines: identifies the set of images a store covers."""
    return hashlib.sha256("\n".join(sorted(keys)).encode("utf-8")).hexdigest()


def existing_shards(folder: Path) -> dict[int, Path]:
    """Complete shard files in ``folder`` by index (temporary files are ignored)."""
    out: dict[int, Path] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = SHARD_PATTERN.match(p.name)
            if m:
                out[int(m.group(1))] = p
    return out


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


class StoreWriter:
    """Writes the shards and the manifest of one store folder.

    Every shard is written whole, to ``<name>.tmp-<pid>``, flushed and fsynced, then renamed: a
    reader or a resumed run sees either no shard or a complete one.
    """

    def __init__(self, folder: str | os.PathLike, settings: StoreSettings, compression: str | None = None) -> None:
        if settings.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {settings.kind!r}")
        if settings.size % 8:
            raise ValueError(f"the DSAP size must be a multiple of 8, not {settings.size}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
        self.folder = Path(folder)
        self.settings = settings
        self.compression = compression
        self.folder.mkdir(parents=True, exist_ok=True)

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
    ) -> Path:
        """Write shard ``index`` atomically and return its final path."""
        n, s = len(keys), self.settings.size
        if dsap.shape != (n, NUM_PARTS, 3, s, s) or dsap.dtype != np.uint8:
            raise ValueError(f"dsap must be uint8 {(n, NUM_PARTS, 3, s, s)}, got {dsap.dtype} {dsap.shape}")
        if written.shape != (n, NUM_PARTS, s, s):
            raise ValueError(f"written must be {(n, NUM_PARTS, s, s)}, got {written.shape}")
        written = written.astype(bool, copy=False)
        final = self.shard_path(index)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        self.remove_stale_tmp(index)
        comp = {"compression": self.compression} if self.compression else {}
        with h5py.File(tmp, "w", libver="latest") as f:
            f.create_dataset("keys", data=np.array(list(keys), dtype=object), dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("dsap", data=dsap, chunks=(1, NUM_PARTS, 3, s, s) if n else None, **comp)
            f.create_dataset("found", data=np.asarray(found, dtype=bool))
            f.create_dataset("written", data=np.packbits(written, axis=-1), chunks=(1, NUM_PARTS, s, s // 8) if n else None)
            f.create_dataset("coverage", data=coverage(written))
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["size"] = s
            f.attrs["kind"] = self.settings.kind
            f.attrs["estimator"] = self.settings.estimator
            f.attrs["settings"] = json.dumps(self.settings.settings, sort_keys=True)
            f.attrs["failures"] = json.dumps(list(failures))
            f.flush()
        with open(tmp, "rb+") as fh:  # h5py closed the file; fsync its bytes before the rename
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.folder)
        return final

    def write_manifest(self, dataset: str, all_keys: Sequence[str], num_shards: int, extra: dict | None = None) -> dict:
        """Gather the shards' counts, checksums and failures and write ``manifest.json`` (last, atomically)."""
        shards, failures, num_images, num_found = [], [], 0, 0
        for i in range(num_shards):
            path = self.shard_path(i)
            with h5py.File(path, "r") as f:
                count = int(f["keys"].shape[0])
                num_found += int(np.count_nonzero(f["found"][()]))
                failures.extend(json.loads(f.attrs.get("failures", "[]")))
            num_images += count
            shards.append({"name": path.name, "num_images": count, "sha256": file_sha256(path)})
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            **self.settings.as_dict(),
            "fingerprint": fingerprint(all_keys),
            "num_images": num_images,
            "num_found": num_found,
            "shards": shards,
            "failures": failures,
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
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StoreError(f"the store manifest {path} cannot be read ({e}); rerun `make precompute` with ARGS=--force") from e


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
                raise StoreError(f"the DSAP store at {self.folder} lacks its shard {shard['name']}; rerun `make precompute`")
            self._shard_paths.append(path)
            try:
                with h5py.File(path, "r") as f:
                    for row, key in enumerate(f["keys"].asstr()[()]):
                        self._index[key] = (s, row)
            except (OSError, KeyError, ValueError) as e:
                raise StoreError(
                    f"the shard {path} is damaged ({e}); rebuild the store with `make precompute ARGS=--force`"
                ) from None
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
    def failures(self) -> list[dict]:
        return list(self.manifest.get("failures", []))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __repr__(self) -> str:
        return f"DSAPStore({str(self.folder)!r}, {len(self)} images, {self.kind} S={self.size}, {self.estimator})"

    # ----------------------------------------------------------------- lazy per-process handles
    def _dataset(self, shard: int, name: str) -> h5py.Dataset:
        if self._pid != os.getpid():  # first use, or we are in a forked child: never reuse a parent's handle
            self._files, self._datasets, self._pid = {}, {}, os.getpid()
        ds = self._datasets.get((shard, name))
        if ds is None:
            f = self._files.get(shard)
            if f is None:
                f = self._files[shard] = h5py.File(self._shard_paths[shard], "r")
            ds = self._datasets[(shard, name)] = f[name]
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
                try:
                    with h5py.File(path, "r") as f:
                        n = f["keys"].shape[0]
                        if n != shard["num_images"]:
                            problems.append(f"{shard['name']}: {n} images, the manifest says {shard['num_images']}")
                        for name in ("dsap", "found", "written", "coverage"):
                            if f[name].shape[0] != n:
                                problems.append(f"{shard['name']}: {name} has {f[name].shape[0]} rows, expected {n}")
                        for row in range(n):  # chunk by chunk, so a damaged chunk is found
                            f["dsap"][row]
                            f["written"][row]
                            bar.update(1)
                except (OSError, KeyError, ValueError) as e:
                    problems.append(f"{shard['name']}: unreadable ({e})")
        return problems
