"""The resumable, parallel precompute runner: dataset images → estimator → DSAP → store shards.

Every image of the dataset (train, query and gallery) is assigned to a shard deterministically
(sorted keys, fixed shard size), so a rerun with any number of workers or ranks finds the same
shards and skips the complete ones.  Work is split by whole shards:

- ``--workers N`` on one machine: N spawned processes, pending shards dealt round-robin;
- under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment): rank r owns shards i ≡ r (mod
  world) and writes only those; whichever process finishes last and sees every shard present
  writes the manifest (a rerun with any worker count completes it otherwise).

An image that cannot be read (missing, zero-byte, corrupt) or whose estimate fails is recorded with
its reason, stored as "not found" (DSAP images filled with mid-grey, nothing written) so that the
store's keys still cover the dataset, and the run goes on.  A failure that is the estimator's rather
than an image's stops the run with one sentence instead (:class:`SystemicFailure`): the estimator
failing for one and the same reason on as many consecutive images as a batch holds (at least 2; the
image's own name removed from the reason), e.g. a model that cannot produce chart output at all.

The stored bytes do not depend on how the work was scheduled (workers, ranks, batch size, the process's
thread count, a resumed run): an estimator whose output depends on its thread count pins it as one of
its settings (``densepose``'s ``threads``).  Each shard records how it was computed (its
``provenance``: the estimator's record, library versions, this process's thread policy, workers, batch
size, rank), and the manifest lists the distinct records with their shards.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import queue as queue_mod
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from data.io import file_sha256, hold_lock, release_lock
from data.store import (
    DEFAULT_COMPRESSION,
    LOCK_NAME,
    MANIFEST_NAME,
    StoreError,
    StoreSettings,
    StoreWriter,
    checksum_path,
    content_fingerprint,
    describe_differences,
    existing_shards,
    fingerprint,
    read_manifest,
    read_shard_header,
    recorded_checksum,
    source_signature,
    store_dir,
)
from dsa.errors import UserError

log = logging.getLogger(__name__)

#: Fill value of the DSAP images of an image that could not be read (its mean is unknown).
UNREADABLE_FILL = 128


class PrecomputeError(UserError):
    """A precompute problem the user can fix; the CLI prints it as one sentence (exit code 2)."""


class SystemicFailure(PrecomputeError):
    """The estimator fails the same way on every image of a batch: its problem, not the images'."""


@dataclass
class PrecomputeConfig:
    """Everything ``python -m precompute run`` takes."""

    dataset: str
    root: Path
    estimator: str
    options: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    kind: str = "dsap"
    size: int = 32
    shard_size: int = 500
    batch_size: int | None = None
    tag: str | None = None
    force: bool = False
    compression: str | None = DEFAULT_COMPRESSION


def settings_refusal(what: str, settings: StoreSettings, stored: dict[str, Any]) -> PrecomputeError:
    """``what`` (a store or a shard) was computed with other settings: which ones, and how to go on."""
    if settings.unrecorded(stored):
        way_out = ("it was written by an older version of this program, which did not record them: pass --force to "
                   "recompute it, or --tag NAME to keep it and compute a new one")
    else:
        way_out = ("run with the store's settings to complete it, pass --force to recompute it with these, or "
                   "--tag NAME to keep both")
    return PrecomputeError(f"{what} was computed with other settings than this run's: "
                           f"{settings.explain(stored)}; {way_out}")


def plan_shards(keys: Sequence[str], shard_size: int) -> list[list[str]]:
    """Sorted keys cut into consecutive shards of ``shard_size`` (the last one may be shorter)."""
    if shard_size < 1:
        raise PrecomputeError(f"--shard-size must be at least 1, not {shard_size}")
    keys = sorted(keys)
    return [keys[i : i + shard_size] for i in range(0, len(keys), shard_size)]


def dist_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment variables; (0, 1) when not launched by it."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise PrecomputeError(f"RANK and WORLD_SIZE must be integers ({e})") from e
    if world < 1 or not 0 <= rank < world:
        raise PrecomputeError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return rank, world


# --------------------------------------------------------------------------- one shard
def _warp(image: np.ndarray, iuv: Any, kind: str, size: int) -> tuple[np.ndarray, np.ndarray, bool]:
    from dsa.dsap import crop_csa, dsap_not_found, warp_dsap

    if iuv is None:
        dsap, written = dsap_not_found(image, size)
        return dsap, written, False
    if iuv.I.shape != image.shape[:2]:
        raise ValueError(f"IUV map is {iuv.I.shape[0]}x{iuv.I.shape[1]} but the image is {image.shape[0]}x{image.shape[1]}")
    if kind == "csa":
        dsap, written = crop_csa(image, iuv.I, size)
    else:
        dsap, written = warp_dsap(image, iuv.I, iuv.U, iuv.V, size)
    return dsap, written, True


def _estimate(estimator: Any, images: list, paths: list, keys: list) -> list[Any]:
    """Run the estimator on a batch; if the batch fails, retry image by image so one bad input only costs itself."""
    try:
        out = estimator.estimate(images, paths, keys)
        if len(out) != len(images):
            raise RuntimeError(f"estimator returned {len(out)} results for {len(images)} images")
        return list(out)
    except Exception:  # noqa: BLE001 - isolate the failing image(s), recorded below
        results: list[Any] = []
        for img, p, k in zip(images, paths, keys):
            try:
                results.append(estimator.estimate([img], [p], [k])[0])
            except Exception as e:  # noqa: BLE001
                results.append(e)
        return results


def failure_reason(error: BaseException, key: str, path: str | Path) -> str:
    """``error`` as "Type: message" with the image's own key, path and name replaced by ``<image>`` (so that
    one cause met on many images reads the same)."""
    text = f"{type(error).__name__}: {error}"
    path = Path(path)
    for name in sorted({str(path), path.as_posix(), key, path.name, path.stem}, key=len, reverse=True):
        if name:
            text = text.replace(name, "<image>")
    return text


def compute_shard(
    keys: Sequence[str],
    dataset_root: Path,
    estimator: Any,
    kind: str,
    size: int,
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """DSAP images, written masks, found flags and failures of the images ``keys``."""
    from data.io import ImageReadError, read_image
    from dsa.dsap import dsap_not_found

    n = len(keys)
    dsap = np.empty((n, 24, 3, size, size), dtype=np.uint8)
    written = np.zeros((n, 24, size, size), dtype=bool)
    found = np.zeros(n, dtype=bool)
    failures: list[dict] = []
    grey = np.full((1, 1, 3), UNREADABLE_FILL, dtype=np.uint8)
    batch = max(1, int(getattr(estimator, "batch_size", 1) or 1))
    streak: list[Any] = [None, 0]  # [reason, count] of consecutive estimator failures

    def fail(i: int, reason: str, kind: str = "estimate") -> None:
        failures.append({"key": keys[i], "reason": reason, "kind": kind})
        dsap[i], written[i] = dsap_not_found(grey, size)

    def estimator_failed(i: int, error: Exception, batch_images: int) -> None:
        reason = failure_reason(error, keys[i], Path(dataset_root) / keys[i])
        streak[:] = [reason, streak[1] + 1 if streak[0] == reason else 1]
        if streak[1] >= max(2, min(batch, batch_images)):  # a whole batch (of 2 or more) failed alike
            raise SystemicFailure(
                f"the {getattr(estimator, 'name', '') or 'estimator'} estimator failed on {streak[1]} images in a row "
                f"(the last {keys[i]}) for one reason, {reason.rstrip('.')}, which is a problem of the estimator or its "
                "options rather than of the images: fix that and rerun (nothing of this shard was stored)")
        fail(i, f"estimator failed: {error}")

    for start in range(0, n, batch):
        idx, images, paths = [], [], []
        for i in range(start, min(start + batch, n)):
            path = Path(dataset_root) / keys[i]
            try:
                images.append(read_image(path))
            except ImageReadError as e:
                fail(i, str(e), "unreadable")
                continue
            idx.append(i)
            paths.append(path)
        results = _estimate(estimator, images, paths, [keys[i] for i in idx]) if idx else []
        for i, image, iuv in zip(idx, images, results):
            if isinstance(iuv, Exception):
                estimator_failed(i, iuv, len(idx))
                continue
            streak[:] = [None, 0]
            try:
                dsap[i], written[i], found[i] = _warp(image, iuv, kind, size)
            except ValueError as e:
                fail(i, str(e))
        progress(min(start + batch, n) - start)
    return dsap, written, found, failures


# --------------------------------------------------------------------------- workers
@dataclass
class _Job:
    """What a worker needs to write its shards (picklable for 'spawn')."""

    folder: str
    dataset_root: str
    factory: Callable[[Path], Any]
    batch_size: int | None
    settings: StoreSettings
    compression: str | None
    shards: list[tuple[int, list[str]]]
    parent: int = 0  # the pid of the process that started the workers (read there, never in a worker)
    workers: int = 1
    rank: int = 0
    world: int = 1


def registry_estimator(name: str, dataset_root: Path, options: dict | None = None) -> Any:
    """The default estimator factory: ``precompute.estimators.build_estimator`` (picklable via functools.partial)."""
    from precompute.estimators import build_estimator

    return build_estimator(name, Path(dataset_root), **(options or {}))


def _make_estimator(factory: Callable[[Path], Any], dataset_root: str | Path, batch_size: int | None) -> Any:
    est = factory(Path(dataset_root))
    if batch_size:
        est.batch_size = batch_size
    return est


def shard_provenance(job: _Job, estimator: Any) -> dict[str, Any]:
    """How this process computes its shards: the estimator's record, library versions, the thread policy,
    workers, batch size and rank (stored with each shard; never compared)."""
    import platform

    import cv2
    import h5py

    from data.runtime import thread_policy

    return {
        "estimator": estimator.provenance() if hasattr(estimator, "provenance") else {},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
                     "h5py": h5py.version.version, "torch": _torch_version()},
        "process": {**thread_policy(), "workers": job.workers,
                    "batch_size": int(getattr(estimator, "batch_size", 1) or 1), "rank": job.rank,
                    "world_size": job.world},
    }


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _write_shards(job: _Job, estimator: Any, progress: Callable[[int], None]) -> dict[str, int]:
    writer = StoreWriter(job.folder, job.settings, compression=job.compression)
    stats = {"images": 0, "found": 0, "failures": 0, "shards": 0}
    provenance = shard_provenance(job, estimator)
    for index, keys in job.shards:
        # taken before the images are read: an image changed while it is computed is stale on the next run
        sources = [source_signature(job.dataset_root, k) for k in keys]
        dsap, written, found, failures = compute_shard(
            keys, Path(job.dataset_root), estimator, job.settings.kind, job.settings.size, progress
        )
        writer.write_shard(index, keys, dsap, written, found, failures, sources=sources, provenance=provenance)
        stats["images"] += len(keys)
        stats["found"] += int(found.sum())
        stats["failures"] += len(failures)
        stats["shards"] += 1
    return stats


def _die_with_parent() -> None:
    """On Linux, have the kernel SIGKILL this worker as soon as its parent dies.

    A worker orphaned by a killed run must not go on writing shards (or their temporary files) while
    the rerun works in the same folder; the parent-pid check in ``progress`` is the portable fallback,
    but it only runs between batches.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: rely on the fallback
        pass


def _worker_main(job: _Job, q: Any) -> None:
    """Entry point of a spawned worker: report progress and the final counts through ``q``.

    The parent's pid comes with the job (read by the parent itself): a worker whose parent died
    during its start-up sees another parent pid than that after arming the death signal and stops,
    however early the parent died."""
    from data.runtime import worker_threads

    parent = job.parent
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the signal was armed
        raise SystemExit(1)
    worker_threads()  # N workers side by side: one intra-op thread each (an estimator may pin its own)

    def progress(n: int) -> None:
        if os.getppid() != parent:  # the parent was killed: stop rather than compete with a rerun
            raise SystemExit(1)
        q.put(("progress", n))

    try:
        est = _make_estimator(job.factory, job.dataset_root, job.batch_size)
        stats = _write_shards(job, est, progress)
        q.put(("done", stats))
    except UserError as e:  # a sentence (a full disk, an estimator option): the parent prints it
        q.put(("user_error", str(e)))
        raise SystemExit(1)
    except BaseException:  # noqa: BLE001 - hand the traceback to the parent, which reports it
        q.put(("error", traceback.format_exc()))
        raise SystemExit(1)


def _run_workers(jobs: list[_Job], bar: tqdm) -> dict[str, int]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(job, q), daemon=True) for job in jobs]
    for p in procs:
        p.start()
    totals = {"images": 0, "found": 0, "failures": 0, "shards": 0}
    done, errors, sentences = 0, [], []
    try:
        while done < len(procs):
            try:
                kind, payload = q.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and q.empty():
                    errors.append(("error", f"a worker exited with code {dead[0].exitcode}"))
                    break
                continue
            if kind == "progress":
                bar.update(payload)
            elif kind == "done":
                done += 1
                for k, v in payload.items():
                    totals[k] += v
            elif kind == "user_error":
                done += 1
                errors.append(payload)
                sentences.append(payload)
            else:
                done += 1
                errors.append((kind, payload))
    finally:
        for p in procs:
            if errors:
                p.terminate()
            p.join()
    if sentences:
        raise PrecomputeError(sentences[0])
    if errors:
        kind, payload = errors[0]
        if kind == "user_error":
            raise PrecomputeError(payload)
        raise RuntimeError("precompute worker failed:\n" + payload)
    return totals


# --------------------------------------------------------------------------- the run
def _shard_state(writer: StoreWriter, index: int, keys: list[str], settings: StoreSettings, force: bool,
                 signatures: dict[str, str], expected_sha: dict[str, str]) -> str:
    """'done' when shard ``index`` is intact (its sha256 is the one recorded beside it or, for a shard
    without one, in the manifest), holds these keys, settings and the current source signatures of
    its images; else 'pending' (with a log line saying why, when the shard exists)."""
    path = writer.shard_path(index)
    if not path.exists():
        return "pending"
    try:
        header = read_shard_header(path)
    except (OSError, KeyError, ValueError):
        log.warning("shard %s is unreadable; recomputing it", path.name)
        return "pending"
    diffs = settings.differences(header)
    if diffs and not force:
        raise settings_refusal(str(path), settings, header)
    if diffs or header["keys"] != keys:
        return "pending"
    expected = recorded_checksum(path) or expected_sha.get(path.name)
    if expected is None or file_sha256(path) != expected:
        log.warning("shard %s is damaged (its checksum differs from the one recorded when it was written); "
                    "recomputing it", path.name)
        return "pending"
    if header["sources"] is not None:
        changed = [k for k, sig in zip(keys, header["sources"]) if sig != signatures[k]]
        if changed:
            log.warning("shard %s: %d image(s) changed since it was computed (e.g. %s); recomputing it",
                        path.name, len(changed), changed[0])
            return "pending"
    return "done"


def check_same_hardware(writer: StoreWriter, plan: list[list[str]], pending: list[int], estimator: Any) -> None:
    """Refuse to compute shards beside shards that the estimator computed on other hardware (its provenance's
    ``hardware``: e.g. another CPU instruction set or GPU), whose kernels may give other low-order bits."""
    here = (estimator.provenance() if pending and hasattr(estimator, "provenance") else {}).get("hardware")
    if not here:
        return
    for i in sorted(set(range(len(plan))) - set(pending)):
        try:
            header = read_shard_header(writer.shard_path(i))
        except (OSError, KeyError, ValueError):
            continue
        there = ((header.get("provenance") or {}).get("estimator") or {}).get("hardware")
        if there and there != here:
            raise PrecomputeError(
                f"{writer.shard_path(i)} was computed on other hardware than this run's ({describe_differences(there, here)}), "
                "whose kernels may give other low-order bits, and this run would add shards to it: finish the store "
                "where it was started, pass --force to recompute it here, or --tag NAME to keep both")


def _all_shards_current(writer: StoreWriter, plan: list[list[str]], settings: StoreSettings,
                        signatures: dict[str, str]) -> bool:
    """Whether every planned shard exists with its planned keys, these settings and current sources (a
    stale shard of another rank, not yet rewritten, must not end up in the manifest)."""
    for i, keys in enumerate(plan):
        try:
            header = read_shard_header(writer.shard_path(i))
        except (OSError, KeyError, ValueError):
            return False
        if header["keys"] != keys or settings.differences(header):
            return False
        if header["sources"] is not None and header["sources"] != [signatures[k] for k in keys]:
            return False
    return True


def run_precompute(
    cfg: PrecomputeConfig, *, dataset: Any = None, estimator_factory: Callable[[Path], Any] | None = None
) -> dict[str, Any]:
    """Compute the missing shards of the store and write the manifest when all exist; returns a summary.

    ``dataset`` (default: ``build_dataset(cfg.dataset, cfg.root)``) needs ``root`` and ``all_items()``;
    ``estimator_factory(dataset_root) -> Estimator`` (default: the registry's ``cfg.estimator`` with
    ``cfg.options``) must be picklable when ``cfg.workers > 1`` (workers are spawned).
    """
    if cfg.kind not in ("dsap", "csa"):
        raise PrecomputeError(f"--kind must be dsap or csa, not {cfg.kind!r}")
    if cfg.size < 8 or cfg.size % 8:
        raise PrecomputeError(f"--size must be a positive multiple of 8, not {cfg.size}")
    if cfg.workers < 1:
        raise PrecomputeError(f"--workers must be at least 1, not {cfg.workers}")
    t0 = time.perf_counter()
    rank, world = dist_env()
    if dataset is None:
        from data.datasets import build_dataset
        from data.names import without_split_options

        dataset = build_dataset(without_split_options(cfg.dataset), cfg.root)  # a store serves every split
    factory = estimator_factory or partial(registry_estimator, cfg.estimator, options=cfg.options)
    keys = sorted({it.key for it in dataset.all_items()})
    if not keys:
        raise PrecomputeError(f"the dataset {cfg.dataset} under {cfg.root} has no images")
    plan = plan_shards(keys, cfg.shard_size)
    estimator = _make_estimator(factory, dataset.root, cfg.batch_size)
    settings = StoreSettings(cfg.estimator, estimator.settings(), cfg.size, cfg.kind)
    folder = store_dir(cfg.root, cfg.dataset, cfg.estimator, cfg.tag)
    writer = StoreWriter(folder, settings, compression=cfg.compression)
    owned = [i for i in range(len(plan)) if i % world == rank]

    # one writer per store: a second run (or a second rank r) says who holds it; ranks share the store
    hold_lock(folder / LOCK_NAME, f"the DSAP store {folder}", shared=world > 1)
    if world > 1:
        hold_lock(folder / f"{LOCK_NAME}-rank{rank}", f"rank {rank} of the DSAP store {folder}")
    try:
        return _run_locked(cfg, dataset, factory, estimator, settings, folder, writer, keys, plan, owned, rank,
                           world, t0)
    finally:
        release_lock(folder / LOCK_NAME)
        release_lock(folder / f"{LOCK_NAME}-rank{rank}")


def _run_locked(cfg: PrecomputeConfig, dataset: Any, factory: Callable, estimator: Any, settings: StoreSettings,
                folder: Path, writer: StoreWriter, keys: list[str], plan: list[list[str]], owned: list[int],
                rank: int, world: int, t0: float) -> dict[str, Any]:
    signatures = {k: source_signature(dataset.root, k) for k in keys}
    try:
        manifest = read_manifest(folder)
    except StoreError as e:  # an unusable manifest is rebuilt from the shards, which are checked one by one
        log.warning("rebuilding the manifest from the shards: %s", e)
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        manifest = None
    expected_sha = {sh["name"]: sh["sha256"] for sh in (manifest or {}).get("shards", [])}
    if manifest is not None and not cfg.force:
        if settings.differences(manifest):
            raise settings_refusal(f"the store at {folder}", settings, manifest)
    if cfg.force:
        for i in owned:
            writer.shard_path(i).unlink(missing_ok=True)
            checksum_path(writer.shard_path(i)).unlink(missing_ok=True)
    if rank == 0:  # shards beyond the plan belong to an older, larger dataset
        for i, p in existing_shards(folder).items():
            if i >= len(plan):
                p.unlink(missing_ok=True)
                checksum_path(p).unlink(missing_ok=True)

    states = {i: _shard_state(writer, i, plan[i], settings, cfg.force, signatures, expected_sha) for i in owned}
    up_to_date = (manifest is not None and not cfg.force and manifest.get("fingerprint") == fingerprint(keys)
                  and manifest.get("content_fingerprint") in (None, content_fingerprint(signatures))
                  and all(v == "done" for v in states.values()))
    if up_to_date:
        log.info("the store at %s is complete and up to date (%d images); nothing to do", folder, manifest["num_images"])
        return {"folder": str(folder), "up_to_date": True, "num_images": manifest["num_images"],
                "num_found": manifest["num_found"], "failures": manifest["failures"]}
    if manifest is not None:  # the dataset or an image changed, a shard is damaged, or --force: incomplete again
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
    pending = [i for i in owned if states[i] == "pending"]
    check_same_hardware(writer, plan, pending, estimator)
    todo = sum(len(plan[i]) for i in pending)
    log.info(
        "precompute %s with %s: %d images in %d shards; rank %d/%d owns %d shards, %d to compute (%d images) on %d worker(s)",
        cfg.dataset, cfg.estimator, len(keys), len(plan), rank, world, len(owned), len(pending), todo, cfg.workers,
    )
    job = dict(folder=str(folder), dataset_root=str(dataset.root), factory=factory, batch_size=cfg.batch_size,
               settings=settings, compression=cfg.compression, parent=os.getpid(), rank=rank, world=world)
    with tqdm(total=todo, unit="img", desc=f"precompute {cfg.dataset}", disable=None) as bar:
        if cfg.workers == 1 or len(pending) <= 1:
            stats = _write_shards(_Job(**job, shards=[(i, plan[i]) for i in pending]), estimator, bar.update)
        else:
            n = min(cfg.workers, len(pending))
            jobs = [_Job(**job, shards=[(i, plan[i]) for i in pending[w::n]], workers=n) for w in range(n)]
            stats = _run_workers(jobs, bar)
    elapsed = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "folder": str(folder), "up_to_date": False, "rank": rank, "world_size": world, "workers": cfg.workers,
        "computed_images": stats["images"], "computed_found": stats["found"], "computed_failures": stats["failures"],
        "elapsed_s": round(elapsed, 3), "images_per_s": round(stats["images"] / elapsed, 2) if elapsed > 0 else 0.0,
    }
    if _all_shards_current(writer, plan, settings, signatures):
        final = writer.write_manifest(
            cfg.dataset, keys, len(plan), extra={"shard_size": cfg.shard_size, "tag": cfg.tag, "summary": summary},
            signatures=signatures,
        )
        summary.update(num_images=final["num_images"], num_found=final["num_found"], failures=final["failures"],
                       complete=True)
    else:
        log.info("this process wrote its shards; others are still missing, the last rank to finish writes the manifest")
        summary["complete"] = False
    return summary

